"""The training loop: `train(config, workdir, data_source=None) -> TrainState`.

Rerunning the same command after the process died continues from the latest checkpoint in
`workdir/checkpoints` with the same step count, optimizer state, EMA, PRNG stream and data
iterator position (see training/checkpoint.py for the layout).

Data come from one of two sources:
  * toy data (config.data.dataset a name in data.toy): sampled on the device inside the
    compiled step from the step's key; no host transfer.
  * a host iterator `data_source`: `next(data_source)` gives this process's share of one
    step's batch, a numpy array (B / process_count, ...) in data space ([0, 1] for
    images; the data scaler is applied on the device) or a dict of arrays already in
    model space (e.g. reflow pairs {"x0", "z"}). For exact resumption it also has
    `state() -> JSON-serialisable` and `restore(state)`; the loop saves the position
    with every checkpoint.

The loop runs `config.training.n_jitted_steps` updates per device call, on a grid of
multiples of n_jitted_steps (so an interrupted and a resumed run group the steps the
same way), checks the losses after each call, logs every `log_freq` steps (absl logging
and workdir/metrics.jsonl) and saves every `snapshot_freq_for_preemption` and
`snapshot_freq` steps and at the end (at the end of the call that reaches them).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import logging

import data as data_lib
import sde_lib
from training import checkpoint, losses, optim
from training import step as step_lib
from training.state import TrainState, abstract_train_state, create_train_state

METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; `step` is the first offending step (0-based update
  index: the state had taken `step` updates when it produced the loss)."""

  def __init__(self, step: int, loss: float, checkpoint_step: int | None,
               directory: str):
    self.step, self.loss, self.checkpoint_step = step, loss, checkpoint_step
    kept = (f"the latest checkpoint (step {checkpoint_step}) in {directory} is intact"
            if checkpoint_step is not None else f"no checkpoint was saved in {directory}")
    super().__init__(f"non-finite loss {loss} at step {step}; stopped without saving, "
                     f"{kept}")


class WorkdirError(OSError):
  """The workdir cannot be created or written."""


