"""Probability-flow ODE sampler through diffrax (Song et al. 2021, Sec. 4.3, eq. 13).
"""
from __future__ import annotations

from typing import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE, ModelFn
from common.choices import check_choice
from common.errors import UserError
from solvers.diffrax_utils import (DENOISE_STEPS, check_times, denoise_step_fn,
                                   get_ode_solver, ode_evals, to_original_order)
from solvers.nonfinite import check_finite_result, stopped_error, to_float
from solvers.fixed_step import (FIXED_STEP_METHODS, fixed_step_flow, interpolate_path,
                                uniform_grid)
from solvers.step_control import (INITIAL_STEP_EVALS, ScipyStepController, fsal_state,
                                  initial_step, rms_norm)


def get_ode_sampler(sde: AbstractSDE, shape: Sequence[int], solver: str = "tsit5",
                    rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
                    denoise: bool = False, num_steps: int | None = None,
                    trajectory_times: Sequence[float] | None = None,
                    max_steps: int = 4096, denoise_step: str = "tweedie") -> Callable:
  """A probability-flow ODE sampler for `sde`.

  Args:
    sde: the forward process.
    shape: the batch's shape (B, ...).
    solver: a diffrax solver by lower-case name: euler, heun, midpoint, ralston, bosh3,
      tsit5, dopri5, dopri8.
    rtol, atol: relative and absolute tolerances of the adaptive steps (see below).
    eps: the end time of the integration.
    denoise: finish with one noise-removing step at eps (one more model evaluation,
      counted in nfe).
    num_steps: if given, fixed steps dt = (T - eps) / num_steps instead of adaptive ones.
    trajectory_times: optional times in [eps, T] at which the states are also returned.
    max_steps: the most steps (accepted and rejected) an adaptive solve may take; a solve
      that needs more raises UserError naming the tolerances and this limit.
    denoise_step: 'tweedie' or 'reverse_diffusion' (score_sde's ODE sampler), see above.

  Returns:
    `sampler(key, model_fn) -> (x, nfe)`, or `(x, nfe, trajectory)` with trajectory of
    shape (len(trajectory_times), *shape) in the given order; nfe is an int32 array
    counting model evaluations, rejected steps included.

  Raises (from the sampler): solvers.NonFiniteError, naming the time, when the model's
  output is not finite; UserError when an adaptive solve needs more than max_steps.

  Draws x_T ~ p_T and integrates

      dx/dt = f(x, t) - g(t)^2 / 2 * score(x, t)

  from t = T down to eps (for rectified flow the right-hand side is the velocity itself, and
  the integration starts at T exactly). Fixed steps take num_steps equal steps (Euler and
  Heun through the project's one fixed-step flow, solvers/fixed_step.py; the other diffrax
  solvers through diffrax). Tolerances are traced arrays, so changing them does not
  recompile.

  Adaptive steps are controlled as in score_sde's `get_ode_sampler`, scipy's solve_ivp
  (RK45) on the flattened batch (solvers/step_control.py): the first step by Hairer's rule
  from two evaluations (scipy's `select_initial_step`, its trial step capped at T - eps);
  then an I-controller on the RMS over the whole batch of the error scaled by
  atol + rtol max(|x_old|, |x_new|), next step h * clip(0.9 err^(-1/5), 0.2, 10) for
  dopri5 and tsit5 (accepted steps may shrink), no growth right after a rejection. nfe
  counts as scipy's nfev: 2 for the first step, then 6 per step attempt for dopri5 and
  tsit5 (FSAL: the first stage is the first-step selection's f(T, x_T)).

  Still unlike score_sde: diffrax's dopri5 has RK45's fifth-order solution but estimates
  the error with Shampine's embedded weights, not Dormand and Prince's, so its steps
  differ from scipy's after the first (by up to ~10% on Gaussian data, with equal step
  counts; on a stiffer test drift dopri5 took 1 to 3 fewer steps than scipy's 7 to 22;
  with scipy's weights the steps agree to float32 round-off, tests/test_ode_sampler.py);
  the state is float32 on the device, not float64 on the host; there is no minimum step
  (scipy fails below 10 ulp of t; here max_steps stops the solve); and a non-finite model
  output raises NonFiniteError rather than shrinking the step.

  With denoise=True the solve ends with one noise-removing step at eps: score_sde's
  `denoise_update_fn` (denoise_step="reverse_diffusion": the reverse-diffusion predictor's
  noise-free mean x - f + G^2 score at eps, i.e. the last step of its chain; what
  `get_sampling_fn` uses for config.sampling.noise_removal) or Tweedie's E[x_0 | x_eps]
  (denoise_step="tweedie", the default here).
  """
  ode_solver = get_ode_solver(solver)  # Raises UserError for an unknown name.
  if num_steps is None and not isinstance(ode_solver, diffrax.AbstractAdaptiveSolver):
    raise UserError(f"ODE solver {solver!r} has no error estimate for adaptive steps; "
                     f"give num_steps for fixed steps")
  if num_steps is not None and int(num_steps) < 1:
    raise UserError(f"num_steps must be >= 1 or None, got {num_steps}")
  if not 0 < eps < sde.T:
    raise UserError(f"need 0 < eps < T = {sde.T}, got eps={eps}")
  check_choice(str(denoise_step), DENOISE_STEPS,
               "denoise_step (config.sampling.ode_denoise_step)")
  times = check_times(trajectory_times, eps, sde.T)
  if num_steps is not None and str(solver).lower() in FIXED_STEP_METHODS:
    return _fixed_step_sampler(sde, tuple(int(s) for s in shape), str(solver).lower(),
                               float(eps), bool(denoise), str(denoise_step),
                               int(num_steps), times)
  static = dict(sde=sde, shape=tuple(int(s) for s in shape), solver=ode_solver,
                eps=float(eps), denoise=bool(denoise), denoise_step=str(denoise_step),
                num_steps=None if num_steps is None else int(num_steps),
                max_steps=int(max_steps), times=times)

  def sampler(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None):
    # x_T: the prior draw (shape `shape`), drawn with `key` when None.
    tols = jnp.asarray(rtol, jnp.float32), jnp.asarray(atol, jnp.float32)

    def run(m: ModelFn, throw: bool = False):
      return _solve_ode(key, m, *tols, x_T, throw=throw, **static)

    try:
      x, nfe, trajectory, stop = run(model_fn, throw=True)
    except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError):
      # The solve stopped early (max_steps; a non-finite model output fails every step):
      # the same solve without throwing says where and why.
      x, _, _, stop = run(model_fn)
      _check_solve(x, stop, run, model_fn, sde, max_steps)
      raise
    _check_solve(x, stop, run, model_fn, sde, max_steps)
    if times is None:
      return x, nfe
    return x, nfe, trajectory

  return sampler


