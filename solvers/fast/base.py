"""The abstract fast solver and what every member shares: the grid, the first step from a
prior with alpha(T) = 0, the step to t = 0, the multistep loop, and the compiled sampler.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn
from solvers.fast import schedules as schedules_lib

# predict(x, t) -> (x0_hat, eps_hat): the data and noise predictions at the scalar time t.
Predict = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# replace(x, t) -> x: a per-step hook applied to the state once it has reached the grid
# time t (scalar), before the model sees it; inpainting's "replace the known part" rule
# (solvers/controllable.py, `get_fast_inpainter`). None: the identity.
Replace = Callable[[jax.Array, jax.Array], jax.Array]


def no_replace(x: jax.Array, t: jax.Array) -> jax.Array:
  """The identity hook: plain sampling."""
  return x


def bmul(a: jax.Array, x: jax.Array) -> jax.Array:
  """A scalar coefficient times x, cast to x's dtype (coefficients are computed in it)."""
  return jnp.asarray(a, x.dtype) * x


def start_is_singular(sde: AbstractSDE) -> bool:
  """Whether alpha(T) = 0 (lambda(T) = -inf): decided once, on the host."""
  alpha, _ = sde.alpha_sigma(jnp.asarray([sde.T], jnp.float32))
  return float(alpha[0]) == 0.0