def check_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks that files can be written in it; returns its
  absolute path. Raises WorkdirError naming the path otherwise."""
  path = os.path.abspath(os.fspath(workdir))
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
      pass
  except OSError as e:
    raise WorkdirError(f"workdir {path} is not writable: "
                       f"{e.strerror or e.__class__.__name__}") from None
  return path


def _crossed(before: int, after: int, freq: int) -> bool:
  """Whether a multiple of freq lies in (before, after]."""
  return freq > 0 and after // freq > before // freq


def _check_config(config, n_devices: int) -> None:
  tc = config.training
  if tc.batch_size % n_devices:
    raise ValueError(f"config.training.batch_size = {tc.batch_size} must be divisible "
                     f"by the number of devices ({n_devices})")
  if tc.n_jitted_steps < 1:
    raise ValueError(f"config.training.n_jitted_steps must be >= 1, got "
                     f"{tc.n_jitted_steps}")
  for name in ("snapshot_freq", "snapshot_freq_for_preemption"):
    freq = int(tc.get(name, 0))
    if freq > 0 and freq % tc.n_jitted_steps:
      logging.warning("config.training.%s = %d is not a multiple of n_jitted_steps = %d: "
                      "checkpoints land at the end of the call that passes it",
                      name, freq, tc.n_jitted_steps)


class _MetricsWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = jax.process_index() == 0

  def write(self, record: dict[str, Any]) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _data_fns(config, data_source, mesh):
  """(data_fn, preprocess) for make_train_step: device sampling for toy data, the
  scaler for host batches."""
  scaler = data_lib.get_data_scaler(config)
  if data_source is not None:
    def preprocess(batch):
      # Dict batches (reflow pairs) are already in model space.
      return batch if isinstance(batch, dict) else scaler(batch)
    return None, preprocess
  if not data_lib.is_toy(config):
    raise ValueError(f"dataset {config.data.dataset!r} is not a toy dataset; pass a host "
                     "data_source (an iterator of batches) to train()")
  name, dim = config.data.dataset, int(config.data.dim)
  data_lib.toy.check_name(name, dim)
  batch_size = int(config.training.batch_size)
  sharding = step_lib.batch_sharding(mesh)

  def data_fn(key):
    # The constraint splits the sampled batch over the devices, so each computes its
    # share of the loss (data parallelism without naming an axis in the losses).
    return jax.lax.with_sharding_constraint(
        scaler(data_lib.toy.sample(key, name, batch_size, dim)), sharding)

  return data_fn, None


def _next_batches(data_source, n: int, local_batch: int):
  """n batches from the host iterator, stacked on a leading axis."""
  try:
    batches = [next(data_source) for _ in range(n)]
  except StopIteration:
    raise ValueError("data_source ran out of batches; it must yield batches for all "
                     "config.training.n_iters steps (repeat the data set)") from None
  first = jax.tree.leaves(batches[0])[0]
  if first.shape[0] != local_batch:
    raise ValueError(f"data_source gave a batch of {first.shape[0]} examples; this "
                     f"process needs {local_batch} (config.training.batch_size / "
                     f"{jax.process_count()} processes)")
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


# Fields that only steer the loop, not the compiled step (n_jitted_steps is the static
# scan length, a separate compile per value anyway): a config that differs from an
# earlier one only in these reuses its compiled step; any other field, known or not,
# makes a new one.
_LOOP_ONLY_FIELDS = ("n_iters", "n_jitted_steps", "log_freq", "eval_freq",
                     "snapshot_freq", "snapshot_freq_for_preemption", "keep_checkpoints",
                     "snapshot_sampling")
_TRAIN_FNS: dict[tuple, Any] = {}
_MAX_CACHED = 8


def _get_train_fn(config, mesh, data_source):
  """The compiled n-step function for `config` on `mesh`, cached so that calling
  train() again in the same process (a rerun, a longer run) does not recompile."""
  key_config = config.to_dict()
  for name in _LOOP_ONLY_FIELDS:
    key_config["training"].pop(name, None)
  key = (json.dumps(key_config, sort_keys=True, default=repr), data_source is not None,
         tuple(d.id for d in mesh.devices.flat))
  if key not in _TRAIN_FNS:
    sde = sde_lib.get_sde(config)
    loss_fn = losses.get_loss_fn(sde, config, train=True)
    data_fn, preprocess = _data_fns(config, data_source, mesh)
    train_step = step_lib.make_train_step(
        loss_fn, optim.get_optimizer(config), float(config.model.ema_rate),
        data_fn=data_fn, preprocess=preprocess)
    if len(_TRAIN_FNS) >= _MAX_CACHED:
      _TRAIN_FNS.pop(next(iter(_TRAIN_FNS)))
    _TRAIN_FNS[key] = step_lib.compile_train_fn(train_step, mesh,
                                                host_batches=data_source is not None)
  return _TRAIN_FNS[key]


def train(config, workdir: str, *, data_source=None, distributed: bool = False
          ) -> TrainState:
  """Trains the model of `config` until config.training.n_iters steps, resuming from
  the latest checkpoint in `workdir` if there is one; returns the final state.

  distributed: call jax.distributed.initialize() first (multi-host; the cluster is
  discovered from the environment). Raises WorkdirError for an unwritable workdir and
  NonFiniteLossError if the loss becomes NaN or inf (nothing is saved then).
  """
  if distributed:
    jax.distributed.initialize()
  workdir = check_workdir(workdir)
  mesh = step_lib.make_mesh()
  _check_config(config, mesh.size)

  optimizer = optim.get_optimizer(config)
  schedule = optim.get_lr_schedule(config)
  host = data_source is not None
  if host and not (hasattr(data_source, "state") and hasattr(data_source, "restore")):
    logging.warning("data_source has no state()/restore(): a resumed run restarts the "
                    "data stream from its beginning instead of where it stopped")
  train_fn = _get_train_fn(config, mesh, data_source)

  manager = checkpoint.make_manager(config, workdir)
  try:
    latest = manager.latest_step()
    if latest is None:
      state = step_lib.put_state(create_train_state(config, optimizer), mesh)
      logging.info("starting training in %s", workdir)
    else:
      state, data_state = checkpoint.restore(
          manager, abstract_train_state(config, optimizer), step=latest,
          sharding=step_lib.replicated(mesh))
      if host and data_state and hasattr(data_source, "restore"):
        data_source.restore(data_state)
      logging.info("resumed from the checkpoint at step %d in %s", latest,
                   checkpoint.checkpoint_dir(workdir))
    return _run(config, state, train_fn, manager, workdir, mesh, data_source, schedule)
  finally:
    manager.close()


def _run(config, state, train_fn, manager, workdir, mesh, data_source, schedule
         ) -> TrainState:
  tc = config.training
  n_iters, n_jit = int(tc.n_iters), int(tc.n_jitted_steps)
  log_freq = int(tc.log_freq)
  save_freqs = (int(tc.snapshot_freq_for_preemption), int(tc.get("snapshot_freq", 0)))
  local_batch = int(tc.batch_size) // jax.process_count()
  metrics_out = _MetricsWriter(workdir)
  has_position = data_source is not None and hasattr(data_source, "state")

  step = int(jax.device_get(state.step))
  last_saved = manager.latest_step()
  t_log, step_log = time.time(), step
  while step < n_iters:
    # Stay on the grid of multiples of n_jit, so that a resumed run groups steps as an
    # uninterrupted one does (one compile per distinct n).
    n = min(n_jit - step % n_jit, n_iters - step)
    if data_source is not None:
      batches = step_lib.put_batches(_next_batches(data_source, n, local_batch), mesh)
      state, metrics = train_fn(state, batches, n)
    else:
      state, metrics = train_fn(state, n)
    step_losses = np.asarray(jax.device_get(metrics["loss"]))
    bad = np.flatnonzero(~np.isfinite(step_losses))
    if bad.size:
      raise NonFiniteLossError(step + int(bad[0]), float(step_losses[bad[0]]),
                               last_saved, checkpoint.checkpoint_dir(workdir))
    before, step = step, step + n

    if _crossed(before, step, log_freq) or step == n_iters:
      now = time.time()
      rate = (step - step_log) / max(now - t_log, 1e-9)
      eta = (n_iters - step) / rate if rate > 0 else math.inf
      # The mean over the last device call's steps: less noisy than one step's loss.
      loss = float(step_losses.mean())
      logging.info("step %d/%d  loss %.5f  %.1f steps/s  ETA %s", step, n_iters, loss,
                   rate, _format_eta(eta))
      metrics_out.write({"step": step, "loss": loss,
                         "grad_norm": float(np.asarray(metrics["grad_norm"])[-1]),
                         "lr": float(schedule(step - 1)),
                         "steps_per_sec": rate, "time": now})
      t_log, step_log = now, step

    if any(_crossed(before, step, f) for f in save_freqs) or step == n_iters:
      checkpoint.save(manager, state, data_source.state() if has_position else None)
      last_saved = step
      logging.info("saved checkpoint at step %d", step)
  return state


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