def _fixed_step_sampler(sde: AbstractSDE, shape: tuple[int, ...], method: str, eps: float,
                        denoise: bool, denoise_step: str, num_steps: int,
                        times: tuple[float, ...] | None) -> Callable:
  """Euler or Heun with num_steps equal steps from T to eps (solvers.fixed_step)."""
  static = dict(sde=sde, shape=shape, method=method, eps=eps, denoise=denoise,
                denoise_step=denoise_step, grid=tuple(uniform_grid(sde.T, eps, num_steps)),
                times=times)
  nfe = jnp.asarray(num_steps * FIXED_STEP_METHODS[method] + int(denoise), jnp.int32)

  def sampler(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None):
    x, trajectory = _solve_fixed(key, model_fn, x_T, **static)
    check_finite_result(x, lambda m: _solve_fixed(key, m, x_T, **static), model_fn,
                        f"ODE sampler ({method}, {num_steps} steps)", sde.native)
    if times is None:
      return x, nfe
    return x, nfe, trajectory

  return sampler


@eqx.filter_jit
def _solve_fixed(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None, *,
                 sde: AbstractSDE,
                 shape: tuple[int, ...], method: str, eps: float, denoise: bool,
                 denoise_step: str, grid: tuple[float, ...],
                 times: tuple[float, ...] | None):
  x_T = sde.prior_sampling(key, shape) if x_T is None else x_T
  out = fixed_step_flow(sde, model_fn, x_T, grid, method, return_path=times is not None)
  x = out[0]
  if denoise:
    x = denoise_step_fn(denoise_step)(sde, model_fn, x, eps)
  return x, None if times is None else interpolate_path(out[2], times)


