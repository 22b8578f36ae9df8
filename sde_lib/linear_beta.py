"""The linear beta schedule shared by the VP and sub-VP SDEs (Song et al. 2021, eqs. 11-12)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.chains import DDPMChain
from common.errors import UserError


class LinearBetaSchedule:
  """Mixin for processes with a linear beta(t) on t in [0, 1]: VP and sub-VP.

  Sets beta_0, beta_1 (score_sde's names) and `ddpm_tables`, the DDPM chain of the
  schedule (VP's `chain`; sub-VP uses only its alphas, for the Langevin step size).

  beta(t) = beta_min + t (beta_max - beta_min), log alpha(t) = -1/2 int_0^t beta(s) ds;
  DDPM's discrete tables of the same schedule are score_sde's
  linspace(beta_min / N, beta_max / N, N), held in one `DDPMChain`.
  """

  def _init_schedule(self, beta_min: float, beta_max: float, N: int) -> None:
    if not 0 <= beta_min <= beta_max:
      raise UserError(
          f"need 0 <= beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    self.beta_0 = float(beta_min)
    self.beta_1 = float(beta_max)
    self.ddpm_tables = DDPMChain(
        np.linspace(self.beta_0 / N, self.beta_1 / N, N), T=1.0)

  def _hparams(self) -> tuple:
    return (type(self).__name__, self.beta_0, self.beta_1, self.N)

  @property
  def T(self) -> float:
    return 1.0

  # DDPM's discrete tables (Ho et al. 2020), for code and tests that read them by name.
  @property
  def discrete_betas(self) -> np.ndarray:
    return self.ddpm_tables.betas

  @property
  def alphas(self) -> np.ndarray:
    return self.ddpm_tables.alphas

  @property
  def alphas_cumprod(self) -> np.ndarray:
    return self.ddpm_tables.alphas_cumprod

  @property
  def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
    return self.ddpm_tables.sqrt_1m_alphas_cumprod

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t: jax.Array) -> jax.Array:
    """log alpha(t) = -1/2 int_0^t beta(s) ds."""
    return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def t_from_lmc(self, lmc: jax.Array) -> jax.Array:
    """Solves log alpha(t) = lmc for t >= 0: the positive root of
    (b1 - b0) t^2 / 4 + b0 t / 2 + lmc = 0, written without cancellation."""
    tmp = -4.0 * lmc * (self.beta_1 - self.beta_0)  # = (b1 - b0) * 4 (-lmc) >= 0
    return 2.0 * (-2.0 * lmc) / (jnp.sqrt(self.beta_0**2 + tmp) + self.beta_0)

  def langevin_alpha(self, t: jax.Array) -> jax.Array:
    # score_sde scales the Langevin step by DDPM's alpha_i for VP and sub-VP alike.
    return self.ddpm_tables.langevin_alpha(t)
