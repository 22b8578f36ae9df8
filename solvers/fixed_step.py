"""Fixed-step Euler and Heun solves of the probability-flow ODE on a given time grid: the one
fixed-step flow of the project (`fixed_step_flow`)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from common.choices import check_choice
from common.errors import UserError
from sde_lib.base import AbstractSDE, ModelFn

#: Method name -> model evaluations per step.
FIXED_STEP_METHODS: dict[str, int] = {"euler": 1, "heun": 2}


class FlowPath(NamedTuple):
  """A fixed-step solve's path.

  ts: the grid, (n + 1,). xs: the states at ts, (n + 1, B, ...), xs[0] = x_T.
  slopes: (x_{k+1} - x_k) / h_k of each step, computed exactly (not by differencing),
  (n, B, ...): the drift at (x_k, t_k) for Euler, the mean of Heun's two drifts.
  """

  ts: jax.Array
  xs: jax.Array
  slopes: jax.Array


def fixed_step_flow(sde: AbstractSDE, model_fn: ModelFn, x_T: jax.Array,
                    ts: Sequence[float] | np.ndarray | jax.Array, method: str = "euler",
                    return_path: bool = False
                    ) -> tuple[jax.Array, int] | tuple[jax.Array, int, FlowPath]:
  """Solves the probability-flow ODE of `sde` from x_T at ts[0] along the grid ts.

  Args:
    sde: the process; its `probability_flow_drift` turns model_fn's native quantity into
      dx/dt.
    model_fn: `model_fn(x, t)` returning the native quantity (score or velocity).
    x_T: the start state at ts[0], (B, ...).
    ts: the time grid (n + 1,), n >= 1, monotone (descending from T for sampling).
    method: 'euler' or 'heun'.
    return_path: also return the FlowPath (states and slopes at every step).

  Returns:
    (x, nfe) with x the state at ts[-1], (B, ...), and nfe = n (Euler) or 2 n (Heun)
    model evaluations, a Python int; or (x, nfe, path).

  Raises:
    UserError: for an unknown method or a grid with fewer than 2 points.

  The one fixed-step flow of the project: the ODE sampler's fixed-step path, straightness
  (Liu, Gong and Liu 2023, eq. 4), path plots and rectified-flow evaluation all use it. For a
  grid ts = (t_0, ..., t_n) (usually from T down to eps) and h_k = t_{k+1} - t_k,

      Euler:  x_{k+1} = x_k + h_k d(x_k, t_k)                                  (1 eval/step)
      Heun:   x' = x_k + h_k d(x_k, t_k),
              x_{k+1} = x_k + h_k (d(x_k, t_k) + d(x', t_{k+1})) / 2           (2 evals/step)

  with d = sde.probability_flow_drift(model_fn(x, t), x, t) = f - g^2 / 2 score (Song et
  al. 2021, eq. 13); for rectified flow d is the velocity itself. These are diffrax's Euler
  and Heun steps (same tableau), written as one `lax.scan` so that the states and the slopes
  along the path come out of the same solve.
  """
  key = str(method).lower()
  check_choice(key, FIXED_STEP_METHODS, "fixed-step method")
  ts = jnp.asarray(ts, x_T.dtype)
  if ts.ndim != 1 or ts.shape[0] < 2:
    raise UserError(f"the time grid needs at least 2 points (1 step), got shape "
                    f"{tuple(ts.shape)}")
  n = ts.shape[0] - 1
  x, xs, slopes = _solve(model_fn, x_T, ts, sde=sde, heun=key == "heun",
                         save=bool(return_path))
  nfe = n * FIXED_STEP_METHODS[key]
  if not return_path:
    return x, nfe
  return x, nfe, FlowPath(ts, jnp.concatenate([x_T[None], xs], axis=0), slopes)


@eqx.filter_jit
def _solve(model_fn: ModelFn, x_T: jax.Array, ts: jax.Array, *, sde: AbstractSDE,
           heun: bool, save: bool):
  """The scan; one compilation per (sde, shape, grid length, method, save)."""
  batch = x_T.shape[0]

  def drift(x, t):
    tt = jnp.full((batch,), t, x.dtype)
    return sde.probability_flow_drift(model_fn(x, tt), x, tt)

  def step(x, k):
    t, t_next = ts[k], ts[k + 1]
    h = t_next - t
    slope = drift(x, t)
    if heun:
      slope = 0.5 * (slope + drift(x + h * slope, t_next))
    x_next = x + h * slope
    return x_next, (x_next, slope) if save else None

  x, saved = jax.lax.scan(step, x_T, jnp.arange(ts.shape[0] - 1))
  if not save:
    return x, None, None
  return x, saved[0], saved[1]


def uniform_grid(t_start: float, t_end: float, num_steps: int) -> np.ndarray:
  """linspace(t_start, t_end, num_steps + 1) in float64: (num_steps + 1,)."""
  if int(num_steps) < 1:
    raise UserError(f"num_steps must be >= 1, got {num_steps}")
  return np.linspace(float(t_start), float(t_end), int(num_steps) + 1)


def interpolate_path(path: FlowPath, times: Sequence[float]) -> jax.Array:
  """States at `times` by linear interpolation between the grid's states (diffrax's dense
  output for Euler and Heun is the same local linear interpolation): (len(times), B, ...).

  `times` must lie within the grid's range.
  """
  ts = path.ts
  direction = jnp.sign(ts[-1] - ts[0])  # Traced: searchsorted needs ascending keys.
  key = direction * ts
  q = jnp.asarray(times, ts.dtype)
  q_key = direction * q
  # Interval k with key[k] <= q <= key[k + 1].
  k = jnp.clip(jnp.searchsorted(key, q_key, side="right") - 1, 0, ts.shape[0] - 2)
  w = (q - ts[k]) / (ts[k + 1] - ts[k])
  w = w.reshape(w.shape + (1,) * (path.xs.ndim - 1))
  return (1 - w) * path.xs[k] + w * path.xs[k + 1]