def probability_flow_term(sde: AbstractSDE, batch: int) -> diffrax.ODETerm:
  """diffrax term for dx/dt = probability-flow drift; `args` is the model function."""

  def vector_field(t, x, model_fn):
    tt = jnp.full((batch,), t, x.dtype)
    return sde.reverse(model_fn, probability_flow=True).sde(x, tt)[0]

  return diffrax.ODETerm(vector_field)


@eqx.filter_jit
def _solve_ode(key: jax.Array, model_fn: ModelFn, rtol: jax.Array, atol: jax.Array,
               x_T: jax.Array | None = None, *,
               sde: AbstractSDE, shape: tuple[int, ...], solver: diffrax.AbstractSolver,
               eps: float, denoise: bool, denoise_step: str, num_steps: int | None,
               max_steps: int, times: tuple[float, ...] | None, throw: bool = True):
  """One compiled solve per static configuration; rtol, atol and model arrays traced.

  throw=True keeps diffrax's own check of the result inside the compiled solve: an early
  stop is an error even under the caller's jit (e.g. common.mesh.shard_outputs), and the
  program, hence every sample, is the same as before the early-stop diagnosis existed
  (throw=False changes how XLA partitions the solve over devices: 8-device samples then
  differed from 1-device ones by 3e-3 relative on a chaotic untrained model).
  throw=False returns the state at the stop, for the diagnosis in `sampler`."""
  x_T = sde.prior_sampling(key, shape) if x_T is None else x_T
  # The solve sees x_T as an opaque input, drawn here or given, on one device or split
  # over several, so that all compile alike: adaptive steps are decided on error
  # estimates that can be float32 round-off (a first step on Gaussian data, tsit5 at
  # 1e-3; an untrained network at 1e-5), and the ulps by which a solve fused with the
  # draw differed changed the steps taken (samples 1e-3 apart, or 1 vs 8 devices).
  x_T = jax.lax.optimization_barrier(x_T)
  t0, t1 = sde.T, eps
  term = probability_flow_term(sde, shape[0])
  per_step, initial = ode_evals(solver)
  solver_state = None
  if num_steps is None:
    controller = ScipyStepController(rtol=rtol, atol=atol)
    # scipy's exponent: its error estimator's order (4 for RK45), not the method's.
    dt0, f0 = initial_step(term.vector_field, t0, t1, x_T, model_fn, rtol, atol,
                           rms_norm, solver.error_order(term) - 1)
    solver_state = fsal_state(solver, term, t0, t1, x_T, model_fn, f0)
    initial = INITIAL_STEP_EVALS + (0 if solver_state is not None else initial)
    steps_cap = max_steps
  else:
    # StepTo lands exactly on eps: ConstantStepSize could add a sliver of a step from
    # float round-off.
    controller = diffrax.StepTo(ts=jnp.linspace(t0, t1, num_steps + 1))
    dt0 = None
    steps_cap = num_steps
  if times is None:
    saveat = diffrax.SaveAt(t1=True)
  else:
    sorted_ts, inverse = to_original_order(times, descending=True)
    saveat = diffrax.SaveAt(t1=True, ts=jnp.asarray(sorted_ts, x_T.dtype))
  sol = diffrax.diffeqsolve(
      term, solver, t0=t0, t1=t1, dt0=dt0, y0=x_T, args=model_fn,
      solver_state=solver_state, saveat=saveat, stepsize_controller=controller,
      max_steps=steps_cap, throw=throw)
  stop = (sol.result != diffrax.RESULTS.successful, sol.ts[-1])
  x = sol.ys[-1]
  nfe = initial + per_step * jnp.asarray(sol.stats["num_steps"], jnp.int32)
  if denoise:
    x = denoise_step_fn(denoise_step)(sde, model_fn, x, eps)
    nfe = nfe + 1
  trajectory = None if times is None else sol.ys[:-1][jnp.asarray(inverse)]
  return x, nfe, trajectory, stop


def _check_solve(x, stop, run, model_fn: ModelFn, sde: AbstractSDE, max_steps: int) -> None:
  """One error for an adaptive solve that stopped early or gave a non-finite sample."""
  what = "ODE sampler"
  if not isinstance(stop[0], jax.core.Tracer) and bool(stop[0]):
    raise stopped_error(
        what, to_float(stop[1]), max_steps,
        "loosen the tolerances (config.sampling.rtol, config.sampling.atol) or raise "
        "get_ode_sampler's max_steps", run, model_fn, sde.native)
  check_finite_result(x, run, model_fn, what, sde.native)
