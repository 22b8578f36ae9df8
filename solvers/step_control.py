"""Adaptive step-size control as scipy's solve_ivp does it (RK45, RK23, DOP853), on diffrax:
Hairer's first step, its two evaluations counted and its f(t0, y0) reused, and scipy's
I-controller.
"""
from __future__ import annotations

from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

#: Vector-field evaluations of `initial_step` (scipy's nfev counts the same two).
INITIAL_STEP_EVALS = 2


def rms_norm(x: jax.Array) -> jax.Array:
  """scipy's error norm: the RMS over every element of the (batch's) state array."""
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def initial_step(vector_field: Callable, t0: float, t1: float, y0, args, rtol: jax.Array,
                 atol: jax.Array, norm: Callable, order: float
                 ) -> tuple[jax.Array, object]:
  """Hairer's starting step (Hairer, Norsett and Wanner, Solving ODEs I, sec. II.4), as
  scipy's `select_initial_step`; forwards (t1 > t0) or backwards in time.

  With |.| the controller's norm of a pytree scaled elementwise by atol + rtol |y0|,
  d0 = |y0|, d1 = |f(t0, y0)|, h0 = min(0.01 d0 / d1, |t1 - t0|) (an Euler step that moves
  y by 1%, kept inside the interval), d2 = |f(t0 + h0, y0 + h0 f0) - f0| / h0 (the
  curvature), the step is

      h = min(100 h0, (0.01 / max(d1, d2))^(1 / (order + 1)), |t1 - t0|).

  scipy passes its error estimator's order (4 for RK45, i.e. diffrax's
  `solver.error_order(term) - 1`: exponent 1/5 for dopri5); Hairer's book the method's
  order (5: exponent 1/6). Two vector-field evaluations (INITIAL_STEP_EVALS). Returns
  (dt0 = h with the sign of t1 - t0, f0 = f(t0, y0)).

  The cap on h0 matters: where the drift is small against the state (an untrained
  network's score scaled by 1/sigma, data far from the prior's scale), 0.01 d0 / d1 is
  far beyond the interval (800 on a random NCSN++: VE's sigma(t) = sigma_min (sigma_max /
  sigma_min)^t overflows there), f1 is NaN, so is the step, and every step fails until
  max_steps. scipy caps h0 the same way.
  """
  span = abs(float(t1) - float(t0))
  direction = 1.0 if t1 > t0 else -1.0
  scale = jax.tree.map(lambda y: atol + rtol * jnp.abs(y), y0)
  scaled = lambda tree: jax.tree.map(lambda a, s: a / s, tree, scale)  # noqa: E731
  f0 = vector_field(t0, y0, args)
  d0, d1 = norm(scaled(y0)), norm(scaled(f0))
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-30))
  h0 = jnp.minimum(h0, span)
  y1 = jax.tree.map(lambda y, f: y + direction * h0 * f, y0, f0)
  f1 = vector_field(t0 + direction * h0, y1, args)
  d2 = norm(scaled(jax.tree.map(lambda a, b: a - b, f1, f0))) / h0
  max_d = jnp.maximum(d1, d2)
  h1 = jnp.where(max_d <= 1e-15, jnp.maximum(1e-6, 1e-3 * h0),
                 (0.01 / jnp.maximum(max_d, 1e-30)) ** (1.0 / (order + 1)))
  return direction * jnp.minimum(jnp.minimum(100.0 * h0, h1), span), f0


def fsal_state(solver: diffrax.AbstractSolver, term, t0: float, t1: float, y0, args, f0):
  """The solver's initial state with its first stage f(t0, y0) = f0 already known.

  diffrax's first-same-as-last Runge-Kutta solvers keep (first_step, f0) and evaluate
  the first stage on the first step, again after every rejection of that step, which
  no step statistic reports. Handing them f0 from `initial_step` saves that evaluation
  and makes nfe = INITIAL_STEP_EVALS + (stages - 1) * (step attempts) exact, as scipy's
  nfev. Returns None (and the solver starts as usual) for a solver whose state has another
  form (dopri8, which is not FSAL).
  """
  if not isinstance(solver, diffrax.AbstractRungeKutta):
    return None
  state = solver.init(term, t0, t1, y0, args)
  if not (isinstance(state, tuple) and len(state) == 2 and jnp.shape(state[0]) == ()
          and jnp.result_type(state[0]) == jnp.bool_
          and jax.tree.structure(state[1]) == jax.tree.structure(f0)):
    return None
  return (jnp.array(False), f0)


class ScipyStepController(diffrax.AbstractAdaptiveStepSizeController):
  """scipy's step-size control of its explicit Runge-Kutta methods (scipy/integrate/_ivp/
  rk.py, `RungeKutta._step_impl`), as a diffrax controller.

  A step of size h from y_old to y_new with error estimate e (the solver's embedded pair)
  has the scaled error

      err = norm(e / (atol + rtol max(|y_old|, |y_new|)))

  (norm: scipy's RMS over every element by default) and is accepted if err < 1. The next
  step is h * factor with, for q = error_order (scipy's error_estimator_order + 1: 5 for
  dopri5 / RK45),

      accepted:  factor = min(10, 0.9 err^(-1/q))  (10 if err = 0), and at most 1 if the
                 previous attempt was rejected (no growth right after a rejection);
      rejected:  factor = max(0.2, 0.9 err^(-1/q)).

  diffrax's PIDController with pcoeff = dcoeff = 0 has the same exponent and bounds but
  differs on accepted steps: it never shrinks them (factor >= 1 where scipy allows
  0.9 err^(-1/5) in [0.9, 1) for 0.59 < err < 1) and grows them right after a rejection.
  On a Gaussian VE flow the former alone held three steps equal where scipy's shrank by
  4%.

  Still unlike scipy: the first step comes from `initial_step` through dt0 (dt0=None is
  refused); no minimum step (scipy fails below 10 ulp of t; diffrax goes on to
  max_steps); a non-finite error makes the next step NaN, which stops the solve, where
  scipy shrinks the step fivefold and may step past a non-finite model output unseen.
  """

  rtol: jax.Array | float
  atol: jax.Array | float
  norm: Callable = rms_norm

  def wrap(self, direction):
    # diffrax integrates backwards in -t, so the controller always sees t0 < t1.
    del direction
    return self

  def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
    del terms, t1, y0, args, func, error_order
    if dt0 is None:
      raise ValueError("ScipyStepController needs dt0; take it from initial_step")
    return t0 + dt0, jnp.array(False)

  def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                      controller_state):
    del args
    prev_rejected = controller_state
    scale = jax.tree.map(
        lambda a, b: self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)),
        y0, y1_candidate)
    err = self.norm(jax.tree.map(lambda e, s: e / s, y_error, scale))
    err = jax.lax.stop_gradient(err)
    keep = err < 1
    raw = 0.9 * err ** (-1.0 / error_order)  # inf for err = 0: min(10, .) gives 10.
    grow_cap = jnp.where(prev_rejected, 1.0, 10.0)
    factor = jnp.where(keep, jnp.minimum(grow_cap, raw), jnp.maximum(0.2, raw))
    h = t1 - t0
    next_t0 = jnp.where(keep, t1, t0)
    next_t1 = next_t0 + h * factor.astype(jnp.result_type(h))
    return (keep, next_t0, next_t1, False, jnp.logical_not(keep),
            diffrax.RESULTS.successful)
