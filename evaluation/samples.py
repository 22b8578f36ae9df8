"""Drawing samples from a model function in batches, checking them and writing them:
`draw_samples`, `check_finite_samples`, `save_samples` (.npz plus a picture), and
`sample_settings`, every setting that affects the samples (the key of their result
directory, common.io.result_dir)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from common.progress import progress as tqdm  # a bar on a terminal, else log lines

import data as data_lib
from common.errors import UserError
from evaluation import plots
from solvers.from_config import get_sampling_fn
from common.io import save_npz
from common.mesh import shard_outputs


def positive_int(value, name: str) -> int:
  """value as an int, or UserError naming `name` unless it is an integer >= 1."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise UserError(f"{name} = {value!r} must be an integer >= 1")
  return int(value)


def sample_batches(config, sampler, model_fn, key: jax.Array, num_samples: int,
                   batch: int, *, x_T: np.ndarray | None = None, desc: str = "sampling"
                   ) -> tuple[np.ndarray, float]:
  """num_samples samples in data space (numpy) and the mean NFE per batch.

  sampler: `sampler(key, model_fn, x_T=None) -> (x, nfe)` at the batch shape (batch, ...).
  Batch i uses key fold_in(key, i) and, given the prior draws x_T (n_batches * batch,
  ...), starts from x_T[i * batch:(i + 1) * batch]; batches are split over the devices
  (common.mesh.shard_outputs); one compile.
  """
  sharded = shard_outputs(sampler, n_batched=1, n_outputs=2, batch_size=batch)
  inverse_scaler = data_lib.get_data_inverse_scaler(config)
  out, nfes = [], []
  n_batches = -(-num_samples // batch)
  for i in tqdm(range(n_batches), desc=desc, disable=n_batches < 2):
    given = {} if x_T is None else {"x_T": jnp.asarray(x_T[i * batch:(i + 1) * batch])}
    try:
      x, nfe = sharded(jax.random.fold_in(key, i), model_fn, **given)
    except jax.errors.JaxRuntimeError:
      # A solve that failed inside the compiled program (an adaptive solve stopping
      # early): the same batch outside it raises the sampler's one-line diagnosis.
      sampler(jax.random.fold_in(key, i), model_fn, **given)
      raise
    out.append(np.asarray(inverse_scaler(x)))
    nfes.append(float(nfe))
  return np.concatenate(out)[:num_samples], float(np.mean(nfes))


def draw_samples(config, sde, model_fn, key: jax.Array, num_samples: int,
                 method: str | None = None) -> tuple[np.ndarray, float]:
  """num_samples samples of the configured sampler (config.sampling, or `method`) in
  batches of config.eval.batch_size (`sample_batches`). `model_fn` should come from
  training.restore.restore_model_fn(..., purpose=method)."""
  batch = min(int(config.eval.batch_size), num_samples)
  shape = (batch,) + data_lib.get_data_shape(config)
  return sample_batches(config, get_sampling_fn(config, sde, shape, method=method),
                        model_fn, key, num_samples, batch,
                        desc=f"sampling ({method or config.sampling.method})")


def save_samples(config, samples: np.ndarray, nfe: float, path_stem: str) -> str:
  """Writes path_stem.npz (samples, nfe) and a picture beside it; returns the picture's
  path (or the .npz's when the samples are neither 2-D points nor images)."""
  save_npz(path_stem + ".npz", samples=samples, nfe=nfe)
  if samples.ndim == 2 and samples.shape[1] == 2:
    return plots.scatter({f"samples (NFE {nfe:.0f})": samples}, path_stem + ".png")
  if samples.ndim == 4:
    return plots.image_grid(samples[:64], path_stem + ".png")
  return path_stem + ".npz"


class NonFiniteSamplesError(UserError, FloatingPointError):
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
          "data": config.data.to_dict(), "dtype": str(model.get("dtype", "float32"))}


def check_finite_samples(samples: np.ndarray, what: str) -> None:
  """Raises FloatingPointError (writing nothing) unless every sample is finite."""
  bad = int(np.sum(~np.all(np.isfinite(samples.reshape(len(samples), -1)), axis=1)))
  if bad:
    raise NonFiniteSamplesError(f"{bad} of the {len(samples)} samples of {what} are not "
                                 "finite (NaN or inf): nothing was written")
