"""Exact likelihoods from the probability-flow ODE, and bits/dim (Song et al. 2021, App. D.2).
"""
from __future__ import annotations

from typing import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn
from common.choices import check_choice
from common.errors import UserError
from solvers.diffrax_utils import get_ode_solver, ode_evals
from solvers.nonfinite import check_finite_result, stopped_error, to_float
from solvers.step_control import INITIAL_STEP_EVALS, fsal_state, initial_step
from solvers.trace_estimators import check_trace, sample_probes, value_and_divergence

ERROR_NORMS = ("batch", "per_example")
#: The adaptive solvers the likelihood accepts (diffrax names; dopri5 is scipy's RK45).
LIKELIHOOD_SOLVERS = ("bosh3", "tsit5", "dopri5", "dopri8")

# The first step is chosen by Hairer's algorithm (solvers/step_control.py) at the cost of
# two vector-field evaluations, as in scipy's solve_ivp: scale-aware, unlike a fixed first
# step. (diffrax 0.7's own dt0=None selection is skipped inside diffeqsolve, which wraps
# the term, and falls back to a fixed 0.01.)


def get_log_likelihood_fn(sde: AbstractSDE, trace: str = "exact", n_probes: int = 1,
                          solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                          eps: float = 1e-5, max_steps: int = 4096,
                          error_norm: str = "batch") -> Callable:
  """The model's log-density at the data, log p_eps(x) in nats, by the probability flow.

  Args:
    sde: the forward process.
    trace: "exact" (full Jacobian trace, D jvps per evaluation: low dimension only),
      "rademacher" or "gaussian" (Hutchinson's estimator; unbiased for log p, not for p).
    n_probes: Hutchinson probes per example, drawn once per solve and fixed along the path.
    solver: an adaptive diffrax solver by lower-case name (bosh3, tsit5, dopri5, dopri8;
      dopri5 is score_sde's scipy RK45 counterpart); config.eval.likelihood_solver.
    rtol, atol: tolerances of diffrax.PIDController on the state [x, delta_logp]. They are
      traced, so changing them does not recompile.
    eps: the start time of the integration (the density is that of p_eps, not p_0).
    max_steps: the most steps (accepted and rejected) of one solve; more raises UserError
      naming the tolerances and this limit.
    error_norm: "batch" (RMS over the whole batch's state, as score_sde) or "per_example"
      (max over examples of each example's RMS over its x and delta_logp).

  Returns:
    `fn(key, model_fn, x) -> (logp, z, nfe)`: x of shape (B, ...); logp: (B,) float32,
    log p_eps(x) = prior_logp(z) + int_eps^T div f~ dt in nats of the continuous density;
    z: x.shape, the flow's endpoint at T; nfe: int32 scalar, the number of evaluations of
    the vector field [drift, divergence] over the whole solve (each evaluates model_fn once
    plus its jvps), rejected steps and the two of the first-step selection included.
    A non-finite model output raises solvers.NonFiniteError naming the time. Under the
    caller's own jit nothing can be raised: a solve stopped by max_steps then returns NaN
    logp and z (nfe is still reported).

  The probability-flow ODE dx/dt = f~(x, t) (eq. 13; for rectified flow f~ is the velocity)
  carries p_eps onto p_T. Along a trajectory the density obeys the instantaneous
  change of variables (Chen et al. 2018, thm. 1)

      d/dt log p_t(x_t) = -div f~(x_t, t),

  so, integrating from eps up to T,

      log p_eps(x) = log p_T(z) + int_eps^T div f~(x_t, t) dt,   z = x_T,   x_eps = x.

  The model's density replaces p_T by the prior: logp = prior_logp(z) + delta_logp(T), where
  the augmented ODE

      d/dt [x_t, delta_logp_t] = [f~(x_t, t), div f~(x_t, t)],   [x_eps, 0] at t = eps,

  is solved by diffrax from eps to T on the device. The whole batch is one state, so one
  solve (one compiled while loop) serves all examples; the step-size controller's error norm
  covers the whole batch (RMS of every component, as score_sde's single scipy solve of the
  flattened batch) or, with error_norm="per_example", the worst example's RMS, so that each
  example meets the tolerances as it would alone.

  The drift and its divergence come from one linearization of the drift (solvers/
  trace_estimators.py): the exact trace (D jvps; low dimension) or Hutchinson's estimate with
  n_probes Rademacher or Gaussian probes drawn once per solve from `key` and held fixed along
  the path (FFJORD), which keeps the ODE smooth for the adaptive solver.

  Precision: JAX's default float32 matmul/conv precision on GPUs with tensor cores is TF32
  (10-bit mantissa), which gives drift errors near 1e-3 relative: far above rtol = 1e-5, and
  they accumulate in the divergence integral. The model and the drift are therefore traced
  under `jax.default_matmul_precision("float32")`, i.e. true float32 matmuls and convolutions,
  whatever the caller's default. On CPU this changes nothing.
  """
  trace = check_trace(trace)
  check_choice(str(solver).lower(), LIKELIHOOD_SOLVERS,
               "adaptive likelihood solver (config.eval.likelihood_solver)")
  ode_solver = get_ode_solver(solver)
  if trace != "exact" and int(n_probes) < 1:
    raise UserError(f"n_probes must be >= 1, got {n_probes}")
  if not 0 < eps < sde.T:
    raise UserError(f"need 0 < eps < T = {sde.T}, got eps={eps}")
  check_choice(error_norm, ERROR_NORMS, "error_norm")
  if int(max_steps) < 1:
    raise UserError(f"max_steps must be >= 1, got {max_steps}")
  static = dict(sde=sde, trace=trace, n_probes=int(n_probes), solver=ode_solver,
                eps=float(eps), max_steps=int(max_steps), error_norm=error_norm)

  def log_likelihood_fn(key: jax.Array, model_fn: ModelFn, x: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise UserError(f"x must be batched, shape (B, ...); got shape {x.shape}")
    tols = jnp.asarray(rtol, jnp.float32), jnp.asarray(atol, jnp.float32)
    logp, z, nfe, stop = _solve_augmented(key, model_fn, x, *tols, **static)
    run = lambda m: _solve_augmented(key, m, x, *tols, **static)  # noqa: E731
    what = f"likelihood ({solver})"
    if not isinstance(stop[0], jax.core.Tracer) and bool(stop[0]):
      raise stopped_error(what, to_float(stop[1]), int(max_steps),
                          "loosen the tolerances (config.eval.rtol, config.eval.atol) "
                          "or raise max_steps", run, model_fn,
                          sde.native, descending=False)
    check_finite_result((logp, z), run, model_fn, what, sde.native, descending=False)
    return logp, z, nfe

  return log_likelihood_fn


def _error_norm(kind: str, batch: int) -> Callable:
  """The controller's norm of a scaled error (x: (B, ...), delta_logp: (B,)).

  "batch": RMS over every component of the state. "per_example": max over examples of the
  RMS over one example's D + 1 components.
  """

  def norm(tree) -> jax.Array:
    x, delta = tree
    dim = int(np.prod(x.shape[1:]))
    sq = jnp.sum(x.reshape(batch, -1) ** 2, axis=1) + delta**2
    if kind == "per_example":
      return jnp.sqrt(jnp.max(sq) / (dim + 1))
    return jnp.sqrt(jnp.sum(sq) / (batch * (dim + 1)))

  return norm


@eqx.filter_jit
def _solve_augmented(key: jax.Array, model_fn: ModelFn, x: jax.Array, rtol: jax.Array,
                     atol: jax.Array, *, sde: AbstractSDE, trace: str, n_probes: int,
                     solver: diffrax.AbstractSolver, eps: float, max_steps: int,
                     error_norm: str):
  """One compiled solve per (static configuration, x's shape); arrays traced."""
  batch = x.shape[0]
  probes = sample_probes(key, trace, n_probes, x.shape, x.dtype)

  def vector_field(t, state, args):
    y, _ = state
    fn, v = args
    tt = jnp.full((batch,), t, y.dtype)
    drift_fn = lambda u: sde.reverse(fn, probability_flow=True).sde(u, tt)[0]
    # Trace-time setting: every matmul/conv of the model gets float32 precision (see
    # get_log_likelihood_fn).
    with jax.default_matmul_precision("float32"):
      drift, div = value_and_divergence(drift_fn, y, v)
    return drift, div

  norm = _error_norm(error_norm, batch)
  y0 = (x, jnp.zeros((batch,), x.dtype))
  args = (model_fn, probes)
  term = diffrax.ODETerm(vector_field)
  # The method's order, as Hairer's book (exponent 1/6 for dopri5; scipy's is 1/5).
  dt0, f0 = initial_step(vector_field, eps, sde.T, y0, args, rtol, atol, norm,
                         solver.order(term))
  solver_state = fsal_state(solver, term, eps, sde.T, y0, args, f0)
  sol = diffrax.diffeqsolve(
      term, solver, t0=eps, t1=sde.T, dt0=dt0, y0=y0, args=args,
      solver_state=solver_state, saveat=diffrax.SaveAt(t1=True),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=norm),
      max_steps=max_steps, throw=False)
  stopped = sol.result != diffrax.RESULTS.successful
  # A solve cut off by max_steps holds a state short of T, whose logp looks plausible (on
  # an untrained network it is close to prior_logp(x)); under the caller's jit, where the
  # stop cannot be raised, NaN says so.
  z = jnp.where(stopped, jnp.nan, sol.ys[0][-1])
  delta_logp = sol.ys[1][-1]
  logp = jnp.where(stopped, jnp.nan, sde.prior_logp(sol.ys[0][-1]) + delta_logp)
  per_step, initial = ode_evals(solver)
  if solver_state is not None:
    initial = 0
  nfe = (INITIAL_STEP_EVALS + initial
         + per_step * jnp.asarray(sol.stats["num_steps"], jnp.int32))
  return logp, z, nfe, (stopped, sol.ts[-1])


