"""Controllable generation by replacing the known part (inpainting, colorization) in the
predictor-corrector sampler and in the fast samplers.
"""
from __future__ import annotations

from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn, batch_mul
from common.choices import check_choice
from common.errors import UserError
from solvers.correctors import AbstractCorrector
from solvers.nonfinite import check_finite_result
from solvers.pc_sampler import check_pc_settings
from solvers.predictors import AbstractPredictor

# score_sde's orthonormal colour basis M (decouple(x) = x @ M over the channel axis): its
# columns are (1, 1, 1)/sqrt(3) (the gray direction, so channel 0 of x @ M is sqrt(3) times
# the channel mean), (-2, 1, 1)/sqrt(6) and (0, 1, -1)/sqrt(2). score_sde stores it
# rounded to float32; this is the same matrix in closed form, and its inverse is M^T.
COLOR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
                        np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)], axis=1)


def replace_known(key: jax.Array | None, sde: AbstractSDE, x: jax.Array, t: jax.Array,
                  data: jax.Array, mask: jax.Array) -> jax.Array:
  """Replaces the known part of x by the data re-noised to time t (Song et al. 2021,
  App. I.2).

      x <- x * (1 - mask) + (alpha(t) data + sigma(t) z) * mask,   z ~ N(0, I),

  with (alpha, sigma) = sde.alpha_sigma(t), i.e. a draw from the forward transition
  p_0t(x_t | x_0 = data). With key=None, the noise-free mean alpha(t) data is used (what
  a sampler's `x_mean` takes). This is the one replacement rule of the PC inpainter and
  colorizer, written so that other samplers (solvers/fast/) can call it after each step.

  Args:
    key: a PRNG key for z, or None for no noise.
    sde: the process.
    x: the current state, (B, ...).
    t: the time the state is at, (B,).
    data: the observation, x.shape.
    mask: 1 where data is known, 0 where it is to be generated; broadcasts to x.shape.

  Returns:
    x with its known part replaced, x.shape.
  """
  alpha, sigma = sde.alpha_sigma(t)
  known = batch_mul(alpha, data)
  if key is not None:
    known = known + batch_mul(sigma, jax.random.normal(key, x.shape, x.dtype))
  return x * (1.0 - mask) + known * mask


def _check_like(name: str, value, shape: tuple[int, ...], what: str) -> None:
  if tuple(np.shape(value)) != shape:
    raise UserError(f"{name} has shape {tuple(np.shape(value))}, but {what} "
                    f"{shape}")


def _basis_maps(basis: jax.Array | None) -> tuple[Callable, Callable]:
  """(to_basis, from_basis) for an orthonormal (C, C) colour basis acting on the last
  axis (the identity twice when basis is None)."""
  if basis is None:
    return (lambda v: v), (lambda v: v)
  # Orthonormal: the inverse is the transpose.
  return (lambda v: v @ basis), (lambda v: v @ basis.T)


#: The replacement rules of the PC inpainter and colorizer (`get_inpainter`).
RULES = ("ours", "score_sde")


def _build(sde: AbstractSDE, predictor: str, corrector: str, n_steps: int,
           probability_flow: bool, eps: float, denoise: bool, rule: str
           ) -> tuple[dict, int]:
  """Checks the settings as `get_pc_sampler` does, eps > 0 and the rule; returns the
  static settings and nfe."""
  check_choice(rule, RULES, "replacement rule (config.sampling.replacement)")
  predictor_cls, corrector_cls, t_start, nfe = check_pc_settings(
      sde, predictor, corrector, n_steps, probability_flow, eps)
  if not 0 < eps < t_start:
    raise UserError(f"need 0 < eps < start time {t_start}, got eps={eps}")
  static = dict(sde=sde, predictor_cls=predictor_cls, corrector_cls=corrector_cls,
                n_steps=int(n_steps), probability_flow=bool(probability_flow),
                denoise=bool(denoise), t_start=float(t_start), eps=float(eps), rule=rule)
  return static, nfe


