"""The computations behind the notebooks' pictures, so scripts can make the same ones.

Paths of the processes on low-dimensional data (Song et al. 2021, eqs. 5, 6 and 13):

  * `forward_paths`: the forward SDE dx = f dt + g dw from data at t = 0 to T;
  * `reverse_paths`: the reverse SDE dx = [f - g^2 score] dt + g dw-bar from T down to eps,
    or (probability_flow=True) the probability-flow ODE dx = [f - g^2/2 score] dt;
  * `reverse_vs_flow_paths`: both from the same prior draws;
  * `flow_paths`: the probability-flow ODE between any two times (data -> prior included).

All of them are fixed-step Euler(-Maruyama) solves in one `lax.scan` on the device and
return every step, for drawing (the samplers in solvers/ return only chosen times).

Exact model functions for Gaussian mixtures (`gaussian_mixture_model_fn`) drive the
pictures without training: with x_t | x_0 ~ N(alpha x_0, sigma^2 I), a mixture of
N(m_k, s_k^2 I) stays a mixture, of N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I).

Densities on a grid: `density_on_grid` (the model's, by the probability-flow likelihood)
and `true_density_on_grid` (data/toy.py's closed forms).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data import toy
from sde_lib.base import AbstractSDE, ModelFn, batch_mul

# ---------------------------------------------------------------------------------------
# Exact model functions of Gaussian mixtures.


def toy_mixture(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(means (K, 2), stds (K,), weights (K,)) of a 2-D toy data set that is a Gaussian
  mixture in data/toy.py: 'gaussian', 'eight_gaussians' or 'two_gaussians'."""
  if name == "gaussian":
    return (np.full((1, 2), toy.GAUSSIAN_MEAN, np.float32),
            np.array([toy.GAUSSIAN_STD], np.float32), np.ones(1, np.float32))
  if name == "eight_gaussians":
    angle = np.arange(8) * 2 * np.pi / 8
    means = toy.EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (means.astype(np.float32), np.full(8, toy.EIGHT_GAUSSIANS_STD, np.float32),
            np.full(8, 1 / 8, np.float32))
  if name == "two_gaussians":
    means = np.array([[toy.TWO_GAUSSIANS_CENTRE, 0.0], [-toy.TWO_GAUSSIANS_CENTRE, 0.0]],
                     np.float32)
    return means, np.full(2, toy.TWO_GAUSSIANS_STD, np.float32), np.full(2, 0.5, np.float32)
  raise ValueError(f"toy data set {name!r} is not a Gaussian mixture; choices: gaussian, "
                   "eight_gaussians, two_gaussians")


def gaussian_mixture_logp(sde: AbstractSDE, x: jax.Array, t: jax.Array, means, stds,
                          weights) -> jax.Array:
  """log p_t(x) in nats, (B,), for data sum_k w_k N(m_k, s_k^2 I); x: (B, D), t: (B,)."""
  means, stds = jnp.asarray(means, x.dtype), jnp.asarray(stds, x.dtype)
  alpha, sigma = sde.alpha_sigma(t)                                   # (B,)
  var = alpha[:, None] ** 2 * stds[None] ** 2 + sigma[:, None] ** 2   # (B, K)
  centred = x[:, None, :] - alpha[:, None, None] * means[None]        # (B, K, D)
  d = x.shape[-1]
  comp = (-0.5 * d * jnp.log(2 * jnp.pi * var)
          - 0.5 * jnp.sum(centred**2, axis=-1) / var)
  return jax.nn.logsumexp(comp + jnp.log(jnp.asarray(weights, x.dtype))[None], axis=1)


def gaussian_mixture_model_fn(sde: AbstractSDE, means, stds, weights=None) -> ModelFn:
  """The exact native model function (score, or velocity for rectified flow) of data
  sum_k w_k N(m_k, s_k^2 I) under `sde`: the gradient of `gaussian_mixture_logp`."""
  means = np.asarray(means, np.float32)
  weights = (np.full(len(means), 1 / len(means), np.float32) if weights is None
             else np.asarray(weights, np.float32))

  def logp_sum(x, t):
    return jnp.sum(gaussian_mixture_logp(sde, x, t, means, stds, weights))

  def model_fn(x, t):
    score = jax.grad(logp_sum)(x, t)
    return sde.native_from_score(score, x, t)

  return model_fn


# ---------------------------------------------------------------------------------------
# Paths.