def bpd_offset(inverse_scaler: Callable) -> float:
  """score_sde's bits/dim offset, 7 - inverse_scaler(-1): 8 for data in [0, 1], 7 for
  data centered to [-1, 1] (see get_likelihood_fn)."""
  return 7.0 - float(inverse_scaler(-1.0))


def bits_per_dim(logp: jax.Array, shape: tuple[int, ...], inverse_scaler: Callable
                 ) -> jax.Array:
  """bpd = -logp / (D ln 2) + 7 - inverse_scaler(-1): (B,), D = prod(shape[1:]).

  logp: (B,) nats of the continuous density of the model-space data.
  """
  dim = int(np.prod(shape[1:]))
  return -logp / (dim * np.log(2.0)) + bpd_offset(inverse_scaler)


def _affine_scaler(inverse_scaler: Callable) -> Callable:
  """The inverse of an affine inverse_scaler (score_sde's scalers are affine)."""
  lo, hi = float(inverse_scaler(-1.0)), float(inverse_scaler(1.0))
  mid, half = 0.5 * (hi + lo), 0.5 * (hi - lo)
  probe = float(inverse_scaler(0.5))
  if half == 0.0 or abs(probe - (mid + 0.5 * half)) > 1e-6 * max(1.0, abs(half)):
    raise UserError("inverse_scaler is not affine; pass scaler= to get_likelihood_fn")
  return lambda y: (y - mid) / half


