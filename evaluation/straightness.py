"""Straightness of a flow (Liu, Gong and Liu, ICLR 2023, eq. 4).

For the ODE dx/dt = v(x, t) run from x_1 = z ~ N(0, I) at t = 1 to x_0 at t = 0,

    S(v) = int_0^1 E || (x_0 - x_1) / (0 - 1) - v(x_t, t) ||^2 dt
         = int_0^1 E || (x_1 - x_0) - v(x_t, t) ||^2 dt,

the mean squared deviation of the velocity from the straight line joining the path's ends
(0 for a straight flow, which one Euler step solves exactly). It is estimated with
`num_steps` Euler steps: the path and the velocities along it come from the same solve, on
the device in one `lax.scan`.
"""
from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE


@eqx.filter_jit
def euler_path(model_fn: Callable, z: jax.Array, num_steps: int,
               t_end: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Euler solve of dx/dt = model_fn(x, t) from t = 1 to t_end.

  Returns the endpoint (B, ...) and the velocities at each step (num_steps, B, ...).
  """
  ts = jnp.linspace(1.0, t_end, num_steps + 1)

  def step(x, i):
    t = jnp.full((x.shape[0],), ts[i])
    v = model_fn(x, t)
    return x + (ts[i + 1] - ts[i]) * v, v

  x, vs = jax.lax.scan(step, z, jnp.arange(num_steps))
  return x, vs


def straightness(key: jax.Array, sde: AbstractSDE, model_fn: Callable,
                 shape: tuple[int, ...], num_steps: int = 100) -> jax.Array:
  """S(v) for the velocity field `model_fn` (rectified flow's native quantity): a scalar.

  shape: (B, ...) of the batch of prior draws used for the expectation. The squared norm
  is summed over the event dimensions and averaged over the batch and time.
  """
  if sde.native != "velocity":
    raise ValueError(f"straightness needs a velocity field (rectified flow), got {sde!r}")
  z = sde.prior_sampling(key, shape)
  x0, vs = euler_path(model_fn, z, num_steps)
  # dx/dt along a straight path from z (t = 1) to x0 (t = 0) is constant: z - x0.
  dev = (z - x0)[None] - vs
  return jnp.mean(jnp.sum(dev.reshape(num_steps, shape[0], -1) ** 2, axis=-1))
