"""Straightness of a flow (Liu, Gong and Liu, ICLR 2023, eq. 4): the mean squared deviation
of the probability-flow velocity from the straight line joining each path's ends (0 for a
straight flow), estimated from one fixed-step Euler solve on the device.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_lib import AbstractSDE
from solvers.fixed_step import fixed_step_flow, uniform_grid


def euler_path(sde: AbstractSDE, model_fn: Callable, z: jax.Array, num_steps: int,
               t_end: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Euler solve of the probability flow of `sde` driven by `model_fn` from z at t = T to
  t_end on the uniform grid (solvers.fixed_step_flow; for rectified flow dx/dt is the
  velocity model_fn(x, t) itself).

  Returns the endpoint (B, ...) and the drift at each step (num_steps, B, ...).
  """
  x, _, path = fixed_step_flow(sde, model_fn, z, uniform_grid(sde.T, t_end, num_steps),
                               "euler", return_path=True)
  return x, path.slopes


def straightness(key: jax.Array, sde: AbstractSDE, model_fn: Callable,
                 shape: tuple[int, ...], num_steps: int = 100,
                 t_end: float = 0.0) -> jax.Array:
  """S for the probability flow of `sde` driven by `model_fn` (its native quantity): a
  scalar. For rectified flow this is Liu et al.'s S(v) of the velocity field.

  shape: (B, ...) of the batch of prior draws used for the expectation. The squared norm
  is summed over the event dimensions and averaged over the batch and time. t_end: where
  the flow stops (0 for rectified flow; a small eps for the SDEs, whose score diverges at
  0 -- Euler never evaluates the drift at t_end itself).

  For the probability-flow ODE dx/dt = d(x, t) run from x_T ~ p_T at t = T to x_e at
  t = t_end (for rectified flow: d = v, T = 1, t_end = 0),

      S = 1 / (T - t_end) int_{t_end}^T E || (x_T - x_e) / (T - t_end) - d(x_t, t) ||^2 dt,

  the mean squared deviation of the velocity from the straight line joining the path's ends
  (0 for a straight flow, which one Euler step solves exactly); for rectified flow it is
  eq. 4 exactly. It is estimated with `num_steps` Euler steps of the project's one
  fixed-step flow (solvers.fixed_step_flow): the path and the velocities along it come from
  the same solve, on the device in one `lax.scan`.
  """
  z = sde.prior_sampling(key, shape)
  x_end, _, path = fixed_step_flow(sde, model_fn, z, uniform_grid(sde.T, t_end, num_steps),
                                   "euler", return_path=True)
  # dx/dt along a straight path from z (t = T) to x_end (t = t_end) is constant.
  straight = (z - x_end) / (sde.T - t_end)
  dev = straight[None] - path.slopes
  return jnp.mean(jnp.sum(dev.reshape(num_steps, shape[0], -1) ** 2, axis=-1))
