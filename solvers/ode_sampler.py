"""Probability-flow ODE sampler through diffrax (Song et al. 2021, Sec. 4.3, eq. 13).

Draws x_T ~ p_T and integrates

    dx/dt = f(x, t) - g(t)^2 / 2 * score(x, t)

from t = T down to eps (for rectified flow the right-hand side is the velocity itself, and
the integration starts at T exactly). Adaptive steps use a PID controller on the RMS norm
of the whole batch's error, as score_sde's single scipy solve of the flattened batch does;
fixed steps take num_steps equal steps. Tolerances are traced arrays, so changing them does
not recompile.
"""
from __future__ import annotations

from typing import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE, ModelFn
from solvers.diffrax_utils import (check_times, get_ode_solver, ode_evals,
                                   to_original_order, tweedie_denoise)

# First adaptive step as a fraction of (T - eps). Small enough that it is accepted in
# practice (the controller grows the step up to tenfold per step), which makes the nfe
# formula exact: an FSAL solver re-evaluates its first stage after a rejected first step.
_FIRST_STEP = 1e-3


def get_ode_sampler(sde: AbstractSDE, shape: Sequence[int], solver: str = "tsit5",
                    rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
                    denoise: bool = False, num_steps: int | None = None,
                    trajectory_times: Sequence[float] | None = None,
                    max_steps: int = 4096) -> Callable:
  """A probability-flow ODE sampler for `sde`.

  Args:
    sde: the forward process.
    shape: the batch's shape (B, ...).
    solver: a diffrax solver by lower-case name: euler, heun, midpoint, ralston, bosh3,
      tsit5, dopri5, dopri8.
    rtol, atol: tolerances of diffrax.PIDController (adaptive steps).
    eps: the end time of the integration.
    denoise: finish with one Tweedie step E[x_0 | x_eps] (one more model evaluation).
    num_steps: if given, fixed steps dt = (T - eps) / num_steps instead of adaptive ones.
    trajectory_times: optional times in [eps, T] at which the states are also returned.
    max_steps: the most steps (accepted and rejected) an adaptive solve may take; a solve
      that needs more raises an error at run time.

  Returns:
    `sampler(key, model_fn) -> (x, nfe)`, or `(x, nfe, trajectory)` with trajectory of
    shape (len(trajectory_times), *shape) in the given order; nfe is an int32 array
    counting model evaluations, rejected steps included.
  """
  ode_solver = get_ode_solver(solver)  # Raises ValueError for an unknown name.
  if num_steps is None and not isinstance(ode_solver, diffrax.AbstractAdaptiveSolver):
    raise ValueError(f"ODE solver {solver!r} has no error estimate for adaptive steps; "
                     f"give num_steps for fixed steps")
  if num_steps is not None and int(num_steps) < 1:
    raise ValueError(f"num_steps must be >= 1 or None, got {num_steps}")
  if not 0 < eps < sde.T:
    raise ValueError(f"need 0 < eps < T = {sde.T}, got eps={eps}")
  times = check_times(trajectory_times, eps, sde.T)
  static = dict(sde=sde, shape=tuple(int(s) for s in shape), solver=ode_solver,
                eps=float(eps), denoise=bool(denoise),
                num_steps=None if num_steps is None else int(num_steps),
                max_steps=int(max_steps), times=times)

  def sampler(key: jax.Array, model_fn: ModelFn):
    x, nfe, trajectory = _solve_ode(key, model_fn, jnp.asarray(rtol, jnp.float32),
                                    jnp.asarray(atol, jnp.float32), **static)
    if times is None:
      return x, nfe
    return x, nfe, trajectory

  return sampler


def probability_flow_term(sde: AbstractSDE, batch: int) -> diffrax.ODETerm:
  """diffrax term for dx/dt = probability-flow drift; `args` is the model function."""

  def vector_field(t, x, model_fn):
    tt = jnp.full((batch,), t, x.dtype)
    return sde.reverse(model_fn, probability_flow=True).sde(x, tt)[0]

  return diffrax.ODETerm(vector_field)


@eqx.filter_jit
def _solve_ode(key: jax.Array, model_fn: ModelFn, rtol: jax.Array, atol: jax.Array, *,
               sde: AbstractSDE, shape: tuple[int, ...], solver: diffrax.AbstractSolver,
               eps: float, denoise: bool, num_steps: int | None, max_steps: int,
               times: tuple[float, ...] | None):
  """One compiled solve per static configuration; rtol, atol and model arrays traced."""
  x_T = sde.prior_sampling(key, shape)
  t0, t1 = sde.T, eps
  if num_steps is None:
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    dt0 = -_FIRST_STEP * (t0 - t1)
    steps_cap = max_steps
  else:
    # StepTo lands exactly on eps: ConstantStepSize could add a sliver of a step from
    # float round-off.
    controller = diffrax.StepTo(ts=jnp.linspace(t0, t1, num_steps + 1))
    dt0 = None
    steps_cap = num_steps
  if times is None:
    saveat = diffrax.SaveAt(t1=True)
  else:
    sorted_ts, inverse = to_original_order(times, descending=True)
    saveat = diffrax.SaveAt(t1=True, ts=jnp.asarray(sorted_ts, x_T.dtype))
  sol = diffrax.diffeqsolve(
      probability_flow_term(sde, shape[0]), solver, t0=t0, t1=t1, dt0=dt0, y0=x_T,
      args=model_fn, saveat=saveat, stepsize_controller=controller, max_steps=steps_cap)
  x = sol.ys[-1]
  per_step, initial = ode_evals(solver)
  nfe = initial + per_step * jnp.asarray(sol.stats["num_steps"], jnp.int32)
  if denoise:
    x = tweedie_denoise(sde, model_fn, x, eps)
    nfe = nfe + 1
  trajectory = None if times is None else sol.ys[:-1][jnp.asarray(inverse)]
  return x, nfe, trajectory
