"""Sub-variance-preserving SDE (Song et al. 2021, eq. 12)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE, _check_t, batch_mul, standard_normal_logp
from sde_lib.linear_beta import LinearBetaSchedule


class SubVPSDE(LinearBetaSchedule, AbstractSDE):
  """Sub-VP SDE  dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta(s) ds))) dw.

  Same mean as the VP SDE; its variance (1 - exp(-int beta))^2 is bounded by the VP one.
  It has no discrete chain (`chain` is None): `discretize` is Euler-Maruyama.
  """

  process_name = "sub-VP SDE"

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    AbstractSDE.__init__(self, N)
    self._init_schedule(beta_min, beta_max, self.N)

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

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return standard_normal_logp(z)

  def network_labels(self, t, continuous=True):
    # score_sde trains sub-VP in continuous time only: 999 t either way.
    return t * 999

  def native_from_network(self, out, x, t, continuous=True):
    """The network predicts the noise: score = -out / std(t), its own marginal std."""
    std = self.marginal_prob(jnp.zeros_like(x), t)[1]
    return -batch_mul(1.0 / std, out)