@dataclasses.dataclass(frozen=True)
class AbstractFastSolver(abc.ABC):
  """A few-step sampler of the probability-flow ODE, integrating from T down to eps.

  Fields common to every method (see `solvers.get_fast_sampler` for their meaning). A
  member implements `solve` (the loop over a regular grid) and `interval_nfe`, and may
  narrow `order_range` and add `check`. Instances are frozen and hashable: a static
  argument of the compiled sampler, so one configuration compiles once.

  Every solver works on the process's (alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t))
  (`sde.alpha_sigma`, `sde.log_snr`, `sde.t_from_log_snr`) and on the two predictions the
  process derives from the model's native output (`sde.x0_from_native`,
  `sde.eps_from_native`), so one implementation serves VP, sub-VP, VE and rectified flow.

  A prior with alpha(T) = 0 (rectified flow: x_1 = z) has lambda(T) = -inf, where the
  ratios alpha_t / alpha_s and exp(h) of the update formulas are infinite although the
  step itself is finite: from x_s = sigma_s eps every first-order update (DDIM, DPM-Solver-1,
  DPM-Solver++-1, Euler in sigma~ = sigma / alpha) reduces to
      x_t = alpha_t x0_hat(x_s, s) + sigma_t eps_hat(x_s, s),
  which is what the sampler takes as its first step there. Higher-order terms that would
  difference a model output at lambda = -inf against later ones are undefined (UniPC's
  B(h) = -h is infinite; DPM-Solver's 1/r = 0 makes the term vanish), so the multistep history
  starts after this step: the next steps warm up with lower orders as from a fresh start.
  Schedules spaced in lambda or sigma~ (logSNR, edm) cannot start at lambda = -inf; there the
  grid is T, then the schedule from sigma~ = `sigma_max` (EDM's 80 by default) down to eps.
  """
  steps: int
  order: int
  schedule: str
  eps: float
  lower_order_final: bool
  denoise_to_zero: bool
  rho: float
  sigma_max: float
  sigma_min: float
  singular: bool  # alpha(T) = 0: the first step is DDIM, see AbstractFastSolver.

  #: the method's name in get_fast_sampler.
  name: ClassVar[str] = ""
  #: the orders the method defines, inclusive.
  order_range: ClassVar[tuple[int, int]] = (1, 1)

  # ---- what a member implements ------------------------------------------------------
  @abc.abstractmethod
  def solve(self, key: jax.Array, sde: AbstractSDE, predict: Predict, x: jax.Array,
            ts: jax.Array, last: bool, replace: Replace = no_replace) -> jax.Array:
    """Integrates from ts[0] to ts[-1] (len(ts) - 1 >= 1 intervals, alpha(ts[0]) > 0).

    `last`: no step to t = 0 follows (EDM's Heun skips its correction then).
    `replace`: applied to the state after every step, at the step's end time ts[i]
    (after UniPC's corrector; not at intermediate points of a singlestep or Heun step).
    """

  @abc.abstractmethod
  def interval_nfe(self, n: int, last: bool) -> int:
    """Model evaluations of `solve` over n >= 1 intervals."""

  def check(self) -> None:
    """Raises UserError for settings this method does not define."""

  # ---- shared ----------------------------------------------------------------------
  @property
  def to_zero(self) -> bool:
    """Whether the sampler ends with the step to t = 0: x = x0_hat(x, eps)."""
    return self.schedule == "edm" or self.denoise_to_zero

  @property
  def intervals(self) -> int:
    """Intervals of the grid from T to eps; the edm schedule spends one step on t = 0."""
    return self.steps - 1 if self.schedule == "edm" else self.steps

  @property
  def nfe(self) -> int:
    """Model evaluations per sample, a Python int."""
    n = self.intervals
    total = int(self.to_zero)
    if self.singular:
      total += 1
      n -= 1
    if n >= 1:
      total += self.interval_nfe(n, last=not self.to_zero)
    return total

  def _clamped(self, sde: AbstractSDE, t: float, bound: float, above: bool, dtype):
    """t, or the time where sigma~ = bound when sigma~(t) lies beyond it (above: > bound)."""
    t = jnp.asarray(t, dtype)
    s = jnp.exp(-sde.log_snr(jnp.reshape(t, (1,)))[0])
    t_b = sde.t_from_log_snr(jnp.reshape(jnp.asarray(-np.log(bound), dtype), (1,)))[0]
    return jnp.where(s > bound if above else s < bound, t_b, t)

  def grid(self, sde: AbstractSDE, dtype) -> jax.Array:
    """The times t_0 = T > ... > t_n = eps, n = `intervals`. The edm schedule spans
    sigma~ in [sigma_min, sigma_max] clamped to the process's range, as EDM's
    `edm_sampler`: it then starts below T (see `sample`) or ends above eps."""
    sched = schedules_lib.SCHEDULES[self.schedule]
    n = self.intervals
    t_end = self.eps
    if self.schedule == "edm":
      t_end = self._clamped(sde, self.eps, self.sigma_min, False, dtype)
    if self.singular and self.schedule in schedules_lib.LAMBDA_SCHEDULES:
      if n == 1:
        return jnp.stack([jnp.asarray(sde.T, dtype), jnp.asarray(t_end, dtype)])
      t_cap = sde.t_from_log_snr(jnp.asarray(-np.log(self.sigma_max), dtype))
      rest = sched(sde, t_cap, t_end, n - 1, rho=self.rho, dtype=dtype)
      return jnp.concatenate([jnp.asarray([sde.T], dtype), rest])
    t_start = sde.T
    if self.schedule == "edm":
      t_start = self._clamped(sde, sde.T, self.sigma_max, True, dtype)
    return sched(sde, t_start, t_end, n, rho=self.rho, dtype=dtype)

  def sample(self, key: jax.Array, sde: AbstractSDE, predict: Predict,
             x: jax.Array, replace: Replace = no_replace) -> jax.Array:
    """From x at T to the sample: x at eps, or at t = 0 when `to_zero`.

    `replace(x, t)` is applied after every step at its end time (see `solve`); the caller
    applies it to x at T itself if it wants to. The step to t = 0 is not followed by it.
    """
    ts = self.grid(sde, x.dtype)
    if not self.singular:
      # A grid that starts below T (the edm schedule's sigma_max): x_T = sigma_T z becomes
      # sigma(t_0) z, EDM's `latents * sigma_max` in x~ = x / alpha. A factor 1 otherwise.
      _, s_T = alpha_sigma_at(sde, jnp.asarray(sde.T, x.dtype))
      _, s_0 = alpha_sigma_at(sde, ts[0])
      x = bmul(s_0 / s_T, x)
    if self.singular:
      x0, eps = predict(x, ts[0])
      alpha, sigma = alpha_sigma_at(sde, ts[1])
      x = replace(bmul(alpha, x0) + bmul(sigma, eps), ts[1])
      ts = ts[1:]
    if ts.shape[0] > 1:
      x = self.solve(jax.random.fold_in(key, 1), sde, predict, x, ts,
                     last=not self.to_zero, replace=replace)
    if self.to_zero:
      x = self.to_zero_step(jax.random.fold_in(key, 2), sde, predict, x, ts[-1])
    return x

  def to_zero_step(self, key: jax.Array, sde: AbstractSDE, predict: Predict, x: jax.Array,
                   t: jax.Array) -> jax.Array:
    """The step from the scalar time t to t = 0: x = x0_hat(x, t)."""
    return predict(x, t)[0]


