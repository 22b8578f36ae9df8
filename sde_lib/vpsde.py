"""Variance-preserving SDE (Song et al. 2021, eq. 11): the continuous limit of DDPM.

    dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min)

on t in [0, 1]; prior N(0, I).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, _check_t, batch_mul, standard_normal_logp


class VPSDE(AbstractSDE):

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    super().__init__(N)
    if not 0 <= beta_min <= beta_max:
      raise ValueError(
          f"need 0 <= beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    self.beta_0 = float(beta_min)
    self.beta_1 = float(beta_max)

  def _hparams(self) -> tuple:
    return (type(self).__name__, self.beta_0, self.beta_1, self.N)

  @property
  def T(self) -> float:
    return 1.0

  # DDPM's discrete chain (Ho et al. 2020): beta_i = beta(i/N)/N, i = 0..N-1.
  @property
  def discrete_betas(self) -> np.ndarray:
    return np.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N)

  @property
  def alphas(self) -> np.ndarray:
    return 1.0 - self.discrete_betas

  @property
  def alphas_cumprod(self) -> np.ndarray:
    return np.cumprod(self.alphas)

  @property
  def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(1.0 - self.alphas_cumprod)

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t: jax.Array) -> jax.Array:
    """log alpha(t) = -1/2 int_0^t beta(s) ds."""
    return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def log_snr(self, t):
    # lambda = log alpha - 1/2 log(1 - alpha^2), with log alpha = lmc in closed form.
    lmc = self.log_mean_coeff(t)
    return lmc - 0.5 * jnp.log(-jnp.expm1(2.0 * lmc))

  def t_from_lmc(self, lmc: jax.Array) -> jax.Array:
    """Solves log alpha(t) = lmc for t >= 0: the positive root of
    (b1 - b0) t^2 / 4 + b0 t / 2 + lmc = 0, written without cancellation."""
    tmp = -4.0 * lmc * (self.beta_1 - self.beta_0)  # = (b1 - b0) * 4 (-lmc) >= 0
    return 2.0 * (-2.0 * lmc) / (jnp.sqrt(self.beta_0**2 + tmp) + self.beta_0)

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
    """DDPM: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z, i = round(t (N-1) / T)."""
    _check_t(x, t)
    i = jnp.round(t * (self.N - 1) / self.T).astype(jnp.int32)
    beta = jnp.asarray(self.discrete_betas, jnp.float32)[i]
    alpha = jnp.asarray(self.alphas, jnp.float32)[i]
    f = batch_mul(jnp.sqrt(alpha), x) - x
    return f, jnp.sqrt(beta)