def _euler_scan(key: jax.Array | None, step_fn: Callable, x: jax.Array, ts: jax.Array
                ) -> jax.Array:
  """x at every time of the grid ts (n + 1,), by x_{k+1} = x_k + dt drift + g sqrt|dt| z
  with (drift, g) = step_fn(x, t): (n + 1, B, ...)."""
  stochastic = key is not None
  keys = (jax.random.split(key, ts.shape[0] - 1) if stochastic
          else jnp.zeros((ts.shape[0] - 1, 2), jnp.uint32))

  def step(x, inputs):
    t0, t1, k = inputs
    t = jnp.full((x.shape[0],), t0, x.dtype)
    drift, g = step_fn(x, t)
    dt = t1 - t0
    x_new = x + dt * drift
    if stochastic:
      noise = jax.random.normal(k, x.shape, x.dtype)
      x_new = x_new + batch_mul(g * jnp.sqrt(jnp.abs(dt)), noise)
    return x_new, x_new

  _, xs = jax.lax.scan(step, x, (ts[:-1], ts[1:], keys))
  return jnp.concatenate([x[None], xs])


def time_grid(t_start: float, t_end: float, num_steps: int, spacing: str = "linear",
              rho: float = 3.0) -> np.ndarray:
  """num_steps + 1 times from t_start to t_end (either direction): equally spaced
  ("linear"), or ("power") t = lo + (hi - lo) u^rho on a uniform u grid, with fine steps
  near the smaller end lo, where the score of data with little noise is large (as the
  rho-spaced grid of Karras et al. 2022)."""
  u = np.linspace(0.0, 1.0, int(num_steps) + 1)
  if spacing == "linear":
    ts = t_start + (t_end - t_start) * u
  elif spacing == "power":
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    ts = lo + (hi - lo) * u**rho
    ts = ts if t_start <= t_end else ts[::-1]
  else:
    raise ValueError(f"unknown spacing {spacing!r}; choices: linear, power")
  return ts.astype(np.float32)


def forward_paths(key: jax.Array, sde: AbstractSDE, x0: jax.Array, num_steps: int = 200
                  ) -> tuple[np.ndarray, jax.Array]:
  """Euler-Maruyama paths of the forward SDE dx = f dt + g dw from x0 (B, ...) at t = 0
  to T. Returns the times (num_steps + 1,) and the paths (num_steps + 1, B, ...)."""
  ts = time_grid(0.0, sde.T, num_steps)
  return ts, jax.jit(lambda k, x: _euler_scan(k, sde.sde, x, jnp.asarray(ts)))(key, x0)


def reverse_paths(key: jax.Array | None, sde: AbstractSDE, model_fn: ModelFn,
                  z: jax.Array, num_steps: int = 200, eps: float = 1e-3,
                  probability_flow: bool = False, t_start: float | None = None
                  ) -> tuple[np.ndarray, jax.Array]:
  """Paths of the reverse SDE (eq. 6, Euler-Maruyama) or of the probability-flow ODE
  (eq. 13, Euler; key unused) from z (B, ...) at t_start (default T) down to eps.

  Returns the times (num_steps + 1,) and the paths (num_steps + 1, B, ...); the last
  state is the sample (no denoising step)."""
  ts = time_grid(sde.T if t_start is None else t_start, eps, num_steps)
  rsde = sde.reverse(model_fn, probability_flow=probability_flow)
  k = None if probability_flow else key
  return ts, _euler_scan(k, rsde.sde, z, jnp.asarray(ts))


def flow_paths(sde: AbstractSDE, model_fn: ModelFn, x: jax.Array, t_start: float,
               t_end: float, num_steps: int = 200, spacing: str = "linear"
               ) -> tuple[np.ndarray, jax.Array]:
  """Euler paths of the probability-flow ODE dx/dt = f - g^2/2 score (the velocity for
  rectified flow) from x at t_start to t_end, in either direction, on `time_grid`'s
  grid: (times (num_steps + 1,), paths (num_steps + 1, B, ...))."""
  ts = time_grid(t_start, t_end, num_steps, spacing)
  rsde = sde.reverse(model_fn, probability_flow=True)
  return ts, _euler_scan(None, rsde.sde, x, jnp.asarray(ts))