def alpha_sigma_at(sde: AbstractSDE, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """alpha(t), sigma(t) at a scalar time."""
  alpha, sigma = sde.alpha_sigma(jnp.reshape(t, (1,)))
  return alpha[0], sigma[0]


def point_coeffs(sde: AbstractSDE, ts: jax.Array):
  """(alpha, sigma, lambda) at each time of ts: each ts.shape."""
  alpha, sigma = sde.alpha_sigma(ts)
  return alpha, sigma, sde.log_snr(ts)


def warmup_orders(n: int, order: int, lower_final: bool) -> np.ndarray:
  """The order of each of n multistep steps, as the reference loops choose it:
  min(order, k) for step k = 1.. (warm-up), and with lower_final min(order, n + 1 - k)."""
  out = []
  for k in range(1, n + 1):
    o = min(order, k)
    if lower_final:
      o = min(o, n + 1 - k)
    out.append(o)
  return np.asarray(out, np.int32)


def multistep_scan(predict: Predict, pick: Callable, x: jax.Array, ts: jax.Array,
                   coeffs, orders: np.ndarray, updates: Sequence[Callable],
                   correctors: Sequence[Callable] | None = None,
                   replace: Replace = no_replace) -> jax.Array:
  """The multistep loop of dpm_solver_pytorch.py / uni_pc.py as one lax.scan.

  The model is evaluated at ts[0] and after each step but the last (NFE = n). Step i
  (t_{i-1} -> t_i) calls `updates[orders[i-1] - 1](x, hist, hist_lam, s, t)`, where hist[j]
  is the (j+1)-th newest model output (`pick` of (x0_hat, eps_hat)), hist_lam its lambda,
  and s, t the (alpha, sigma, lambda) of the step's ends. With `correctors` (UniPC), the
  model output at the new point also corrects it, except on the last step. `replace` is
  applied to each step's new state at its time, before the model sees it (and again after
  the corrector, which moves the known part too).
  """
  n = len(orders)
  kmax = len(updates)
  alpha, sigma, lam = coeffs
  m0 = pick(predict(x, ts[0]))
  hist = jnp.zeros((kmax,) + x.shape, x.dtype).at[0].set(m0)
  hist_lam = jnp.full((kmax,), lam[0])

  def ends(i):
    return (alpha[i - 1], sigma[i - 1], lam[i - 1]), (alpha[i], sigma[i], lam[i])

  def body(carry, inp):
    x, hist, hist_lam = carry
    i, o = inp
    s, t = ends(i)
    x_new = replace(jax.lax.switch(o - 1, updates, x, hist, hist_lam, s, t), ts[i])
    m = pick(predict(x_new, ts[i]))
    if correctors is not None:
      x_new = replace(jax.lax.switch(o - 1, correctors, x, hist, hist_lam, s, t, m), ts[i])
    hist = jnp.concatenate([m[None], hist[:-1]], axis=0)
    hist_lam = jnp.concatenate([lam[i][None], hist_lam[:-1]])
    return (x_new, hist, hist_lam), None

  if n > 1:
    (x, hist, hist_lam), _ = jax.lax.scan(
        body, (x, hist, hist_lam),
        (jnp.arange(1, n), jnp.asarray(orders[:-1], jnp.int32)))
  s, t = ends(n)
  return replace(jax.lax.switch(int(orders[-1]) - 1, updates, x, hist, hist_lam, s, t),
                 ts[n])


def make_predict(sde: AbstractSDE, model_fn: ModelFn, batch: int) -> Predict:
  """predict(x, t) -> (x0_hat, eps_hat) from one evaluation of model_fn at the scalar t."""

  def predict(x, t):
    tt = jnp.full((batch,), t, x.dtype)
    native = model_fn(x, tt)
    return sde.x0_from_native(native, x, tt), sde.eps_from_native(native, x, tt)

  return predict


@eqx.filter_jit
def fast_sample(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None, *,
                solver: AbstractFastSolver, sde: AbstractSDE,
                shape: tuple[int, ...]) -> jax.Array:
  """One compiled sampler per (solver, sde, shape, x_T given or not); the model's arrays,
  the key and x_T are traced."""
  prior_key, loop_key = jax.random.split(key)
  x = sde.prior_sampling(prior_key, shape) if x_T is None else x_T
  return solver.sample(loop_key, sde, make_predict(sde, model_fn, shape[0]), x)

