"""Variance-preserving SDE (Song et al. 2021, eq. 11), the continuous limit of DDPM."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE, _check_t, batch_mul, standard_normal_logp
from sde_lib.linear_beta import LinearBetaSchedule


class VPSDE(LinearBetaSchedule, AbstractSDE):
  """VP SDE  dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,  beta(t) = beta_min + t (beta_max -
  beta_min), on t in [0, 1]; prior N(0, I). Its discrete chain is DDPM's (`chain`, a
  DDPMChain).
  """

  process_name = "VP SDE"

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    AbstractSDE.__init__(self, N)
    self._init_schedule(beta_min, beta_max, self.N)
    self.chain = self.ddpm_tables

  def log_snr(self, t):
    # lambda = log alpha - 1/2 log(1 - alpha^2), with log alpha = lmc in closed form.
    lmc = self.log_mean_coeff(t)
    return lmc - 0.5 * jnp.log(-jnp.expm1(2.0 * lmc))

  def t_from_log_snr(self, lam):
    # alpha^2 = 1 / (1 + exp(-2 lam)), so lmc = -1/2 log(1 + exp(-2 lam)) (DPM-Solver's
    # NoiseScheduleVP.inverse_lambda for the linear schedule).
    return self.t_from_lmc(-0.5 * jnp.logaddexp(-2.0 * lam, 0.0))

  def sde(self, x, t):
    _check_t(x, t)
    beta_t = self.beta(t)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x0, t):
    _check_t(x0, t)
    lmc = self.log_mean_coeff(t)
    return batch_mul(jnp.exp(lmc), x0), jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return standard_normal_logp(z)

  def discretize(self, x, t):
    """DDPM: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z, i = int(t (N-1) / T)."""
    _check_t(x, t)
    return self.chain.discretize(x, t)

  def network_labels(self, t, continuous=True):
    # score_sde: 999 t for continuous training; the DDPM index t (N - 1), not rounded,
    # for discrete training.
    return t * 999 if continuous else t * (self.N - 1)

  def native_from_network(self, out, x, t, continuous=True):
    """The network predicts the noise: score = -out / std, with std the marginal std
    (continuous) or DDPM's sqrt(1 - abar_i) at i = int(t (N - 1)) (discrete), as in
    score_sde."""
    if continuous:
      std = self.marginal_prob(jnp.zeros_like(x), t)[1]
    else:
      std = jnp.asarray(self.chain.sqrt_1m_alphas_cumprod, out.dtype)[self.chain.index(t)]
    return -batch_mul(1.0 / std, out)
