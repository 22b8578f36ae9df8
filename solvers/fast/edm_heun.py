"""EDM's deterministic/stochastic sampler (Karras et al. 2022, Algorithm 2) in
sigma~ = sigma / alpha, so that it applies to every process here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from common.errors import UserError
from solvers.fast.base import (AbstractFastSolver, alpha_sigma_at, bmul, no_replace,
                               point_coeffs)


@dataclasses.dataclass(frozen=True)
class EDMHeun(AbstractFastSolver):
  """Heun's second-order method with EDM's churn; order 2.

  With x~ = x / alpha the probability-flow ODE is dx~/dsigma~ = eps_hat(alpha x~, t)
  (= (x~ - D(x~; sigma~)) / sigma~ of EDM's eq. 3 with D = x0_hat). Each step from sigma~_i:
  optional churn, gamma_i = min(s_churn / steps, sqrt 2 - 1) when s_min <= sigma~_i <= s_max
  (also on the step to sigma~ = 0, as generate.py's `edm_sampler`),
  sigma^_i = (1 + gamma_i) sigma~_i, x^ = x~ + sqrt(sigma^_i^2 - sigma~_i^2) s_noise z; then
  the Euler step to sigma~_{i+1} and Heun's correction with the slope there, except on the
  sampler's last step (EDM skips it where sigma~_{i+1} = 0: with schedule 'edm' the last step
  is that step to sigma~ = 0, x = D). NFE = 2 steps - 1 (one less for a prior with
  alpha(T) = 0, whose first step is Euler only: Heun's correction from sigma~ = inf is
  undefined).
  """
  s_churn: float = 0.0
  s_min: float = 0.0
  s_max: float = float("inf")
  s_noise: float = 1.0

  name: ClassVar[str] = "edm_heun"
  order_range: ClassVar[tuple[int, int]] = (2, 2)

  def check(self) -> None:
    if self.s_churn < 0 or self.s_noise < 0 or self.s_min < 0 or self.s_max < self.s_min:
      raise UserError(f"edm_heun: need s_churn >= 0, s_noise >= 0, 0 <= s_min <= s_max; got "
                      f"s_churn={self.s_churn}, s_noise={self.s_noise}, s_min={self.s_min}, "
                      f"s_max={self.s_max}")

  def interval_nfe(self, n: int, last: bool) -> int:
    return 2 * n - 1 if last else 2 * n

  def _churn(self, key, sde, xt, t_i, s_i):
    """EDM's Algorithm 2, lines 4-6 on x~ = x / alpha at (t_i, sigma~_i): returns
    (x^, t^, sigma^). gamma = 0 outside [s_min, s_max] keeps (x~, t_i, sigma~_i) exactly;
    the variance s^2 - s_i^2 is clamped at 0 against round-off."""
    gamma_max = min(self.s_churn / self.steps, math.sqrt(2.0) - 1.0)
    if gamma_max <= 0:
      return xt, t_i, s_i
    on = (s_i >= self.s_min) & (s_i <= self.s_max)
    s_hat = jnp.where(on, s_i * (1.0 + gamma_max), s_i)
    t_hat = jnp.where(on, sde.t_from_log_snr(jnp.reshape(-jnp.log(s_hat), (1,)))[0], t_i)
    z = jax.random.normal(key, xt.shape, xt.dtype)
    var = jnp.where(on, jnp.maximum(s_hat**2 - s_i**2, 0.0), 0.0)
    return xt + bmul(jnp.sqrt(var) * self.s_noise, z), t_hat, s_hat

  def to_zero_step(self, key, sde, predict, x, t):
    """EDM's last step, sigma~ -> 0 from t = eps: churn as on every step (generate.py
    applies it when s_min <= sigma~_min <= s_max), then x = D(x^; sigma^) = x0_hat."""
    alpha, _, lam = point_coeffs(sde, jnp.reshape(t, (1,)))
    xt, t_hat, _ = self._churn(key, sde, bmul(1.0 / alpha[0], x), t, jnp.exp(-lam[0]))
    a_hat, _ = alpha_sigma_at(sde, t_hat)
    return predict(bmul(a_hat, xt), t_hat)[0]

  def solve(self, key, sde, predict, x, ts, last, replace=no_replace):
    alpha, _, lam = point_coeffs(sde, ts)
    sig = jnp.exp(-lam)
    n = ts.shape[0] - 1

    def step(xt, i, heun):
      s_next = sig[i + 1]
      xt, t_hat, s_hat = self._churn(jax.random.fold_in(key, i), sde, xt, ts[i], sig[i])
      a_hat, _ = alpha_sigma_at(sde, t_hat)
      d = predict(bmul(a_hat, xt), t_hat)[1]
      x_next = xt + bmul(s_next - s_hat, d)
      if heun:
        d2 = predict(bmul(alpha[i + 1], x_next), ts[i + 1])[1]
        x_next = xt + bmul(0.5 * (s_next - s_hat), d + d2)
      # The hook acts on x = alpha x~, at the step's end time.
      return bmul(1.0 / alpha[i + 1], replace(bmul(alpha[i + 1], x_next), ts[i + 1]))

    xt = bmul(1.0 / alpha[0], x)
    n_heun = n - 1 if last else n
    if n_heun > 0:
      xt, _ = jax.lax.scan(lambda c, i: (step(c, i, True), None), xt, jnp.arange(n_heun))
    if last:
      xt = step(xt, n - 1, False)
    return bmul(alpha[-1], xt)
