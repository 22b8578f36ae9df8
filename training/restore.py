"""Restoring a checkpoint into a network or a model function: the checkpoint at a step (by
default the newest intact one) of workdir/checkpoints, verified (training/checkpoint.py),
finite where it is used, and replicated over the device mesh.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

import models
import sde_lib
from common.choices import check_choice
from common.errors import MissingFileError, UserError
from common.mesh import make_mesh, replicated
from training import checkpoint
from training.state import abstract_train_state

# What a model function is for: "pc" (predictor-corrector sampling), "sde" (a diffrax
# reverse-SDE solve), "ode" (probability-flow ODE sampling), "likelihood" (bits/dim),
# "fast" (DPM-Solver-type samplers), "flow" (fixed-step flow solves).
PURPOSES = ("pc", "sde", "ode", "likelihood", "fast", "flow")


class Restored(NamedTuple):
  """What `restore_model_fn` returns; unpacks as (sde, model_fn, step)."""
  sde: sde_lib.AbstractSDE
  model_fn: Callable[[jax.Array, jax.Array], jax.Array]
  step: int


def continuous_labels(config, purpose: str | None) -> bool:
  """Whether `purpose` (one of PURPOSES, None for config.sampling.method) feeds the
  network the continuous-time labels.

  True when config.training.continuous. A network trained with the discrete DDPM/SMLD
  losses is evaluated through the continuous parameterization for every purpose but
  "pc", as score_sde does (its likelihood.py and get_ode_sampler call
  get_score_fn(..., continuous=True); only its PC sampler passes
  config.training.continuous), unless config.eval.discrete_as_continuous = False
  (default True) asks for the discrete labels everywhere.
  """
  purpose = _purpose(config, purpose)
  if bool(config.training.continuous):
    return True
  as_continuous = bool(config.eval.get("discrete_as_continuous", True))
  return as_continuous and purpose != "pc"


def _purpose(config, purpose: str | None) -> str:
  if purpose is None:
    # A sampler the config names: only the sampling methods are choices there.
    from solvers.from_config import SAMPLING_METHODS
    check_choice(str(config.sampling.method).lower(), SAMPLING_METHODS,
                 "sampling method (config.sampling.method)")
  purpose = str(purpose or config.sampling.method).lower()
  if purpose not in PURPOSES:
    raise UserError(f"unknown sampling method {purpose!r} (config.sampling.method); "
                    f"choices: {', '.join(PURPOSES)}")
  return purpose


def model_fn_for(config, sde: sde_lib.AbstractSDE, model, purpose: str | None = None):
  """The native model function (score for VP/sub-VP/VE, velocity for rectified flow) of
  network `model` for `purpose` (eval mode, no dropout)."""
  return models.get_score_fn(sde, model, train=False,
                             continuous=continuous_labels(config, purpose))


def saved_steps(workdir: str, *, what: str = "checkpoint", train_mode: str = "train",
                run_workdir: str | None = None) -> list[int]:
  """The steps with a checkpoint in workdir/checkpoints, ascending. Raises
  MissingFileError when there is none: "no <what> in <dir>; train first (--mode
  <train_mode> --workdir <run_workdir, default workdir>)"."""
  steps = checkpoint.all_steps(workdir)
  if not steps:
    raise MissingFileError(
        f"no {what} in {checkpoint.checkpoint_dir(workdir)}; train first (--mode "
        f"{train_mode} --workdir {run_workdir or workdir})")
  return steps


def restore_model(config, workdir: str, *, ema: bool = True, step: int | None = None,
                  what: str = "checkpoint", train_mode: str = "train",
                  run_workdir: str | None = None) -> tuple[Any, int]:
  """(network with the EMA or raw parameters, step) of the checkpoint at `step` (default:
  the newest intact one) in workdir/checkpoints, parameters replicated over the mesh.

  `config` builds the network (a classifier passes its own section's config) and
  `what`, `train_mode`, `run_workdir` word the errors (`saved_steps`). With step=None a
  damaged newer checkpoint is reported with its path and an older one used
  (training/checkpoint.py). Raises MissingFileError when there is no checkpoint,
  UserError when there is none at `step`, checkpoint.CheckpointError (a UserError) when
  none is intact, and checkpoint.NonFiniteCheckpointError (also a FloatingPointError)
  when the parameters used are not all finite in any of them.
  """
  steps = saved_steps(workdir, what=what, train_mode=train_mode, run_workdir=run_workdir)
  if step is not None and int(step) not in steps:
    raise UserError(f"no {what} at step {step} in {checkpoint.checkpoint_dir(workdir)}; "
                    f"saved steps: {', '.join(map(str, steps))}")
  manager = checkpoint.make_manager(config, workdir, read_only=True)
  try:
    state, _ = checkpoint.restore(
        manager, abstract_train_state(config),
        step=int(step) if step is not None else None, sharding=replicated(make_mesh()),
        finite=("ema_params" if ema else "params", "model_state"))
  finally:
    manager.close()
  return state.model(ema=ema), int(state.step)


def restore_model_fn(config, workdir: str, *, ema: bool = True,
                     purpose: str | None = None, step: int | None = None) -> Restored:
  """Restored(sde, native model_fn, step): the process of `config` and the model
  function for `purpose` (`model_fn_for`) of the checkpoint at `step` (default: the
  newest intact one) in `workdir`."""
  sde = sde_lib.get_sde(config)
  model, step = restore_model(config, workdir, ema=ema, step=step)
  return Restored(sde, model_fn_for(config, sde, model, purpose), step)
