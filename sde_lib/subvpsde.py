"""Sub-variance-preserving SDE (Song et al. 2021, eq. 12).

    dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta(s) ds))) dw

Same mean as the VP SDE; its variance (1 - exp(-int beta))^2 is bounded by the VP one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_lib.base import _check_t, batch_mul
from sde_lib.vpsde import VPSDE


class SubVPSDE(VPSDE):

  def discretize(self, x, t):
    # No DDPM-style chain exists for sub-VP: fall back to Euler-Maruyama.
    return super(VPSDE, self).discretize(x, t)

  def sde(self, x, t):
    _check_t(x, t)
    beta_t = self.beta(t)
    # 1 - exp(-2 int_0^t beta) = -expm1(4 log_mean_coeff(t)).
    discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

  def log_snr(self, t):
    # lambda = lmc - log(1 - exp(2 lmc)).
    lmc = self.log_mean_coeff(t)
    return lmc - jnp.log(-jnp.expm1(2.0 * lmc))

  def t_from_log_snr(self, lam):
    # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})).
    log_alpha = (jnp.log(2.0) + lam
                 - jnp.logaddexp(0.0, 0.5 * jnp.logaddexp(0.0, jnp.log(4.0) + 2.0 * lam)))
    return self.t_from_lmc(log_alpha)

  def marginal_prob(self, x0, t):
    _check_t(x0, t)
    lmc = self.log_mean_coeff(t)
    # std = 1 - exp(-int_0^t beta(s) ds) = 1 - exp(2 lmc).
    return batch_mul(jnp.exp(lmc), x0), -jnp.expm1(2.0 * lmc)
