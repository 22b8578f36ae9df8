"""The one runner behind every mode: restoring a model, keys, device placement, outputs.

Every mode (train, sample, eval, demo, rf_eval, reflow_data), the benchmarks and the
notebooks go through these functions, so that each of the four concerns has one
implementation:

Restoring a checkpoint into a model function
  `restore_model_fn(config, workdir, ema=True, purpose=None, step=None)` returns
  `Restored(sde, model_fn, step)`: the process of `config`, the native model function
  (score for VP/sub-VP/VE, velocity for rectified flow) of the EMA (or raw) weights of
  the checkpoint at `step` (default: the latest), checked to be finite.
  `purpose` names what the function is for: "pc" (predictor-corrector sampling),
  "sde" (a diffrax reverse-SDE solve), "ode" (probability-flow ODE sampling),
  "likelihood" (bits/dim), "fast" (DPM-Solver-type samplers), "flow" (fixed-step flow
  solves), or None for config.sampling.method. A network trained with the discrete
  DDPM/SMLD losses (config.training.continuous = False) is evaluated through the
  continuous parameterization for every purpose except "pc", as score_sde does (its
  likelihood.py and get_ode_sampler call get_score_fn(..., continuous=True); only its PC
  sampler passes config.training.continuous). Set config.eval.discrete_as_continuous =
  False to use the discrete labels everywhere.

Keys
  All randomness of a run derives from config.seed through named streams:

      stream_key(seed, name) = fold_in(PRNGKey(seed), STREAMS[name])
      batch i of the stream:  fold_in(stream_key(seed, name), i)

  so a stream's draws depend only on (seed, name, batch index): never on which batches
  ran before, on an interrupted run or on how many devices there are. Training's own
  stream is separate (training/state.py: split of the seed's key, fold_in(step)).
  The names and what they drive are listed in STREAMS; a new use takes a new name.

Placement
  One 1-D mesh over all devices with axis 'data' (`make_mesh`). Batches are split along
  it with `put_batch` (NamedSharding P('data'), or P(None, 'data') for a stack of per-step
  batches), parameters replicated (`replicated`); `shard_outputs` jits a sampler or
  likelihood so its batched outputs come back split the same way. Library functions
  never name the axis (DESIGN.md).

Outputs
  `result_dir(workdir, kind, settings)` is where a result lives: a directory named by a
  hash of every setting that affects it, with a manifest.json of those settings, so
  that other settings never reuse or overwrite another result (issue 15).
  `atomic_file(path)` is the one way files are written: into a temporary file beside
  `path`, flushed, fsynced and renamed over it, so a killed run leaves either the old
  file or the new one, never half of one. `write_json`, `save_npz` and `save_png` use it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import models
import sde_lib
from common.errors import UserError
from training import checkpoint
from training.state import abstract_train_state

DATA_AXIS = "data"

# Named key streams: name -> the integer folded into PRNGKey(config.seed). Fixed numbers
# (not a hash) so that a stream's draws never change when names are added.
STREAMS: dict[str, int] = {
    "sample": 1,        # sample mode: prior draws and sampler noise, per batch
    "eval_data": 2,     # eval mode, toy data: the evaluation points, per batch
    "bpd": 3,           # eval mode: the likelihood's trace-estimator and dequantization noise
    "demo": 4,          # demo mode: fresh data, samples, likelihood points
    "rf_eval": 5,       # rf_eval mode: straightness, NFE table, data, noise floor
    "reflow": 6,        # reflow_data mode: the prior draws z of each shard
    "snapshot": 7,      # training: the sample grid drawn every snapshot_freq steps
    "eval_loss": 8,     # training: held-out loss every eval_freq steps (toy data, noise)
    "eval_loss_set": 9,  # eval mode: the evaluation loss's noise, per batch
    "controlled": 10,   # sample mode, task inpaint/colorize/class: sampler noise, per batch
    "controlled_inputs": 11,  # that mode, toy data, inputs "eval": the input points
    "mask": 12,         # that mode, mask "random": the random masks, per batch
}

PURPOSES = ("pc", "sde", "ode", "likelihood", "fast", "flow")


def stream_key(seed: int, name: str) -> jax.Array:
  """The key of stream `name` for `seed` (see the module docstring); batch i of the stream
  uses jax.random.fold_in(stream_key(seed, name), i)."""
  if name not in STREAMS:
    raise ValueError(f"unknown key stream {name!r}; add it to training.runner.STREAMS "
                     f"(known: {', '.join(STREAMS)})")
  return jax.random.fold_in(jax.random.PRNGKey(int(seed)), STREAMS[name])


# ---------------------------------------------------------------------------------------
# Restoring a model.

class Restored(NamedTuple):
  """What `restore_model_fn` returns; unpacks as (sde, model_fn, step)."""
  sde: sde_lib.AbstractSDE
  model_fn: Callable[[jax.Array, jax.Array], jax.Array]
  step: int


def continuous_labels(config, purpose: str | None) -> bool:
  """Whether `purpose` feeds the network the continuous-time labels (see the module
  docstring): config.training.continuous, or True for every purpose but PC sampling
  when config.eval.discrete_as_continuous (default True)."""
  purpose = _purpose(config, purpose)
  if bool(config.training.continuous):
    return True
  as_continuous = bool(config.eval.get("discrete_as_continuous", True))
  return as_continuous and purpose != "pc"


def _purpose(config, purpose: str | None) -> str:
  purpose = str(purpose or config.sampling.method).lower()
  if purpose not in PURPOSES:
    raise UserError(f"unknown sampling method {purpose!r} (config.sampling.method); "
                    f"choices: {', '.join(PURPOSES)}")
  return purpose


def model_fn_for(config, sde: sde_lib.AbstractSDE, model, purpose: str | None = None):
  """The native model function of network `model` for `purpose` (eval mode, no dropout)."""
  return models.get_score_fn(sde, model, train=False,
                             continuous=continuous_labels(config, purpose))


def restore_model(config, workdir: str, *, ema: bool = True, step: int | None = None
                  ) -> tuple[Any, int]:
  """(network with the EMA or raw parameters, step) of the checkpoint at `step` (default:
  the latest) in workdir/checkpoints, parameters replicated over the mesh.

  With step=None the newest intact checkpoint is used (training/checkpoint.py: newer
  damaged ones are reported with their paths). Raises sde_lib.MissingFileError when there
  is no checkpoint, checkpoint.CheckpointError (a UserError) when none is intact, and
  checkpoint.NonFiniteCheckpointError (also a FloatingPointError) when the parameters
  used are not all finite in any of them.
  """
  directory = checkpoint.checkpoint_dir(workdir)
  steps = checkpoint.all_steps(workdir)
  if not steps:
    raise sde_lib.MissingFileError(
        f"no checkpoint in {directory}; train first (--mode train --workdir {workdir})")
  if step is not None and int(step) not in steps:
    raise UserError(f"no checkpoint at step {step} in {directory}; saved steps: "
                    f"{', '.join(map(str, steps))}")
  manager = checkpoint.make_manager(config, workdir, read_only=True)
  try:
    # Verified (checksums, the network's shapes) and finite where it is used; with
    # step=None a damaged newest checkpoint is reported and an older one used.
    state, _ = checkpoint.restore(
        manager, abstract_train_state(config),
        step=int(step) if step is not None else None, sharding=replicated(make_mesh()),
        finite=("ema_params" if ema else "params", "model_state"))
  finally:
    manager.close()
  return state.model(ema=ema), int(state.step)


def restore_model_fn(config, workdir: str, *, ema: bool = True,
                     purpose: str | None = None, step: int | None = None) -> Restored:
  """Restored(sde, native model_fn, step) of the checkpoint at `step` (default: the
  latest) in `workdir`, for `purpose` (see the module docstring)."""
  sde = sde_lib.get_sde(config)
  model, step = restore_model(config, workdir, ema=ema, step=step)
  return Restored(sde, model_fn_for(config, sde, model, purpose), step)


# ---------------------------------------------------------------------------------------
# Placement.

def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, train state)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of one batch (P('data')) or of a stack of them (P(None, 'data'))."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if stacked else P(DATA_AXIS))


def put_batch(batch: Any, mesh: Mesh | None = None, *, stacked: bool = False) -> Any:
  """This process's host batch (a pytree of arrays (B_local, ...), or (n, B_local, ...)
  with stacked=True) -> global arrays split over the mesh's 'data' axis.

  On one host B_local is the whole batch; with several, each process passes its own
  slice and the global batch is their concatenation. A single-host batch whose size does
  not divide by the device count (the trimmed last batch of an evaluation set) is placed
  replicated instead.
  """
  mesh = make_mesh() if mesh is None else mesh
  axis = 1 if stacked else 0
  sharding = batch_sharding(mesh, stacked)

  def put(x):
    x = np.asarray(x)
    if x.shape[axis] * jax.process_count() % mesh.size:
      if jax.process_count() > 1:
        raise ValueError(f"a batch of {x.shape[axis]} per process does not split over "
                         f"{mesh.size} devices")
      return jax.device_put(x, replicated(mesh))
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def shard_outputs(fn: Callable, n_batched: int, n_outputs: int, batch_size: int,
                  mesh: Mesh | None = None) -> Callable:
  """jit(fn) whose first n_batched outputs are split over the devices on axis 0 and the
  rest replicated: XLA then partitions a sampler's or likelihood's whole batch.

  Returns `fn` itself on one device, or when batch_size does not divide by the device
  count (the batch cannot be split evenly). Random draws use JAX's partitionable
  threefry, so the results do not depend on the number of devices.
  """
  n_dev = jax.device_count()
  if n_dev == 1 or batch_size % n_dev:
    return fn
  mesh = make_mesh() if mesh is None else mesh
  outs = tuple(batch_sharding(mesh) if i < n_batched else replicated(mesh)
               for i in range(n_outputs))
  return jax.jit(fn, out_shardings=outs)


# ---------------------------------------------------------------------------------------
# Outputs.

@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator[Any]:
  """Opens a temporary file beside `path` for writing; when the block ends without an
  exception the file is flushed, fsynced and renamed over `path` (atomic on POSIX),
  otherwise removed. Creates the parent directory."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