def reverse_vs_flow_paths(key: jax.Array, sde: AbstractSDE, model_fn: ModelFn, n: int,
                          dim: int = 2, num_steps: int = 200, eps: float = 1e-3
                          ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The reverse SDE's and the probability-flow ODE's paths from the same n prior draws.

  Returns the times (num_steps + 1,) from T to eps and {"reverse SDE": paths,
  "probability flow ODE": paths}, each (num_steps + 1, n, dim)."""
  prior_key, noise_key = jax.random.split(key)
  z = sde.prior_sampling(prior_key, (n, dim))
  ts, sde_paths = reverse_paths(noise_key, sde, model_fn, z, num_steps, eps)
  _, ode_paths = reverse_paths(None, sde, model_fn, z, num_steps, eps,
                               probability_flow=True)
  return ts, {"reverse SDE": np.asarray(sde_paths),
              "probability flow ODE": np.asarray(ode_paths)}


def snapshots(paths, ts: Sequence[float], times: Sequence[float]) -> np.ndarray:
  """The states of paths (n_t, B, ...) at the grid times nearest to `times`:
  (len(times), B, ...)."""
  ts = np.asarray(ts)
  idx = [int(np.argmin(np.abs(ts - s))) for s in times]
  return np.asarray(paths)[idx]


def exact_marginal_samples(key: jax.Array, sde: AbstractSDE, x0: jax.Array,
                           times: Sequence[float]) -> np.ndarray:
  """Draws of x_t ~ p_{0t}(. | x0) at each time (Song et al. 2021, eq. 29 and App. B):
  mean + std z with (mean, std) = sde.marginal_prob. Returns (len(times), B, ...)."""
  out = []
  for i, s in enumerate(times):
    t = jnp.full((x0.shape[0],), s, x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    z = jax.random.normal(jax.random.fold_in(key, i), x0.shape, x0.dtype)
    out.append(np.asarray(mean + batch_mul(std, z)))
  return np.stack(out)


def euler_paths(model_fn: ModelFn, z: jax.Array, num_steps: int) -> np.ndarray:
  """The whole Euler path of dx/dt = model_fn(x, t) (a velocity) from t = 1 to 0 on the
  uniform grid, as evaluation.straightness.euler_path solves it: (num_steps + 1, B, ...)."""
  from evaluation.straightness import euler_path
  _, vs = euler_path(model_fn, z, num_steps)
  dt = -1.0 / num_steps
  return np.concatenate([np.asarray(z)[None],
                         np.asarray(z)[None] + dt * np.cumsum(np.asarray(vs), axis=0)])


# ---------------------------------------------------------------------------------------
# Densities on a grid.


def grid_points(lim: float, n: int) -> np.ndarray:
  """The n x n grid on [-lim, lim]^2 as points (n * n, 2), row-major with y the row
  (so `.reshape(n, n)` of a per-point value is an image with origin='lower')."""
  u = np.linspace(-lim, lim, n, dtype=np.float32)
  xx, yy = np.meshgrid(u, u)
  return np.stack([xx.ravel(), yy.ravel()], axis=1)


def density_on_grid(log_likelihood_fn: Callable, key: jax.Array, model_fn: ModelFn,
                    lim: float, n: int = 48, batch_size: int = 1024) -> np.ndarray:
  """The model's log-density (nats) on the n x n grid on [-lim, lim]^2: (n, n).

  `log_likelihood_fn(key, model_fn, x) -> (logp, z, nfe)` is that of
  solvers.likelihood.get_log_likelihood_fn; the grid is cut into batches of at most
  batch_size points, all of the same shape (the last padded), so it compiles once."""
  pts = grid_points(lim, n)
  b = min(batch_size, len(pts))
  pad = (-len(pts)) % b
  padded = np.concatenate([pts, np.zeros((pad, 2), np.float32)])
  out = []
  for i in range(len(padded) // b):
    logp, _, _ = log_likelihood_fn(jax.random.fold_in(key, i), model_fn,
                                   jnp.asarray(padded[i * b:(i + 1) * b]))
    out.append(np.asarray(logp))
  return np.concatenate(out)[:len(pts)].reshape(n, n)


def true_density_on_grid(name: str, lim: float, n: int = 48) -> np.ndarray:
  """data/toy.py's exact log-density (nats) of `name` on the same grid: (n, n)."""
  return np.asarray(toy.log_density(name, jnp.asarray(grid_points(lim, n)))).reshape(n, n)


# ---------------------------------------------------------------------------------------
# Images.


def to_images(x, inverse_scaler: Callable = lambda v: v) -> np.ndarray:
  """Model-space images (..., H, W, C) to data space [0, 1], as numpy."""
  return np.clip(np.asarray(inverse_scaler(jnp.asarray(x))), 0.0, 1.0)
