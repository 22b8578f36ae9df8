"""DDIM (Song, Meng and Ermon 2021, eq. 12), = DPM-Solver-1 when eta = 0.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from common.errors import UserError
from solvers.fast.base import AbstractFastSolver, bmul, no_replace, point_coeffs


@dataclasses.dataclass(frozen=True)
class DDIM(AbstractFastSolver):
  """Deterministic (eta = 0) or stochastic (eta > 0) DDIM; NFE = steps.

  From s to t (t < s), with the predictions x0_hat, eps_hat at (x_s, s):

      x_t = alpha_t x0_hat + sqrt(sigma_t^2 - c^2) eps_hat + c z,    z ~ N(0, I),
      c   = eta sigma_t sqrt(1 - exp(-2 h)),    h = lambda_t - lambda_s,

  c being the DDIM paper's sigma_t(eta) written for any affine-Gaussian process: the
  std of q(x_t | x_s, x_0) is sigma_t sqrt(1 - exp(-2h)) (for VP, sqrt((1 - a_t) /
  (1 - a_s)) sqrt(1 - a_s / a_t) with a = alpha^2), so eta = 1 is the ancestral (DDPM)
  step and eta = 0 the deterministic DDIM, the Euler step of the probability-flow ODE in
  sigma~ = sigma / alpha (for rectified flow, exactly the Euler step x + (t - s) v).
  """
  eta: float = 0.0

  name: ClassVar[str] = "ddim"
  order_range: ClassVar[tuple[int, int]] = (1, 1)

  def check(self) -> None:
    if not 0.0 <= self.eta <= 1.0:
      raise UserError(f"ddim: eta must be in [0, 1], got {self.eta}")

  def interval_nfe(self, n: int, last: bool) -> int:
    return n

  def solve(self, key, sde, predict, x, ts, last, replace=no_replace):
    alpha, sigma, lam = point_coeffs(sde, ts)
    n = ts.shape[0] - 1

    def body(x, i):
      x0, eps = predict(x, ts[i])
      a_t, s_t = alpha[i + 1], sigma[i + 1]
      if self.eta == 0.0:
        return replace(bmul(a_t, x0) + bmul(s_t, eps), ts[i + 1]), None
      h = lam[i + 1] - lam[i]
      c = self.eta * s_t * jnp.sqrt(-jnp.expm1(-2.0 * h))
      z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
      return replace(bmul(a_t, x0) + bmul(jnp.sqrt(jnp.maximum(s_t**2 - c**2, 0.0)), eps)
                     + bmul(c, z), ts[i + 1]), None

    x, _ = jax.lax.scan(body, x, jnp.arange(n))
    return x
