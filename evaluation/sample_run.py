"""`main.py --mode sample`: draw samples from the latest EMA checkpoint.

Writes `<workdir>/samples/<method>_step<step>.npz` (array `samples`, data space, plus `nfe`)
and a picture beside it: a scatter plot for 2-D data, an image grid for images.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

import data as data_lib
import models
import sde_lib
from evaluation import plots
from evaluation.sharding import shard_batch_outputs
from solvers.from_config import get_sampling_fn


def load_model_fn(config, workdir: str):
  """(sde, native model_fn with the EMA parameters, step) from the latest checkpoint."""
  from training.checkpoint import restore_latest
  sde = sde_lib.get_sde(config)
  model, step = restore_latest(config, workdir)
  model_fn = models.get_score_fn(sde, model, train=False,
                                 continuous=config.training.continuous)
  return sde, model_fn, step


def draw_samples(config, sde, model_fn, key: jax.Array, num_samples: int,
                 method: str | None = None) -> tuple[np.ndarray, float]:
  """num_samples samples in data space (numpy) and the mean NFE per batch.

  Batches of config.eval.batch_size are drawn with keys fold_in(key, i); one compile.
  """
  batch = min(int(config.eval.batch_size), num_samples)
  shape = (batch,) + data_lib.get_data_shape(config)
  sampler = shard_batch_outputs(get_sampling_fn(config, sde, shape, method=method),
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
  os.makedirs(os.path.dirname(path_stem), exist_ok=True)
  tmp = path_stem + ".tmp.npz"
  np.savez(tmp, samples=samples, nfe=nfe)
  os.replace(tmp, path_stem + ".npz")
  if samples.ndim == 2 and samples.shape[1] == 2:
    return plots.scatter({f"samples (NFE {nfe:.0f})": samples}, path_stem + ".png")
  if samples.ndim == 4:
    return plots.image_grid(samples[:64], path_stem + ".png")
  return path_stem + ".npz"


def sample(config, workdir: str) -> str:
  sde, model_fn, step = load_model_fn(config, workdir)
  method = config.sampling.method
  t0 = time.time()
  samples, nfe = draw_samples(config, sde, model_fn, jax.random.PRNGKey(config.seed + 1),
                              int(config.eval.num_samples))
  stem = os.path.join(workdir, "samples", f"{method}_step{step}")
  pic = save_samples(config, samples, nfe, stem)
  logging.info("%d samples with %s (NFE %.0f) in %.1fs -> %s", len(samples), method, nfe,
               time.time() - t0, pic)
  print(f"wrote {stem}.npz and {pic}")
  return stem + ".npz"
