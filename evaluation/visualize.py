"""The computations behind the notebooks' pictures, so scripts can make the same ones: paths
of the forward, reverse and probability-flow processes on low-dimensional data (every step
of a fixed-step solve), exact Gaussian-mixture model functions that drive them without
training, and model and true densities on a grid.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data import toy
from models.guidance import classifier_free_guidance
from sde_lib.base import AbstractSDE, ModelFn, batch_mul
from common.choices import check_choice
from common.errors import UserError
from solvers.fast import get_fast_sampler
from solvers.fixed_step import fixed_step_flow, uniform_grid
from solvers.ode_sampler import get_ode_sampler

# ---------------------------------------------------------------------------------------
# Exact model functions of Gaussian mixtures.


def toy_mixture(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(means (K, 2), stds (K,), weights (K,)) of a 2-D toy data set that is a Gaussian
  mixture in data/toy.py: 'gaussian', 'eight_gaussians' or 'two_gaussians'."""
  check_choice(name, ("gaussian", "eight_gaussians", "two_gaussians"),
               "Gaussian-mixture toy data set")
  if name == "gaussian":
    return (np.full((1, 2), toy.GAUSSIAN_MEAN, np.float32),
            np.array([toy.GAUSSIAN_STD], np.float32), np.ones(1, np.float32))
  if name == "eight_gaussians":
    angle = np.arange(8) * 2 * np.pi / 8
    means = toy.EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (means.astype(np.float32), np.full(8, toy.EIGHT_GAUSSIANS_STD, np.float32),
            np.full(8, 1 / 8, np.float32))
  means = np.array([[toy.TWO_GAUSSIANS_CENTRE, 0.0], [-toy.TWO_GAUSSIANS_CENTRE, 0.0]],
                   np.float32)
  return means, np.full(2, toy.TWO_GAUSSIANS_STD, np.float32), np.full(2, 0.5, np.float32)


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
  sum_k w_k N(m_k, s_k^2 I) under `sde`: the gradient of `gaussian_mixture_logp`.

  Exact, so it drives the pictures without training: with x_t | x_0 ~ N(alpha x_0,
  sigma^2 I), a mixture of N(m_k, s_k^2 I) stays a mixture, of
  N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I).
  """
  means = np.asarray(means, np.float32)
  weights = (np.full(len(means), 1 / len(means), np.float32) if weights is None
             else np.asarray(weights, np.float32))

  def logp_sum(x, t):
    return jnp.sum(gaussian_mixture_logp(sde, x, t, means, stds, weights))

  def model_fn(x, t):
    score = jax.grad(logp_sum)(x, t)
    return sde.native_from_score(score, x, t)

  return model_fn


def mixture_cond_model_fn(sde: AbstractSDE, means, stds, weights=None
                          ) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """The exact conditional model function of data sum_k w_k N(m_k, s_k^2 I) with the
  component k as its class: `cond_model_fn(x, t, class_labels)`, x (B, D), t (B,),
  class_labels (B,) int, returns the native quantity of p_t(x | y = k) (one Gaussian) for
  labels 0..K-1 and of the whole mixture p_t(x) for the null label K, as a network trained
  with label dropout approximates them (models.classifier_free_guidance's input)."""
  means = np.asarray(means, np.float32)
  stds = np.broadcast_to(np.asarray(stds, np.float32), (len(means),))
  fns = [gaussian_mixture_model_fn(sde, means[k:k + 1], stds[k:k + 1], np.ones(1))
         for k in range(len(means))]
  fns.append(gaussian_mixture_model_fn(sde, means, stds, weights))

  def cond_model_fn(x, t, class_labels):
    outs = jnp.stack([fn(x, t) for fn in fns])                    # (K + 1, B, D)
    return jnp.take_along_axis(outs, class_labels[None, :, None], axis=0)[0]

  return cond_model_fn


# ---------------------------------------------------------------------------------------
# Paths.


def _euler_scan(key: jax.Array | None, step_fn: Callable, x: jax.Array, ts: jax.Array
                ) -> jax.Array:
  """x at every time of the grid ts (n + 1,), by x_{k+1} = x_k + dt drift + g sqrt|dt| z
  with (drift, g) = step_fn(x, t): (n + 1, B, ...).

  All path functions of this module are fixed-step Euler(-Maruyama) solves in one
  `lax.scan` on the device (the probability-flow ones through solvers.fixed_step_flow, the
  project's one fixed-step flow) and return every step, for drawing (the samplers in
  solvers/ return only chosen times).
  """
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
  check_choice(spacing, ("linear", "power"), "spacing")
  u = np.linspace(0.0, 1.0, int(num_steps) + 1)
  if spacing == "linear":
    ts = t_start + (t_end - t_start) * u
  else:
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    ts = lo + (hi - lo) * u**rho
    ts = ts if t_start <= t_end else ts[::-1]
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
  state is the sample (no denoising step).

  The processes (Song et al. 2021, eqs. 5, 6 and 13): the forward SDE dx = f dt + g dw
  (`forward_paths`), the reverse SDE dx = [f - g^2 score] dt + g dw-bar, and
  (probability_flow=True) the probability-flow ODE dx = [f - g^2/2 score] dt.
  """
  ts = time_grid(sde.T if t_start is None else t_start, eps, num_steps)
  if probability_flow:
    return ts, _flow(sde, model_fn, z, ts)
  rsde = sde.reverse(model_fn, probability_flow=False)
  return ts, _euler_scan(key, rsde.sde, z, jnp.asarray(ts))


def _flow(sde: AbstractSDE, model_fn: ModelFn, x: jax.Array, ts: np.ndarray) -> jax.Array:
  """The project's one fixed-step flow (solvers.fixed_step_flow, Euler) on the grid ts:
  the states at every time, (len(ts), B, ...)."""
  _, _, path = fixed_step_flow(sde, model_fn, x, ts, "euler", return_path=True)
  return path.xs


def flow_paths(sde: AbstractSDE, model_fn: ModelFn, x: jax.Array, t_start: float,
               t_end: float, num_steps: int = 200, spacing: str = "linear"
               ) -> tuple[np.ndarray, jax.Array]:
  """Euler paths of the probability-flow ODE dx/dt = f - g^2/2 score (the velocity for
  rectified flow) from x at t_start to t_end, in either direction, on `time_grid`'s
  grid: (times (num_steps + 1,), paths (num_steps + 1, B, ...))."""
  ts = time_grid(t_start, t_end, num_steps, spacing)
  return ts, _flow(sde, model_fn, x, ts)


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


def fast_sampler_path(key: jax.Array, sde: AbstractSDE, model_fn: ModelFn, x_T: jax.Array,
                      method: str = "dpm_solver++", steps: int = 10, order: int = 2,
                      schedule: str = "logSNR", eps: float = 1e-3, **knobs
                      ) -> tuple[np.ndarray, np.ndarray, int]:
  """The states of a few-step sampler (solvers.get_fast_sampler) at every time of its
  grid, from x_T (B, ...) at T down to eps: (ts (steps + 1,), xs (steps + 1, B, ...), nfe).

  The fast samplers return only the sample, so the path is rebuilt from prefixes: the
  state at t_k is the sample of the same method with k steps from T down to t_k. The
  grids of every schedule but edm are uniform in some transform of t (t, sqrt t,
  lambda = log(alpha / sigma)), so the k-step grid to t_k is the first k + 1 points of the
  full grid, and a multistep method that warms up with orders 1, 2, ... takes the same
  steps on it: xs[k] is the full run's state at t_k. Prefixes run without lowering their
  final orders (lower_order_final=False) and with order min(order, k); xs[-1] is the
  full run's own output, with the caller's settings, hence the sample itself. (With
  lower_order_final on dpm_solver(++) at steps < 10 and order 3 the full run lowers the
  order of its last two steps, so xs[steps - 1] is the unlowered state there.)

  Each prefix compiles its own sampler (steps compiles in all): meant for pictures of a
  few steps. Raises UserError for settings whose prefixes are not the full run's states:
  singlestep DPM-Solver (multistep=False), UniPC (its corrector skips the last step), a
  stochastic DDIM (eta > 0), and runs that end with the step to t = 0 (schedule edm,
  denoise_to_zero).
  """
  # It rebuilds deterministic multistep paths, which only these methods have.
  check_choice(method, ("ddim", "dpm_solver", "dpm_solver++", "ipndm"),
               "method for fast_sampler_path")
  if (not knobs.get("multistep", True) or float(knobs.get("eta", 0.0)) != 0.0
      or schedule == "edm" or knobs.get("denoise_to_zero", False)):
    raise UserError("fast_sampler_path needs multistep=True, eta=0, denoise_to_zero=False "
                    f"and a schedule other than edm (got schedule={schedule!r}, {knobs})")
  shape = tuple(x_T.shape)
  full = get_fast_sampler(sde, shape, method, steps, order=order, schedule=schedule,
                          eps=eps, **knobs)
  ts = np.asarray(full.solver.grid(sde, x_T.dtype), np.float64)
  prefix_knobs = dict(knobs, lower_order_final=False)
  xs = [np.asarray(x_T)]
  for k in range(1, steps):
    sampler = get_fast_sampler(sde, shape, method, k, order=min(order, k),
                               schedule=schedule, eps=float(ts[k]), **prefix_knobs)
    xs.append(np.asarray(sampler(key, model_fn, x_T=x_T)[0]))
  x, nfe = full(key, model_fn, x_T=x_T)
  xs.append(np.asarray(x))
  return ts.astype(np.float32), np.stack(xs), int(nfe)


def fast_vs_adaptive_paths(key: jax.Array, sde: AbstractSDE, model_fn: ModelFn,
                           x_T: jax.Array, num_times: int = 200, eps: float = 1e-3,
                           solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                           method: str = "dpm_solver++", steps: int = 10, order: int = 2,
                           schedule: str = "logSNR", **knobs) -> dict[str, np.ndarray]:
  """The probability-flow ODE from the same x_T (B, ...) two ways: the adaptive diffrax
  solve (solvers.get_ode_sampler, saved at num_times + 1 equally spaced times from T to
  eps) and a few-step fast sampler's states at its grid (`fast_sampler_path`).

  Returns {"adaptive <solver> (NFE n)": (num_times + 1, B, ...), "<method> <steps> steps
  (NFE m)": (steps + 1, B, ...)}, both ending at eps without a denoising step."""
  times = [float(t) for t in np.linspace(sde.T, eps, int(num_times) + 1)]
  adaptive = get_ode_sampler(sde, tuple(x_T.shape), solver=solver, rtol=rtol, atol=atol,
                             eps=eps, denoise=False, trajectory_times=times)
  _, nfe_ad, path_ad = adaptive(key, model_fn, x_T=x_T)
  _, path_fast, nfe_fast = fast_sampler_path(key, sde, model_fn, x_T, method, steps, order,
                                             schedule, eps, **knobs)
  return {f"adaptive {solver} (NFE {int(nfe_ad)})": np.asarray(path_ad),
          f"{method} {steps} steps (NFE {nfe_fast})": path_fast}


def euler_paths(sde: AbstractSDE, model_fn: ModelFn, z: jax.Array,
                num_steps: int) -> np.ndarray:
  """The whole Euler path of the probability-flow ODE of `sde` from z at t = T to 0 on the
  uniform grid (solvers.fixed_step_flow; for rectified flow dx/dt = model_fn(x, t), a
  velocity): (num_steps + 1, B, ...)."""
  _, _, path = fixed_step_flow(sde, model_fn, z, uniform_grid(sde.T, 0.0, num_steps),
                               "euler", return_path=True)
  return np.asarray(path.xs)


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


def center_square_mask(shape: Sequence[int], size: int) -> np.ndarray:
  """An inpainting mask of `shape` (B, H, W, C): 1 (known) everywhere but a size x size
  square in the middle of each image, 0 (to generate)."""
  _, h, w, _ = shape
  if not 0 < size <= min(h, w):
    raise UserError(f"mask size {size} must be in 1..{min(h, w)} for {h}x{w} images")
  mask = np.ones(tuple(shape), np.float32)
  top, left = (h - size) // 2, (w - size) // 2
  mask[:, top:top + size, left:left + size, :] = 0.0
  return mask


def inpainting_columns(data: np.ndarray, mask: np.ndarray, samples: Sequence[np.ndarray],
                       hole_value: float = 0.5) -> np.ndarray:
  """The columns of an inpainting picture, all (n, H, W, C) in [0, 1]: the original, the
  observed input (the hole filled with hole_value), the mask (white = known) and each
  set of samples. Returns (2 + 1 + len(samples), n, H, W, C), for
  plots.image_trajectory_grid (rows: images; columns: these)."""
  data = np.asarray(data)
  observed = np.where(mask > 0, data, hole_value)
  return np.stack([data, observed, np.asarray(mask, data.dtype)]
                  + [np.asarray(x) for x in samples])


def guided_mixture_samples(key: jax.Array, sde: AbstractSDE, name: str, label: int,
                           ws: Sequence[float], n: int, steps: int = 20
                           ) -> dict[str, np.ndarray]:
  """Classifier-free guidance (Ho and Salimans 2022; models.classifier_free_guidance) with
  the exact conditional model of a 2-D toy Gaussian mixture (`mixture_cond_model_fn`:
  class = component), sampled with DPM-Solver++(2M), `steps` logSNR steps, from the same
  n prior draws for every weight.

  Returns {"unconditional": (n, 2), "class <label>, w = <w>": (n, 2) for w in ws}. With
  w = 0 the samples are the component's, N(m_label, s^2 I); w > 0 sharpens them."""
  means, stds, weights = toy_mixture(name)
  k = len(means)
  cond = mixture_cond_model_fn(sde, means, stds, weights)
  sampler = get_fast_sampler(sde, (n, 2), "dpm_solver++", steps, order=2,
                             schedule="logSNR")
  prior_key, sample_key = jax.random.split(key)
  x_T = sde.prior_sampling(prior_key, (n, 2))
  labels = jnp.full((n,), int(label), jnp.int32)
  # The null label through the conditional model: the mixture's own score.
  out = {"unconditional": np.asarray(sampler(
      sample_key, lambda x, t: cond(x, t, jnp.full((n,), k, jnp.int32)), x_T=x_T)[0])}
  for w in ws:
    guided = classifier_free_guidance(cond, float(w), labels, k)
    out[f"class {label}, w = {w:g}"] = np.asarray(sampler(sample_key, guided, x_T=x_T)[0])
  return out
