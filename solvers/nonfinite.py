"""One error, naming the time, for a model whose output is not finite inside a sampler or a
likelihood solve. The compiled solves carry no host callback: the caller checks the result
once on the host, and only when it is not finite (or an adaptive solve stopped early) reruns
the same solve with a model function that reports each evaluation to the host.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import UserError
from sde_lib.base import ModelFn


class NonFiniteError(UserError, FloatingPointError):
  """The model's output (or the solver's state) was not finite at a named time.

  A UserError, so main.py prints it as one line and exits with code 2 (the usual cause is
  the model or its checkpoint: a diverged run, a wrong parameterization); also a
  FloatingPointError for code that catches numerical failures as such.
  """


def _is_traced(tree) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def all_finite(tree) -> bool:
  """Whether every array in `tree` is finite (one host transfer of one bool)."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
  return bool(jnp.all(jnp.stack(leaves))) if leaves else True


def first_nonfinite(run: Callable[[ModelFn], Any], model_fn: ModelFn, descending: bool
                    ) -> tuple[float, bool] | None:
  """(t, input_finite) of the first evaluation, in the direction of integration, at which
  `model_fn` returned a non-finite value while its input x was finite (the model's own
  fault); else of the first one with a non-finite input (the state went bad first); None
  when every output was finite. `run(model_fn)` repeats the solve."""
  log: list[tuple[float, bool, bool]] = []

  def record(t, ok_in, ok_out):
    log.append((float(t), bool(ok_in), bool(ok_out)))

  def watched(x, t):
    out = model_fn(x, t)
    jax.debug.callback(record, jnp.reshape(t, (-1,))[0], jnp.all(jnp.isfinite(x)),
                       jnp.all(jnp.isfinite(out)))
    return out

  jax.block_until_ready(run(watched))
  jax.effects_barrier()
  bad = [(t, ok_in) for t, ok_in, ok_out in log if not ok_out]
  if not bad:
    return None
  key = (lambda e: -e[0]) if descending else (lambda e: e[0])
  own = sorted([e for e in bad if e[1]], key=key)
  return own[0] if own else sorted(bad, key=key)[0]


def nonfinite_error(what: str, quantity: str, found: tuple[float, bool] | None
                    ) -> NonFiniteError:
  """The one-line error for `first_nonfinite`'s finding."""
  if found is None:
    return NonFiniteError(f"{what}: the result is not finite although every model output "
                          f"({quantity}) was; the solver's own arithmetic overflowed")
  t, input_ok = found
  if input_ok:
    return NonFiniteError(f"{what}: the model's output ({quantity}) is not finite at "
                          f"t = {t:.9g} for a finite input; check the model and checkpoint")
  return NonFiniteError(f"{what}: the state was not finite when the model was evaluated at "
                        f"t = {t:.9g}")


def check_finite_result(result, run: Callable[[ModelFn], Any], model_fn: ModelFn,
                        what: str, quantity: str = "native quantity",
                        descending: bool = True) -> None:
  """Raises NonFiniteError when `result` has a non-finite entry, naming the first time at
  which the model's output was not finite (rerunning `run(model_fn)` to find it). Nothing
  is checked when `result` is traced (the caller's own jit)."""
  if _is_traced(result) or all_finite(result):
    return
  raise nonfinite_error(what, quantity, first_nonfinite(run, model_fn, descending))


def stopped_error(what: str, t_stop: float, max_steps: int, limits: str,
                  run: Callable[[ModelFn], Any], model_fn: ModelFn, quantity: str,
                  descending: bool = True) -> UserError:
  """The error for an adaptive solve that stopped before its end time: NonFiniteError
  when the model's output was not finite on the way (a non-finite stage makes every step
  fail until max_steps), otherwise a UserError naming the limits to change."""
  found = first_nonfinite(run, model_fn, descending)
  if found is not None:
    return nonfinite_error(what, quantity, found)
  return UserError(f"{what}: the adaptive solve stopped at t = {t_stop:.6g} after "
                   f"max_steps = {max_steps} steps; {limits}")


def to_float(x) -> float:
  return float(np.asarray(x).reshape(-1)[0])