MANIFEST_FILE = "manifest.json"


def settings_key(settings: dict) -> str:
  """A short stable hash (12 hex digits of sha256) of `settings`' canonical JSON (keys
  sorted; values that JSON lacks, e.g. numpy scalars, written with str)."""
  text = json.dumps(_plain(settings), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(obj: Any) -> Any:
  if isinstance(obj, dict) or hasattr(obj, "to_dict"):
    obj = obj.to_dict() if hasattr(obj, "to_dict") else obj
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def result_dir(workdir: str, kind: str, settings: dict) -> str:
  """The directory of one result: `workdir/<kind>-<settings_key(settings)>`, created
  with a manifest.json holding {"kind", "settings"}.

  `settings` must hold every setting that affects the result (checkpoint step, sampler,
  counts, tolerances, keys' seed...): other settings give another directory, so a rerun
  with other settings makes a new result and never reuses or overwrites another's, while
  a rerun with the same settings finds its own directory and resumes. An existing
  manifest that differs (a hash collision, or a file edited by hand) raises UserError.
  """
  plain = _plain(settings)
  path = os.path.join(os.path.abspath(os.fspath(workdir)),
                      f"{kind}-{settings_key(plain)}")
  manifest = os.path.join(path, MANIFEST_FILE)
  want = {"kind": kind, "settings": json.loads(json.dumps(plain, sort_keys=True,
                                                          default=str))}
  if os.path.exists(manifest):
    try:
      with open(manifest) as f:
        have = json.load(f)
    except ValueError as e:
      raise UserError(f"{manifest} is unreadable ({e}); move {path} away to start "
                      "this result over") from None
    if have != want:
      raise UserError(f"{path} holds a result with other settings than this run's "
                      f"(see {manifest}); move it away to start this result over")
    return path
  if jax.process_index() == 0:
    write_json(manifest, want)
  return path


def write_json(path: str, obj: Any) -> str:
  """Writes obj as indented JSON (atomically); returns path."""
  with atomic_file(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  return path


def save_npz(path: str, **arrays: Any) -> str:
  """np.savez of the arrays to `path` (atomically); returns path."""
  with atomic_file(path, "wb") as f:
    np.savez(f, **arrays)
  return path


def save_png(path: str, write: Callable[[Any], None]) -> str:
  """Calls write(file) (e.g. `lambda f: fig.savefig(f, format="png")`) into `path`,
  atomically; returns path."""
  with atomic_file(path, "wb") as f:
    write(f)
  return path


def tile_images(images: np.ndarray, ncol: int | None = None) -> np.ndarray:
  """Images (n, H, W, C) in [0, 1] tiled with 1-pixel white borders: (rows, cols, C)."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  return grid


def save_snapshot_png(samples: np.ndarray, path: str, lim: float = 3.0,
                      size: int = 256) -> str:
  """A picture of samples in data space, written with Pillow (no plotting library in
  training): images (n, H, W, C) in [0, 1] as a grid, 2-D points (n, 2) as black dots on
  a size x size canvas showing [-lim, lim]^2 (y up)."""
  from PIL import Image
  samples = np.asarray(samples)
  if samples.ndim == 4:
    grid = tile_images(samples)
    pixels = np.round(255 * (grid[..., 0] if grid.shape[-1] == 1 else grid))
    image = Image.fromarray(pixels.astype(np.uint8))
  elif samples.ndim == 2 and samples.shape[1] == 2:
    canvas = np.full((size, size), 255, np.uint8)
    ij = np.round((samples + lim) / (2 * lim) * (size - 1)).astype(int)
    keep = np.all((ij >= 0) & (ij < size), axis=1) & np.all(np.isfinite(samples), axis=1)
    canvas[size - 1 - ij[keep, 1], ij[keep, 0]] = 0
    image = Image.fromarray(canvas)
  else:
    raise ValueError(f"no picture for samples of shape {samples.shape}: images (n, H, W, "
                     "C) or 2-D points (n, 2)")
  return save_png(path, lambda f: image.save(f, format="PNG"))
