"""Helpers shared by the samplers: diffrax solver registries and their cost per step,
start times, trajectory times, and the final denoising step.
"""
from __future__ import annotations

from typing import Sequence

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn
from common.choices import lookup
from common.errors import UserError

# Probability-flow ODE solvers by diffrax's lower-case name.
ODE_SOLVERS: dict[str, type[diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
}

# Reverse-SDE solvers: (class, drift evaluations per step, Brownian increment it needs).
# Heun and EulerHeun converge to the Stratonovich solution and SEA/ShARK/SRA1 assume
# additive noise; both are right here because the diffusion g(t) does not depend on x
# (Ito = Stratonovich for additive noise).
SDE_SOLVERS: dict[str, tuple[type[diffrax.AbstractSolver], int, type]] = {
    "euler": (diffrax.Euler, 1, diffrax.BrownianIncrement),
    "heun": (diffrax.Heun, 2, diffrax.BrownianIncrement),
    "euler_heun": (diffrax.EulerHeun, 1, diffrax.BrownianIncrement),
    "sea": (diffrax.SEA, 1, diffrax.SpaceTimeLevyArea),
    "shark": (diffrax.ShARK, 2, diffrax.SpaceTimeLevyArea),
    "sra1": (diffrax.SRA1, 2, diffrax.SpaceTimeLevyArea),
}


def get_ode_solver(name: str) -> diffrax.AbstractSolver:
  """The diffrax ODE solver named `name` (case-insensitive)."""
  return lookup(ODE_SOLVERS, str(name).lower(), "ODE solver")()


def get_sde_solver(name: str) -> tuple[diffrax.AbstractSolver, int, type]:
  """(solver, drift evaluations per step, Brownian increment type) for `name`."""
  cls, evals, levy = lookup(SDE_SOLVERS, str(name).lower(), "SDE solver")
  return cls(), evals, levy


def ode_evals(solver: diffrax.AbstractSolver) -> tuple[int, int]:
  """(evaluations per step attempt, evaluations once at the start) of an ODE solver.

  An explicit Runge-Kutta method with s stages evaluates the vector field s times per
  step; a first-same-as-last (FSAL) one reuses its last stage as the next step's first,
  also after a rejected step (the first stage, at the unchanged (t0, y0), is still valid),
  so it costs s - 1 per attempt plus one evaluation on the first step.
  """
  if isinstance(solver, diffrax.Euler):
    return 1, 0
  if isinstance(solver, diffrax.AbstractERK):
    stages = len(solver.tableau.c) + 1
    return (stages - 1, 1) if solver.tableau.fsal else (stages, 0)
  raise ValueError(f"no evaluation count for solver {type(solver).__name__}")


def is_singular_at_T(sde: AbstractSDE) -> bool:
  """Whether the forward SDE's diffusion g(T) is infinite (rectified flow's is).

  Stochastic samplers, which need g and the score at their start, then start at T - eps.
  """
  with jax.ensure_compile_time_eval():
    _, g = sde.sde(jnp.zeros((1, 1)), jnp.full((1,), sde.T))
    return not bool(jnp.all(jnp.isfinite(g)))


def stochastic_start_time(sde: AbstractSDE, eps: float) -> float:
  """T, or T - eps for a process whose SDE is singular at T."""
  return sde.T - eps if is_singular_at_T(sde) else sde.T


def check_times(times: Sequence[float] | None, eps: float, T: float
                ) -> tuple[float, ...] | None:
  """Validates trajectory times (each in [eps, T]); returns them as a hashable tuple."""
  if times is None:
    return None
  out = tuple(float(s) for s in np.asarray(times, np.float64).reshape(-1))
  if not out:
    raise UserError("trajectory_times is empty; pass None for no trajectory")
  slack = 1e-6 * max(T, 1.0)
  bad = [s for s in out if not eps - slack <= s <= T + slack]
  if bad:
    raise UserError(f"trajectory_times must lie in [eps, T] = [{eps}, {T}]; got {bad}")
  return out


def tweedie_denoise(sde: AbstractSDE, model_fn: ModelFn, x: jax.Array, t: float
                    ) -> jax.Array:
  """E[x_0 | x_t] by Tweedie's formula, (x + sigma(t)^2 score(x, t)) / alpha(t): x.shape.

  One model evaluation. It is the noise-free limit of score_sde's final reverse-diffusion
  step (both remove the noise of level sigma(eps)); the process's `x0_from_native` applies
  it to every process in sde_lib, rectified flow included (E[x_0|x] = x - t v).
  """
  tt = jnp.full((x.shape[0],), t, x.dtype)
  return sde.x0_from_native(model_fn(x, tt), x, tt)


def reverse_diffusion_denoise(sde: AbstractSDE, model_fn: ModelFn, x: jax.Array, t: float
                              ) -> jax.Array:
  """score_sde's `denoise_update_fn` of its ODE sampler: the noise-free mean of one
  reverse-diffusion predictor step at t, x - f + G^2 score with (f, G) = sde.discretize
  (Song et al. 2021, eq. 46): the chain's last step for VP (DDPM) and VE (SMLD, which
  removes sigma_0^2 of noise), an Euler-Maruyama step of T / N otherwise. One model
  evaluation; x.shape."""
  tt = jnp.full((x.shape[0],), t, x.dtype)
  rev_f, _ = sde.reverse(model_fn, probability_flow=False).discretize(x, tt)
  return x - rev_f


#: Noise-removing last steps by name.
DENOISE_STEPS = {"tweedie": tweedie_denoise, "reverse_diffusion": reverse_diffusion_denoise}


def denoise_step_fn(name: str):
  """The function `(sde, model_fn, x, t) -> x` registered in DENOISE_STEPS as `name`."""
  return lookup(DENOISE_STEPS, name, "denoise step")


def to_original_order(times: tuple[float, ...], descending: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(sorted times, permutation back to the caller's order) for diffrax's SaveAt(ts).

  diffrax needs save times monotone in the direction of integration.
  """
  arr = np.asarray(times, np.float64)
  order = np.argsort(-arr if descending else arr, kind="stable")
  inverse = np.empty_like(order)
  inverse[order] = np.arange(order.size)
  return arr[order], inverse
