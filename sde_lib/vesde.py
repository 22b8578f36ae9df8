"""Variance-exploding SDE (Song et al. 2021, eq. 9), the continuous limit of SMLD/NCSN."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, _check_t, standard_normal_logp
from sde_lib.chains import SMLDChain, smld_sigmas
from common.errors import UserError


class VESDE(AbstractSDE):
  """VE SDE  dx = sqrt(d sigma^2(t) / dt) dw,  sigma(t) = sigma_min (sigma_max / sigma_min)^t,
  on t in [0, 1]; prior N(0, sigma_max^2 I). Its discrete chain is SMLD's noise ladder
  (`chain`, an SMLDChain over `smld_sigmas(sigma_min, sigma_max, N)`).
  """

  process_name = "VE SDE"

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise UserError(
          f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
          f"sigma_max={sigma_max}")
    self.sigma_min = float(sigma_min)
    self.sigma_max = float(sigma_max)
    # SMLD's noise levels, ascending: sigma_i = sigma(i / (N-1)), i = 0..N-1.
    self.chain = SMLDChain(smld_sigmas(self.sigma_min, self.sigma_max, self.N), T=1.0)

  def _hparams(self) -> tuple:
    return (type(self).__name__, self.sigma_min, self.sigma_max, self.N)

  @property
  def T(self) -> float:
    return 1.0

  @property
  def discrete_sigmas(self) -> np.ndarray:
    """SMLD's noise ladder, ascending (the chain's table)."""
    return self.chain.sigmas

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def log_snr(self, t):
    # alpha = 1: lambda = -log sigma(t).
    return -(np.log(self.sigma_min) + t * np.log(self.sigma_max / self.sigma_min))

  def t_from_log_snr(self, lam):
    return (-lam - np.log(self.sigma_min)) / np.log(self.sigma_max / self.sigma_min)

  def sde(self, x, t):
    _check_t(x, t)
    diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x0, t):
    _check_t(x0, t)
    return x0, self.sigma(t)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape) * self.sigma_max

  def prior_logp(self, z):
    return standard_normal_logp(z, self.sigma_max)

  def discretize(self, x, t):
    """SMLD: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z, with sigma_{-1} = 0."""
    _check_t(x, t)
    return self.chain.discretize(x, t)

  def langevin_alpha(self, t):
    return jnp.ones_like(t)

  def network_labels(self, t, continuous=True):
    # score_sde: the noise level sigma(t) for continuous training; NCSN's label
    # round((T - t)(N - 1)) for discrete training (label 0 is sigma_max).
    if continuous:
      return self.sigma(t)
    return jnp.round((self.T - t) * (self.N - 1))

  def native_from_network(self, out, x, t, continuous=True):
    """The network predicts the score itself (any 1/sigma scaling is inside the network)."""
    return out
