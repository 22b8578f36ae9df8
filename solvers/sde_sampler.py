"""Reverse-time SDE sampler through diffrax (Song et al. 2021, eq. 6).
"""
from __future__ import annotations

from typing import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn
from common.errors import UserError
from solvers.nonfinite import check_finite_result
from solvers.diffrax_utils import (check_times, get_sde_solver, stochastic_start_time,
                                   to_original_order, tweedie_denoise)


def get_sde_sampler(sde: AbstractSDE, shape: Sequence[int], solver: str = "euler",
                    num_steps: int = 1000, eps: float = 1e-3, denoise: bool = True,
                    trajectory_times: Sequence[float] | None = None) -> Callable:
  """A reverse-time SDE sampler for `sde` with fixed steps and a virtual Brownian tree.

  Args:
    sde: the forward process.
    shape: the batch's shape (B, ...).
    solver: euler (Euler-Maruyama), heun, euler_heun, sea, shark or sra1.
    num_steps: number of equal steps from t_start (T, or T - eps for rectified flow)
      down to eps.
    eps: the end time.
    denoise: finish with one Tweedie step E[x_0 | x_eps] (one more model evaluation).
    trajectory_times: optional times in [eps, T] at which the states are also returned
      (a time above t_start gives the state at t_start).

  Returns:
    `sampler(key, model_fn) -> (x, nfe)`, or `(x, nfe, trajectory)` with trajectory of
    shape (len(trajectory_times), *shape) in the given order; nfe = num_steps (drift
    evaluations per step) (+1 if denoise), a Python int. The Brownian path is seeded from
    `key`, so a key fixes the sample. A non-finite model output raises
    solvers.NonFiniteError naming the time.

  The reverse SDE  dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw-bar  runs from t = T down
  to eps. diffrax's stochastic solvers handle a decreasing time poorly (diffrax's GitHub issue #598),
  so we integrate in the forward-running time s = T - t, s in [T - t_start, T - eps]. With
  y(s) = x(T - s), and rev_drift = f - g^2 score as returned by `ReverseSDE.sde`,

      dy = -rev_drift(y, T - s) ds + g(T - s) dW(s),

  where W is a standard Brownian motion in s (the reverse-time Brownian motion w-bar at
  t = T - s). The diffusion g depends on time only (additive noise), so the Ito and
  Stratonovich solutions coincide and Heun, EulerHeun and the additive-noise Runge-Kutta
  methods (SEA, ShARK, SRA1) are all valid. Processes whose SDE is singular at T (rectified
  flow) start at t_start = T - eps, from the prior.
  """
  sde_solver, evals, levy_area = get_sde_solver(solver)  # UserError for unknown names.
  if int(num_steps) < 1:
    raise UserError(f"num_steps must be >= 1, got {num_steps}")
  t_start = stochastic_start_time(sde, eps)
  if not 0 < eps < t_start:
    raise UserError(f"need 0 < eps < start time {t_start}, got eps={eps}")
  times = check_times(trajectory_times, eps, sde.T)
  nfe = int(num_steps) * evals + int(bool(denoise))
  static = dict(sde=sde, shape=tuple(int(s) for s in shape), solver=sde_solver,
                levy_area=levy_area, num_steps=int(num_steps), t_start=float(t_start),
                eps=float(eps), denoise=bool(denoise), times=times)

  def sampler(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None):
    # x_T: the prior draw (shape `shape`), drawn with `key` when None.
    x, trajectory = _solve_sde(key, model_fn, x_T, **static)
    check_finite_result(x, lambda m: _solve_sde(key, m, x_T, **static), model_fn,
                        f"SDE sampler ({solver}, {num_steps} steps)", sde.native)
    if times is None:
      return x, nfe
    return x, nfe, trajectory

  return sampler


def reverse_sde_terms(sde: AbstractSDE, shape: tuple[int, ...],
                      brownian: diffrax.AbstractBrownianPath) -> diffrax.MultiTerm:
  """Drift and diffusion of the reverse SDE in s = T - t; `args` is the model function."""
  batch, T = shape[0], sde.T

  def drift(s, y, model_fn):
    t = jnp.full((batch,), T - s, y.dtype)
    return -sde.reverse(model_fn, probability_flow=False).sde(y, t)[0]

  def diffusion(s, y, model_fn):
    # g depends on t alone: evaluate it on a one-example dummy so that the operator does
    # not depend on y (the additive-noise solvers check this).
    _, g = sde.sde(jnp.zeros((1, 1), y.dtype), jnp.full((1,), T - s, y.dtype))
    identity = lx.IdentityLinearOperator(jax.ShapeDtypeStruct(shape, y.dtype))
    return g[0] * identity

  return diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))


@eqx.filter_jit
def _solve_sde(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None, *,
               sde: AbstractSDE,
               shape: tuple[int, ...], solver: diffrax.AbstractSolver, levy_area: type,
               num_steps: int, t_start: float, eps: float, denoise: bool,
               times: tuple[float, ...] | None):
  prior_key, brownian_key = jax.random.split(key)
  x_start = sde.prior_sampling(prior_key, shape) if x_T is None else x_T
  s0, s1 = sde.T - t_start, sde.T - eps
  ds = (s1 - s0) / num_steps
  # A tolerance below the step (diffrax suggests dt / 2) so that every step spans whole
  # leaves of the tree; each halving of tol adds one level to every evaluation.
  brownian = diffrax.VirtualBrownianTree(
      s0, s1, tol=ds / 2, shape=jax.ShapeDtypeStruct(shape, x_start.dtype),
      key=brownian_key, levy_area=levy_area)
  if times is None:
    saveat = diffrax.SaveAt(t1=True)
  else:
    # Clip to the integration interval: for rectified flow, t = T maps to s0.
    s_times = np.clip(sde.T - np.asarray(times), s0, s1)
    sorted_s, inverse = to_original_order(tuple(s_times), descending=False)
    saveat = diffrax.SaveAt(t1=True, ts=jnp.asarray(sorted_s, x_start.dtype))
  sol = diffrax.diffeqsolve(
      reverse_sde_terms(sde, shape, brownian), solver, t0=s0, t1=s1, dt0=None,
      y0=x_start, args=model_fn, saveat=saveat,
      stepsize_controller=diffrax.StepTo(ts=jnp.linspace(s0, s1, num_steps + 1)),
      max_steps=num_steps)
  x = sol.ys[-1]
  if denoise:
    x = tweedie_denoise(sde, model_fn, x, eps)
  trajectory = None if times is None else sol.ys[:-1][jnp.asarray(inverse)]
  return x, trajectory
