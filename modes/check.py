"""`main.py --mode check`: validates the config without running anything (no network
built, no data read, nothing written) and exits 0 when every checked field is in range.
Every other mode makes the same checks before it compiles."""
from __future__ import annotations

import math

import jax

import data as data_lib
import sde_lib
from common.errors import UserError
from evaluation.eval_protocol import check_eval_config
from models.config_check import check_model_config
from solvers.from_config import get_sampling_fn
from training import loop, losses, optim


def check_numbers(config) -> None:
  """Every float leaf of `config` is finite: NaN or inf is no setting's meaning."""
  def walk(node, prefix):
    for name, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{name}.")
      elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config.{prefix}{name} = {value} must be a finite number")
  walk(config, "")


def _kind(value) -> str:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, (int, float)):
    return "number"
  if isinstance(value, str):
    return "str"
  if isinstance(value, (tuple, list)):
    return "sequence"
  return type(value).__name__


def check_override_types(reference, overrides: dict) -> None:
  """Each --config.<field> override keeps the kind of value the config file has there
  (a sequence of numbers stays one, a number stays a number); config_flags would take
  --config.model.ch_mult=foo as ('foo',)."""
  for path, value in overrides.items():
    node = reference
    try:
      for name in path.split("."):
        node = node[name]
    except (KeyError, TypeError, AttributeError):
      continue  # a field the file lacks: config_flags reports it
    if node is None or value is None:
      continue
    want, got = _kind(node), _kind(value)
    if want == "number" and got == "bool" or want != got and not (
        want == "number" and got == "number"):
      raise UserError(f"config.{path} = {value!r} must be a {want} like the config's "
                      f"{node!r}")
    if want == "sequence" and node:
      kinds = {_kind(v) for v in node}
      bad = [v for v in value if _kind(v) not in kinds]
      if bad:
        raise UserError(f"config.{path} = {value!r}: {bad[0]!r} is not a "
                        f"{'/'.join(sorted(kinds))} like the config's {tuple(node)!r}")


def run(config, workdir: str) -> None:
  check_numbers(config)
  check_model_config(config)
  # The devices this run would use (more than one with --cpu_devices or on a pod).
  loop.check_config(config, jax.device_count())
  sde = sde_lib.get_sde(config)
  shape = data_lib.get_data_shape(config)
  optim.get_optimizer(config)
  optim.get_lr_schedule(config)
  losses.get_loss_fn(sde, config, train=True)
  e = config.eval
  if e.enable_bpd or e.enable_loss or e.enable_sampling:
    check_eval_config(config)
  get_sampling_fn(config, sde, (1, *shape))
  print(f"config OK: {config.training.sde} on {config.data.dataset} {shape}, "
        f"{jax.device_count()} {jax.default_backend()} device(s)")