def get_inpainter(sde: AbstractSDE, shape: Sequence[int],
                  predictor: str = "reverse_diffusion", corrector: str = "langevin",
                  snr: float = 0.16, n_steps: int = 1, eps: float = 1e-3,
                  denoise: bool = True, probability_flow: bool = False,
                  rule: str = "ours") -> Callable:
  """score_sde's PC inpainter (`get_pc_inpainter`) for any process; see below.

  Args:
    sde: the forward process; the grid is linspace(t_start, eps, sde.N), t_start = T (or
      T - eps where the SDE is singular at T, as for rectified flow).
    shape: the batch's shape (B, ...); data and mask must have it.
    predictor, corrector, snr, n_steps, probability_flow: as in `get_pc_sampler`.
    eps: the last grid time.
    denoise: return the last predictor step's mean (no final noise) on the unknown part.
    rule: "ours" (default) or "score_sde" (its rule as written; see below).

  Returns:
    `inpaint(key, model_fn, data, mask) -> (x, nfe)`: data and mask of `shape` (mask 1 =
    known, 0 = generate), x of `shape` with x = data where mask = 1, and nfe the number of
    model evaluations, sde.N * (1 + n_steps) for the default predictor and corrector, as a
    Python int. One `lax.scan`, compiled once per configuration and shape.

  Raises:
    UserError: (when called) data or mask of another shape than `shape`.
    ValueError: unknown predictor or corrector, or one undefined for the process.

  Song et al. 2021, Sec. 5 and App. I.2 (score_sde's `controllable_generation.py`,
  `get_pc_inpainter` and `get_pc_colorizer`). Given data y observed where mask = 1, the PC
  sampler runs as in `solvers.pc_sampler`, and after every corrector and every predictor
  update the known part of x is replaced by a fresh re-noised copy of the data at the time
  the state is at, drawn from the forward transition

      x_known <- alpha(t) y + sigma(t) z,   z ~ N(0, I)         (`replace_known`)

  with (alpha, sigma) from the process (`sde.alpha_sigma`), so the same code serves VP,
  sub-VP, VE and rectified flow (RF through its equivalent SDE, whose predictors and
  correctors are those of `solvers.predictors` / `solvers.correctors`). Colorization is
  inpainting in score_sde's orthonormal colour basis (`COLOR_BASIS`), where the gray image is
  the first channel and the two chroma channels are unknown.

  Differences from score_sde's JAX `controllable_generation.py` (commit 0acb9e0), each a fix:

  1. `x_mean` is built from the wrong array there: after replacing the known part of `x`,
     it sets `x_mean = x * (1 - mask) + masked_data_mean * mask`, i.e. from the *noisy,
     already replaced* `x`, not from the update's `x_mean`. So the unknown part of the
     "denoised" output still carries the last step's noise, and `denoise=True` does nothing
     there (the PyTorch port has the same line). Here `x_mean` keeps the update's noise-free
     mean on the unknown part.
  2. Random keys: the brief for this module says the original reuses one key across the mask
     and the noise draws. Reading commit 0acb9e0, the library functions themselves split
     their keys correctly (each update gets `step_rng`, the re-noising the remainder); the
     masks there come from the caller. Here every draw has its own key derived from the one
     `key` argument (`fold_in` per step, then `split` four ways), and callers that draw a
     random mask must do so from a key split off *before* calling the inpainter, never
     from the same key.
  3. The colorizer's initial state multiplies the prior draw by `1 - mask` in pixel space
     and only then changes basis (`decouple(prior * (1 - mask))`), though the mask lives in
     the decoupled basis: the initial chroma noise is then neither standard nor independent
     of the gray channel. Here the mask is applied in the decoupled basis.
  4. After the predictor moves x from grid time t_i to t_{i+1}, score_sde re-noises the known
     part at t_i, one step behind the state; here it is re-noised at t_{i+1}, and after the
     last predictor step the known part is the data itself (so the output agrees with the
     observation exactly). The initial known part is the data re-noised at the start time
     (score_sde puts the clean data there, which is not a draw from p_T).

  `rule="score_sde"` runs score_sde's rule as written instead (1, 3 and 4 undone: re-noising
  at t_i, x_mean from the replaced x, the clean data as the initial known part, the
  colorizer's initial mask in pixel space), for comparison with the paper. Replacement is
  not exact posterior sampling under either rule (it uses grad log p_t(x_unknown | x_known =
  re-noised y), not grad log p_t(x_unknown | y)); bench/controllable_posterior.py measures
  both against the exact Gaussian posterior (BENCHMARKS.md).
  """
  shape = tuple(int(s) for s in shape)
  static, nfe = _build(sde, predictor, corrector, n_steps, probability_flow, eps,
                       denoise, rule)

  def inpaint(key: jax.Array, model_fn: ModelFn, data: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, int]:
    _check_like("data", data, shape, "the inpainter was built for shape")
    _check_like("mask", mask, shape, "it must have the data's shape")
    args = (jnp.asarray(data, jnp.float32), jnp.asarray(mask, jnp.float32),
            jnp.asarray(snr, jnp.float32), None)
    x = _pc_replace(key, model_fn, *args, **static)
    check_finite_result(x, lambda m: _pc_replace(key, m, *args, **static), model_fn,
                        "PC inpainter", sde.native)
    return x, nfe

  return inpaint