@eqx.filter_jit
def uniform_dequantize(key: jax.Array, x: jax.Array, scaler: Callable,
                       inverse_scaler: Callable) -> jax.Array:
  """score_sde's uniform dequantization, in model space: x.shape.

  y = inverse_scaler(x) holds 8-bit data k / 255 in [0, 1]; y <- (k + u) / 256 with
  u ~ U[0, 1) elementwise puts each value uniformly in its bin [k/256, (k+1)/256); the
  result goes back through the scaler. k = round(255 y), so that the float rounding of
  the scalers cannot move a value into the next bin; u is capped at 1 - 2^-16, below
  which k + u does not round up to k + 1 in float32 (as data.transforms.dequantize).
  Data that are already dequantized must not come here: they would be dequantized twice.
  """
  y = inverse_scaler(x)
  k = jnp.clip(jnp.round(255.0 * y), 0.0, 255.0)
  u = jnp.minimum(jax.random.uniform(key, x.shape, x.dtype), 1.0 - 2.0**-16)
  return scaler((k + u) / 256.0)


def get_likelihood_fn(sde: AbstractSDE, inverse_scaler: Callable, trace: str = "rademacher",
                      n_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                      eps: float = 1e-5, dequantize: bool = False, solver: str = "tsit5",
                      max_steps: int = 4096, scaler: Callable | None = None,
                      error_norm: str = "batch") -> Callable:
  """Bits/dim of data under the probability-flow model, with score_sde's convention.

      bpd = -log p_eps(x) / (D ln 2) + 7 - inverse_scaler(-1),   D = prod(x.shape[1:]).

  Why the offset: data are 8-bit values k / 255 mapped to [0, 1] and, by the data scaler,
  to model space. A continuous density p on [0, 1]^D gives a bin of width 1/256 per
  dimension (the bins of the uniform dequantization below) the probability
  P ~ p / 256^D, so -log2 P / D = -log2 p / D + 8: the offset is 8 = 7 - (-1) for
  uncentered data (inverse_scaler the identity, inverse_scaler(-1) = -1). For data
  centered to [-1, 1] the model's density is q = p / 2^D, so -log2 p / D =
  -log2 q / D - 1 and the offset is 7 = 7 - 0 (inverse_scaler(y) = (y + 1) / 2). The
  formula is score_sde's convention for these two scalers, not a general change of
  variables.

  With dequantize=True, each call first adds uniform noise within each data bin (see
  uniform_dequantize): the bpd is then, in expectation over the noise, an upper bound on
  the bits/dim of the discrete data under the model's binned density (Theis et al. 2016).
  Without it, the data sit on a grid and a continuous density
  may concentrate on the grid points: densities above 1 per unit of [0, 1]^D are
  allowed (a uniform density on [0, 1/2]^D is 2^D), so -log2 p / D, and the bpd, can be
  arbitrarily low or negative and are not codelengths.

  Args:
    sde: the forward process.
    inverse_scaler: model space -> data space in [0, 1] (data/scaler.py).
    trace, n_probes, rtol, atol, eps, solver, max_steps, error_norm: as in
      get_log_likelihood_fn (Hutchinson's Rademacher estimator by default, as score_sde).
    dequantize: add uniform dequantization noise to x before the solve.
    scaler: data space -> model space, for dequantization; by default the inverse of the
      (affine) inverse_scaler.

  Returns:
    `fn(key, model_fn, x) -> (bpd, z, nfe)`: x in model space, shape (B, ...); bpd: (B,)
    bits/dim; z and nfe as in get_log_likelihood_fn. `key` is split into the
    dequantization key and the probe key.
  """
  log_likelihood_fn = get_log_likelihood_fn(
      sde, trace=trace, n_probes=n_probes, solver=solver, rtol=rtol, atol=atol, eps=eps,
      max_steps=max_steps, error_norm=error_norm)
  offset = bpd_offset(inverse_scaler)  # Fails early for a scaler that rejects floats.
  forward_scaler = None
  if dequantize:
    forward_scaler = scaler if scaler is not None else _affine_scaler(inverse_scaler)

  def likelihood_fn(key: jax.Array, model_fn: ModelFn, x: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = jnp.asarray(x)
    dequant_key, probe_key = jax.random.split(key)
    if dequantize:
      x = uniform_dequantize(dequant_key, x, forward_scaler, inverse_scaler)
    logp, z, nfe = log_likelihood_fn(probe_key, model_fn, x)
    dim = int(np.prod(x.shape[1:]))
    return -logp / (dim * np.log(2.0)) + offset, z, nfe

  return likelihood_fn
