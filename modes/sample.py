"""`main.py --mode sample`: draw samples from the latest EMA checkpoint.

Writes `<workdir>/samples/<method>_step<step>-<hash>/samples.npz` (array `samples`, data
space, plus `nfe`) and `samples.png` beside it: a scatter plot for 2-D data, an image grid
for images. `<hash>` keys every setting that affects the samples (`sample_settings`:
checkpoint step, config.sampling, the count, the batch size, the seed, the process), with
a manifest.json of them (training/runner.py `result_dir`): a rerun with other settings
writes a new result and leaves the old one untouched. Batch i uses key
fold_in(stream_key(config.seed, "sample"), i) (training/runner.py). Samples that are not
all finite are an error, and nothing is written.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

import data as data_lib
import sde_lib
from evaluation import plots
from solvers.from_config import get_sampling_fn
from training import runner


def draw_samples(config, sde, model_fn, key: jax.Array, num_samples: int,
                 method: str | None = None) -> tuple[np.ndarray, float]:
  """num_samples samples in data space (numpy) and the mean NFE per batch.

  Batches of config.eval.batch_size are drawn with keys fold_in(key, i), split over the
  devices (runner.shard_outputs); one compile. `model_fn` should come from
  runner.restore_model_fn(..., purpose=method).
  """
  batch = min(int(config.eval.batch_size), num_samples)
  shape = (batch,) + data_lib.get_data_shape(config)
  sampler = runner.shard_outputs(get_sampling_fn(config, sde, shape, method=method),
                                 n_batched=1, n_outputs=2, batch_size=batch)
  inverse_scaler = data_lib.get_data_inverse_scaler(config)
  out, nfes = [], []
  n_batches = -(-num_samples // batch)
  for i in tqdm(range(n_batches), desc=f"sampling ({method or config.sampling.method})",
                disable=n_batches < 2):
    x, nfe = sampler(jax.random.fold_in(key, i), model_fn)
    out.append(np.asarray(inverse_scaler(x)))
    nfes.append(float(nfe))
  return np.concatenate(out)[:num_samples], float(np.mean(nfes))


def save_samples(config, samples: np.ndarray, nfe: float, path_stem: str) -> str:
  """Writes path_stem.npz (samples, nfe) and a picture beside it; returns the picture's
  path (or the .npz's when the samples are neither 2-D points nor images)."""
  runner.save_npz(path_stem + ".npz", samples=samples, nfe=nfe)
  if samples.ndim == 2 and samples.shape[1] == 2:
    return plots.scatter({f"samples (NFE {nfe:.0f})": samples}, path_stem + ".png")
  if samples.ndim == 4:
    return plots.image_grid(samples[:64], path_stem + ".png")
  return path_stem + ".npz"


class NonFiniteSamplesError(sde_lib.UserError, FloatingPointError):
  """A sampler produced NaN or inf; nothing was written (one line from main.py)."""


def sample_settings(config, step: int, num_samples: int) -> dict:
  """Every setting that affects `draw_samples`' output for the checkpoint at `step`."""
  model = config.model
  return {"step": int(step), "num_samples": int(num_samples),
          "batch_size": min(int(config.eval.batch_size), int(num_samples)),
          "seed": int(config.seed), "sampling": config.sampling.to_dict(),
          "sde": config.training.sde, "continuous": bool(config.training.continuous),
          "discrete_as_continuous": bool(config.eval.get("discrete_as_continuous", True)),
          "process": {k: model.get(k) for k in ("beta_min", "beta_max", "sigma_min",
                                                 "sigma_max", "num_scales")},
          "data": config.data.to_dict()}


def check_finite_samples(samples: np.ndarray, what: str) -> None:
  """Raises FloatingPointError (writing nothing) unless every sample is finite."""
  bad = int(np.sum(~np.all(np.isfinite(samples.reshape(len(samples), -1)), axis=1)))
  if bad:
    raise NonFiniteSamplesError(f"{bad} of the {len(samples)} samples of {what} are not "
                                 "finite (NaN or inf): nothing was written")


def sample(config, workdir: str) -> str:
  if config.sampling.get("task", "sample") != "sample":
    # Inpainting, colorization, class-guided sampling: modes/controlled_sample.py.
    from modes.controlled_sample import controlled_sample
    return controlled_sample(config, workdir)
  method = config.sampling.method
  num_samples = config.eval.num_samples
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise sde_lib.UserError(f"config.eval.num_samples = {num_samples!r} must be an "
                            "integer >= 1")
  batch_size = config.eval.batch_size
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise sde_lib.UserError(f"config.eval.batch_size = {batch_size!r} must be an "
                            "integer >= 1")
  sde, model_fn, step = runner.restore_model_fn(config, workdir, purpose=method)
  t0 = time.time()
  samples, nfe = draw_samples(config, sde, model_fn,
                              runner.stream_key(int(config.seed), "sample"), num_samples)
  check_finite_samples(samples, f"the checkpoint at step {step} ({method})")
  out = runner.result_dir(workdir, f"samples/{method}_step{step}",
                          sample_settings(config, step, num_samples))
  stem = os.path.join(out, "samples")
  pic = save_samples(config, samples, nfe, stem)
  logging.info("%d samples with %s (NFE %.0f) in %.1fs -> %s", len(samples), method, nfe,
               time.time() - t0, pic)
  print(f"wrote {stem}.npz and {pic}")
  return stem + ".npz"


run = sample
