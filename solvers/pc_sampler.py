"""Predictor-corrector sampler (Song et al. 2021, Sec. 4.2 and Algs. 2-3): one `lax.scan`
over the time grid, compiled once per setting (`get_pc_sampler`)."""
from __future__ import annotations

from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn
from common.errors import UserError
from solvers.correctors import AbstractCorrector, get_corrector
from solvers.diffrax_utils import check_times, stochastic_start_time
from solvers.nonfinite import check_finite_result
from solvers.predictors import AbstractPredictor, get_predictor


def get_pc_sampler(sde: AbstractSDE, shape: Sequence[int],
                   predictor: str = "reverse_diffusion", corrector: str = "langevin",
                   snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
                   denoise: bool = True, eps: float = 1e-3,
                   trajectory_times: Sequence[float] | None = None) -> Callable:
  """A predictor-corrector sampler for `sde`.

  Args:
    sde: the forward process; the grid has sde.N points.
    shape: the batch's shape (B, ...).
    predictor: a name in solvers.predictors.PREDICTORS.
    corrector: a name in solvers.correctors.CORRECTORS.
    snr: signal-to-noise ratio of the corrector.
    n_steps: corrector steps per grid point (score_sde's n_steps_each).
    probability_flow: predict with the probability-flow ODE instead of the reverse SDE.
    denoise: return the last step's mean (no final noise), as score_sde's noise_removal.
    eps: the last grid time.
    trajectory_times: optional times in [eps, T]; the sampler then also returns the
      states at the grid points nearest to them, the state at t_i being the one before
      the update at t_i (so the state at T is the prior draw).

  Returns:
    `sampler(key, model_fn) -> (x, nfe)`, or `(x, nfe, trajectory)` with trajectory of
    shape (len(trajectory_times), *shape). nfe = N (predictor evaluations + n_steps
    corrector evaluations), a Python int.

  Raises:
    UserError: for an unknown predictor or corrector name, or a combination that is
      undefined (e.g. ancestral sampling for sub-VP or rectified flow).

  From x ~ p_T, for each time t_i of the grid linspace(t_start, eps, N), N = sde.N:

      x, x_mean = corrector.update(x, t_i)      # n_steps Langevin steps at t_i
      x, x_mean = predictor.update(x, t_i)      # one reverse-time step t_i -> t_{i+1}

  and return x_mean of the last step (denoise=True) or x. t_start = T, or T - eps for a
  process whose SDE is singular at T (rectified flow). The whole loop is one `lax.scan` on
  the device, compiled once per (process, shape, predictor, corrector, ...) for any keys,
  snr and model parameters.
  """
  predictor_cls, corrector_cls, t_start, nfe = check_pc_settings(
      sde, predictor, corrector, n_steps, probability_flow, eps)
  shape = tuple(int(s) for s in shape)
  grid = np.linspace(t_start, eps, sde.N)
  times = check_times(trajectory_times, eps, sde.T)
  save_idx = None if times is None else tuple(
      int(np.argmin(np.abs(grid - s))) for s in times)
  static = dict(sde=sde, shape=shape, predictor_cls=predictor_cls,
                corrector_cls=corrector_cls, n_steps=int(n_steps),
                probability_flow=bool(probability_flow), denoise=bool(denoise),
                t_start=float(t_start), eps=float(eps), save_idx=save_idx)

  def sampler(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None):
    # x_T: the prior draw (shape `shape`), drawn with `key` when None.
    def run(m: ModelFn):
      return _pc_sample(key, m, jnp.asarray(snr, jnp.float32), x_T, **static)

    out = run(model_fn)
    check_finite_result(out if save_idx is None else out[0], run, model_fn,
                        f"PC sampler ({predictor}, {corrector})", sde.native)
    if save_idx is None:
      return out, nfe
    x, trajectory = out
    return x, nfe, trajectory

  return sampler


def check_pc_settings(sde: AbstractSDE, predictor: str, corrector: str, n_steps: int,
                      probability_flow: bool, eps: float
                      ) -> tuple[type[AbstractPredictor], type[AbstractCorrector], float, int]:
  """(predictor class, corrector class, start time, nfe) of a PC sampler's settings, for
  `get_pc_sampler` and the controllable samplers built on its loop.

  Raises UserError for an unknown name, a predictor or corrector undefined for the
  process, n_steps < 0, or eps not below the start time. nfe = N (predictor evaluations
  + n_steps corrector evaluations).
  """
  predictor_cls = get_predictor(predictor)
  corrector_cls = get_corrector(corrector)
  predictor_cls.check(sde, probability_flow)
  corrector_cls.check(sde)
  if int(n_steps) < 0:
    raise UserError(f"n_steps must be >= 0, got {n_steps}")
  t_start = stochastic_start_time(sde, eps)
  if not eps < t_start:
    raise UserError(f"need eps < start time {t_start}, got eps={eps}")
  nfe = sde.N * (predictor_cls.nfe + int(n_steps) * corrector_cls.nfe)
  return predictor_cls, corrector_cls, t_start, nfe


@eqx.filter_jit
def _pc_sample(key: jax.Array, model_fn: ModelFn, snr: jax.Array,
               x_T: jax.Array | None = None, *, sde: AbstractSDE,
               shape: tuple[int, ...], predictor_cls: type[AbstractPredictor],
               corrector_cls: type[AbstractCorrector], n_steps: int,
               probability_flow: bool, denoise: bool, t_start: float, eps: float,
               save_idx: tuple[int, ...] | None):
  """The PC loop. Module-level and filter-jitted, so equal configurations share one
  compilation; arrays in model_fn (network parameters) and snr are traced."""
  n = sde.N
  # The Euler-Maruyama step follows the grid; the discrete chains follow sde.N.
  dt = (t_start - eps) / (n - 1) if n > 1 else t_start - eps
  pred = predictor_cls(sde, model_fn, probability_flow, dt=dt)
  corr = corrector_cls(sde, model_fn, snr, n_steps)
  prior_key, loop_key = jax.random.split(key)
  x = sde.prior_sampling(prior_key, shape) if x_T is None else x_T
  timesteps = jnp.linspace(t_start, eps, n, dtype=x.dtype)
  n_saved = 0 if save_idx is None else len(save_idx)
  save_idx_arr = jnp.asarray(save_idx if save_idx else (), jnp.int32)
  trajectory = jnp.zeros((n_saved,) + shape, x.dtype)

  def step(carry, inputs):
    x, _, trajectory = carry
    i, t_i = inputs
    if n_saved:
      # Rows whose grid index is i take the state entering step i.
      hit = (save_idx_arr == i).reshape((n_saved,) + (1,) * len(shape))
      trajectory = jnp.where(hit, x[None], trajectory)
    t = jnp.full((shape[0],), t_i, x.dtype)
    step_key = jax.random.fold_in(loop_key, i)
    corr_key, pred_key = jax.random.split(step_key)
    x, x_mean = corr.update(corr_key, x, t)
    x, x_mean = pred.update(pred_key, x, t)
    return (x, x_mean, trajectory), None

  (x, x_mean, trajectory), _ = jax.lax.scan(
      step, (x, x, trajectory), (jnp.arange(n), timesteps))
  out = x_mean if denoise else x
  if save_idx is None:
    return out
  return out, trajectory