def _color_setup(shape: Sequence[int]) -> tuple[tuple[int, ...], jax.Array, np.ndarray]:
  """(shape, COLOR_BASIS, mask) of a colorizer: the mask marks the gray coordinate (the
  first of the orthonormal colour basis) as known. UserError unless shape is
  (B, H, W, 3)."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != 4 or shape[-1] != 3:
    raise UserError(f"colorization needs RGB images of shape (B, H, W, 3); got shape "
                    f"{shape}" + (f" with {shape[-1]} channel(s)" if shape else ""))
  mask = np.zeros(shape, np.float32)
  mask[..., 0] = 1.0
  return shape, jnp.asarray(COLOR_BASIS, jnp.float32), mask


def get_colorizer(sde: AbstractSDE, shape: Sequence[int],
                  predictor: str = "reverse_diffusion", corrector: str = "langevin",
                  snr: float = 0.16, n_steps: int = 1, eps: float = 1e-3,
                  denoise: bool = True, probability_flow: bool = False,
                  rule: str = "ours") -> Callable:
  """score_sde's PC colorizer (`get_pc_colorizer`) for any process.

  In the orthonormal basis `COLOR_BASIS` (x -> x @ M on the channel axis), channel 0 is
  the gray level (sqrt(3) times the channel mean) and channels 1-2 the colour; colorization
  is inpainting there with channel 0 known. Because M is orthonormal, standard noise stays
  standard in that basis, so the re-noising rule is unchanged.

  Args: as `get_inpainter`; shape is (B, H, W, 3).

  Returns:
    `colorize(key, model_fn, gray) -> (x, nfe)`: gray of `shape` (equal channels; only
    their mean is used), x of `shape` with the same channel mean as gray.

  Raises:
    UserError: shape without 3 channels (e.g. one-channel data), or gray of another shape.
  """
  shape, basis, mask = _color_setup(shape)
  static, nfe = _build(sde, predictor, corrector, n_steps, probability_flow, eps,
                       denoise, rule)

  def colorize(key: jax.Array, model_fn: ModelFn, gray: jax.Array
               ) -> tuple[jax.Array, int]:
    _check_like("gray", gray, shape, "the colorizer was built for shape")
    gray = jnp.asarray(gray, jnp.float32)
    args = (gray @ basis, jnp.asarray(mask), jnp.asarray(snr, jnp.float32), basis)
    x = _pc_replace(key, model_fn, *args, **static)
    check_finite_result(x, lambda m: _pc_replace(key, m, *args, **static), model_fn,
                        "PC colorizer", sde.native)
    return x, nfe

  return colorize


@eqx.filter_jit
def _pc_replace(key: jax.Array, model_fn: ModelFn, data: jax.Array, mask: jax.Array,
                snr: jax.Array, basis: jax.Array | None, *, sde: AbstractSDE,
                predictor_cls: type[AbstractPredictor],
                corrector_cls: type[AbstractCorrector], n_steps: int,
                probability_flow: bool, denoise: bool, t_start: float, eps: float,
                rule: str) -> jax.Array:
  """The PC loop with replacement. data and mask are in the basis (x @ basis) when basis
  is given (an orthonormal (C, C) matrix acting on the last axis), else in pixel space."""
  shape = data.shape
  n = sde.N
  to_basis, from_basis = _basis_maps(basis)

  def replace(k, x, t):
    return from_basis(replace_known(k, sde, to_basis(x), t, data, mask))

  dt = (t_start - eps) / (n - 1) if n > 1 else t_start - eps
  pred = predictor_cls(sde, model_fn, probability_flow, dt=dt)
  corr = corrector_cls(sde, model_fn, snr, n_steps)
  prior_key, init_key, loop_key = jax.random.split(key, 3)
  grid = jnp.linspace(t_start, eps, n, dtype=data.dtype)
  t0 = jnp.full((shape[0],), t_start, data.dtype)
  prior = sde.prior_sampling(prior_key, shape)
  if rule == "score_sde":
    return _pc_replace_score_sde(init_key, loop_key, data, mask, prior, grid, pred, corr,
                                 sde, to_basis, from_basis, denoise)
  x = replace(init_key, prior, t0)
  # The time the predictor at grid point i moves the state to; after the last one the
  # known part is the data itself (`last` below), whatever this entry holds.
  next_times = jnp.concatenate([grid[1:], grid[-1:]])

  def step(carry, inputs):
    x, _ = carry
    i, t_i, t_next = inputs
    t = jnp.full((shape[0],), t_i, x.dtype)
    t_after = jnp.full((shape[0],), t_next, x.dtype)
    corr_key, corr_noise_key, pred_key, pred_noise_key = jax.random.split(
        jax.random.fold_in(loop_key, i), 4)
    x, _ = corr.update(corr_key, x, t)
    x = replace(corr_noise_key, x, t)
    x, x_mean = pred.update(pred_key, x, t)
    last = i == n - 1
    x = jnp.where(last, _with_data(x, data, mask, to_basis, from_basis),
                  replace(pred_noise_key, x, t_after))
    x_mean = jnp.where(last, _with_data(x_mean, data, mask, to_basis, from_basis),
                       replace(None, x_mean, t_after))
    return (x, x_mean), None

  (x, x_mean), _ = jax.lax.scan(
      step, (x, x), (jnp.arange(n), grid, next_times))
  return x_mean if denoise else x


def _pc_replace_score_sde(key, loop_key, data, mask, prior, grid, pred, corr, sde,
                          to_basis, from_basis, denoise):
  """score_sde's `pc_inpainter` / `pc_colorizer` loop as written: start from the clean
  data's known part and the prior masked in pixel space; after each update at grid time
  t_i, re-noise the known part at t_i and set x_mean from the replaced x."""
  del key
  x = from_basis(data * mask + to_basis(prior * (1.0 - mask)))

  def replace(k, x, t):
    x = from_basis(replace_known(k, sde, to_basis(x), t, data, mask))
    mean = replace_known(None, sde, to_basis(x), t, data, mask)
    return x, from_basis(mean)

  def step(carry, inputs):
    x, _ = carry
    i, t_i = inputs
    t = jnp.full((x.shape[0],), t_i, x.dtype)
    corr_key, corr_noise_key, pred_key, pred_noise_key = jax.random.split(
        jax.random.fold_in(loop_key, i), 4)
    x, _ = corr.update(corr_key, x, t)
    x, _ = replace(corr_noise_key, x, t)
    x, _ = pred.update(pred_key, x, t)
    x, x_mean = replace(pred_noise_key, x, t)
    return (x, x_mean), None

  (x, x_mean), _ = jax.lax.scan(step, (x, x), (jnp.arange(grid.shape[0]), grid))
  return x_mean if denoise else x


def _with_data(x, data, mask, to_basis, from_basis):
  """x with its known part set to the data exactly."""
  return from_basis(to_basis(x) * (1.0 - mask) + data * mask)


# ---- the same rule inside the fast ODE samplers (solvers/fast/) -----------------------
#
# The fast samplers integrate the deterministic probability-flow ODE with a few large,
# multistep steps. There the known part is re-noised with ONE noise draw z, fixed for the
# whole solve: after every step, at the step's new time t,
#
#     x_known <- alpha(t) y + sigma(t) z_known,
#
# and x_T's known part is the same expression at T. Why not a fresh z each step (as the PC
# sampler does): for fixed z, alpha(t) y + sigma(t) z is the exact probability-flow
# trajectory of the conditional path given x_0 = y (DDIM's x_t given x_0 and its noise),
# smooth in t, so the state the solver extrapolates from, and the model outputs in its
# multistep history, come from one continuous path; fresh noise would jump the known part
# by O(sigma(t)) at every step, which a deterministic few-step solver cannot absorb. The
# sample stays random through x_T (the unknown part) and z. After the last step the known
# part is set to the data itself (so the output equals the observation exactly).


def get_fast_inpainter(sde: AbstractSDE, shape: Sequence[int], method: str = "dpm_solver++",
                       steps: int = 20, **kwargs) -> Callable:
  """Inpainting with a fast probability-flow ODE sampler (`solvers.get_fast_sampler`) and
  the "replace the known part" rule with fixed noise (see the comment above).

  Args:
    sde: the forward process.
    shape: the batch's shape (B, ...); data and mask must have it.
    method, steps, **kwargs: as `get_fast_sampler` (order, schedule, eps, ...).

  Returns:
    `inpaint(key, model_fn, data, mask) -> (x, nfe)`: data and mask of `shape` (1 = known,
    0 = generate), x of `shape` with x = data where mask = 1, nfe the sampler's model
    evaluations (a Python int; = steps for DPM-Solver++ 2M). One compile per configuration.

  Raises:
    UserError: (when built) what `get_fast_sampler` rejects; (when called) data or mask of
      another shape than `shape`.
  """
  from solvers.fast import get_fast_sampler  # solvers.fast does not import this module.
  shape = tuple(int(s) for s in shape)
  sampler = get_fast_sampler(sde, shape, method, steps, **kwargs)
  solver, nfe = sampler.solver, sampler.solver.nfe

  def inpaint(key: jax.Array, model_fn: ModelFn, data: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, int]:
    _check_like("data", data, shape, "the inpainter was built for shape")
    _check_like("mask", mask, shape, "it must have the data's shape")
    args = (jnp.asarray(data, jnp.float32), jnp.asarray(mask, jnp.float32), None)
    x = _fast_replace(key, model_fn, *args, solver=solver, sde=sde)
    check_finite_result(x, lambda m: _fast_replace(key, m, *args, solver=solver, sde=sde),
                        model_fn, f"fast inpainter {method}", sde.native)
    return x, nfe

  inpaint.solver = solver
  return inpaint


def get_fast_colorizer(sde: AbstractSDE, shape: Sequence[int], method: str = "dpm_solver++",
                       steps: int = 20, **kwargs) -> Callable:
  """Colorization with a fast sampler: `get_fast_inpainter` in the orthonormal colour basis
  `COLOR_BASIS` with the gray channel known (as `get_colorizer`).

  Args: as `get_fast_inpainter`; shape is (B, H, W, 3).

  Returns:
    `colorize(key, model_fn, gray) -> (x, nfe)`: gray of `shape` (equal channels; only
    their mean is used), x of `shape` with the same channel mean as gray.

  Raises:
    UserError: shape without 3 channels, gray of another shape, or what
      `get_fast_sampler` rejects.
  """
  from solvers.fast import get_fast_sampler
  shape, basis, mask = _color_setup(shape)
  sampler = get_fast_sampler(sde, shape, method, steps, **kwargs)
  solver, nfe = sampler.solver, sampler.solver.nfe

  def colorize(key: jax.Array, model_fn: ModelFn, gray: jax.Array
               ) -> tuple[jax.Array, int]:
    _check_like("gray", gray, shape, "the colorizer was built for shape")
    gray = jnp.asarray(gray, jnp.float32)
    args = (gray @ basis, jnp.asarray(mask), basis)
    x = _fast_replace(key, model_fn, *args, solver=solver, sde=sde)
    check_finite_result(x, lambda m: _fast_replace(key, m, *args, solver=solver, sde=sde),
                        model_fn, f"fast colorizer {method}", sde.native)
    return x, nfe

  colorize.solver = solver
  return colorize


@eqx.filter_jit
def _fast_replace(key: jax.Array, model_fn: ModelFn, data: jax.Array, mask: jax.Array,
                  basis: jax.Array | None, *, solver, sde: AbstractSDE) -> jax.Array:
  """The fast sampler with the fixed-noise replacement hook. data and mask are in the
  basis (x @ basis) when basis is given, else in pixel space."""
  from solvers.fast.base import make_predict
  shape = data.shape
  to_basis, from_basis = _basis_maps(basis)
  prior_key, z_key, loop_key = jax.random.split(key, 3)
  z = jax.random.normal(z_key, shape, data.dtype)  # The known part's noise, fixed.

  def replace(x, t):
    # replace_known's noise-free rule (known part alpha(t) y) plus sigma(t) z_known.
    tt = jnp.full((shape[0],), t, x.dtype)
    _, sigma = sde.alpha_sigma(tt)
    xb = replace_known(None, sde, to_basis(x), tt, data, mask)
    return from_basis(xb + batch_mul(sigma, z) * mask)

  t_start = jnp.asarray(sde.T, data.dtype)
  x = replace(sde.prior_sampling(prior_key, shape), t_start)
  x = solver.sample(loop_key, sde, make_predict(sde, model_fn, shape[0]), x, replace)
  return _with_data(x, data, mask, to_basis, from_basis)
