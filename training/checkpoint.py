"""Checkpoints with orbax's CheckpointManager.

Layout (one directory per saved step; orbax writes each atomically, into a temporary
directory renamed on success, so a killed process never leaves a half-written step that
looks complete):

    workdir/checkpoints/<step>/state/   the TrainState's arrays (step, params, model_state,
                                        opt_state, ema_params, key); the graphdef is not
                                        saved: it is rebuilt from the config
    workdir/checkpoints/<step>/data/    JSON: the host data iterator's position ({} if none)

Kept: the latest `config.training.keep_checkpoints`, plus every multiple of
`config.training.snapshot_freq` for good.
"""
from __future__ import annotations

import logging as logging_std
import os
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx
from jax.sharding import Sharding, SingleDeviceSharding

from training.state import TrainState, abstract_train_state

CHECKPOINT_SUBDIR = "checkpoints"


class _OrbaxInfoFilter(logging_std.Filter):
  """Drops orbax's INFO records (a dozen lines per save) from absl's log; keeps its
  warnings and errors."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return (record.levelno >= logging_std.WARNING
            or f"{os.sep}orbax{os.sep}" not in record.pathname)


_FILTER = _OrbaxInfoFilter()


def quiet_orbax_logging() -> None:
  """Keeps orbax's INFO messages out of the training log (idempotent)."""
  logger = absl_logging.get_absl_logger()
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_SUBDIR)


def _preservation_options(keep: int, snapshot_freq: int) -> dict[str, Any]:
  keep = max(int(keep), 1)
  cm = getattr(ocp, "checkpoint_managers", None)
  if cm is not None and hasattr(cm, "AnyPreservationPolicy"):
    policies = [cm.LatestN(keep)]
    if snapshot_freq > 0:
      policies.append(cm.EveryNSteps(int(snapshot_freq)))
    return {"preservation_policy": cm.AnyPreservationPolicy(policies)}
  # Older orbax: the same policy through the delete options.
  return {"max_to_keep": keep, "keep_period": int(snapshot_freq) or None}


def make_manager(config, workdir: str, *, read_only: bool = False
                 ) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir/checkpoints` (saves are synchronous; the loop
  decides when to save and passes force=True)."""
  quiet_orbax_logging()
  tc = config.training
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=False, create=not read_only, read_only=read_only,
      # Leftovers of a save that a killed process never finished.
      cleanup_tmp_directories=not read_only,
      **_preservation_options(tc.get("keep_checkpoints", 3), tc.get("snapshot_freq", 0)))
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, state: TrainState,
         data_state: dict | None = None) -> None:
  """Saves `state` (and the data iterator's JSON position) under its step, and waits."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state or {})), force=True)
  manager.wait_until_finished()


def _with_sharding(abstract: TrainState, sharding: Sharding | None) -> TrainState:
  sharding = sharding or SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract)


def restore(manager: ocp.CheckpointManager, abstract_state: TrainState, *,
            step: int | None = None, sharding: Sharding | None = None
            ) -> tuple[TrainState, dict]:
  """Restores (state, data position) at `step` (default: the latest) into the structure
  of `abstract_state` (e.g. `state.abstract_train_state(config)`), placed with
  `sharding` (default: the first device)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_with_sharding(abstract_state, sharding)),
      data=ocp.args.JsonRestore()))
  # The graphdef is static and comes from the abstract state, not from disk.
  state = restored["state"].replace(graphdef=abstract_state.graphdef)
  return state, dict(restored["data"] or {})


def restore_state(config, workdir: str, step: int | None = None,
                  optimizer: optax.GradientTransformation | None = None) -> TrainState:
  """The full TrainState saved at `step` (default: the latest) in `workdir`."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  manager = make_manager(config, workdir, read_only=True)
  try:
    state, _ = restore(manager, abstract_train_state(config, optimizer), step=step)
  finally:
    manager.close()
  return state


def restore_latest(config, workdir: str) -> tuple[nnx.Module, int]:
  """The network with the latest checkpoint's EMA parameters (what score_sde samples
  from), and that checkpoint's step. Raises FileNotFoundError if there is none."""
  state = restore_state(config, workdir)
  return state.model(ema=True), int(state.step)


def all_steps(workdir: str) -> list[int]:
  """The steps with a complete checkpoint in `workdir`, ascending."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(s) for s in ocp.utils.checkpoint_steps(directory))
