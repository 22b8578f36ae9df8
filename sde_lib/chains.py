"""The discrete chains behind the VP and VE SDEs, DDPM (Ho et al. 2020) and SMLD/NCSN (Song
and Ermon 2019), as score_sde discretizes them (Song et al. 2021, App. B, eqs. 46-48)."""
from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import batch_mul
from common.errors import UserError


class AbstractChain(abc.ABC):
  """A discrete Markov chain x_0 -> x_1 -> ... -> x_{N-1} indexed by time t in [0, T].

  A process that has such a chain exposes it as `sde.chain` (None otherwise). Code outside
  sde_lib asks the chain, never the process's type:

      i = chain.index(t)                      # int32 (B,): score_sde's int(t (N - 1) / T)
      t = chain.time(i)                       # a time whose index is exactly i: (B,)
      mean_coeff, std = chain.marginal(i)     # x_i | x_0 ~ N(mean_coeff x_0, std^2 I): (B,)
      f, G = chain.discretize(x, t)           # forward step x_{i+1} = x_i + f + G z
      x_mean, std = chain.ancestral_step(x, score, t)   # eqs. 47 (VP) and 48 (VE)
      alpha = chain.langevin_alpha(t)         # alpha_i of score_sde's Langevin step size

  The index rule truncates, as score_sde's `(t * (N - 1) / T).astype(int32)` does: on the
  sampling grid linspace(T, eps, N) the last point eps maps to level 0, so the final
  reverse-diffusion or ancestral step removes the smallest noise level, whatever eps is.
  Tables are float64 numpy arrays; they are cast to the dtype of the input when used.
  """

  def __init__(self, N: int, T: float):
    self.N = int(N)
    self.T = float(T)

  def index(self, t: jax.Array) -> jax.Array:
    """The chain index of time t: int(t (N - 1) / T), truncated as in score_sde: int32 (B,)."""
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  def time(self, i: jax.Array) -> jax.Array:
    """A float32 time t_i ~= i T / (N - 1) with index(t_i) == i exactly: (B,).

    i / (N - 1) * (N - 1) can round to just below i in float32, which truncation would
    send to level i - 1; such t_i are moved up by one ulp.
    """
    i = jnp.asarray(i, jnp.int32)
    t = i.astype(jnp.float32) * (self.T / max(self.N - 1, 1))
    for _ in range(2):  # One ulp always suffices; the second pass is a guard.
      t = jnp.where(self.index(t) < i, jnp.nextafter(t, jnp.float32(np.inf)), t)
    return t

  @abc.abstractmethod
  def marginal(self, i: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean coefficient, std) of x_i | x_0 at chain index i: each (B,) float32."""

  @abc.abstractmethod
  def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The forward step x_{i+1} = x_i + f + G z at i = index(t): f x.shape, G (B,)."""

  @abc.abstractmethod
  def ancestral_step(self, x: jax.Array, score: jax.Array, t: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """Ancestral sampling of p(x_{i-1} | x_i) given the score at (x, t):
    (x_mean: x.shape, std: (B,)); the next state is x_mean + std z."""

  @abc.abstractmethod
  def langevin_alpha(self, t: jax.Array) -> jax.Array:
    """alpha_i scaling score_sde's Langevin step size at i = index(t): (B,)."""


class DDPMChain(AbstractChain):
  """DDPM's chain: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Ho et al. 2020).

  Args:
    betas: beta_0..beta_{N-1}; score_sde's VP uses linspace(beta_min/N, beta_max/N, N).
    T: end time of the continuous process.
  """

  def __init__(self, betas: np.ndarray, T: float = 1.0):
    betas = np.asarray(betas, np.float64)
    super().__init__(betas.shape[0], T)
    self.betas = betas
    self.alphas = 1.0 - betas
    self.alphas_cumprod = np.cumprod(self.alphas)
    # A schedule with beta_i > 1 (e.g. beta_max = 20 with N < 20) has no chain; its tables
    # hold nan, as score_sde's would, without a warning at construction.
    with np.errstate(invalid="ignore"):
      self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
      self.sqrt_1m_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)

  def _at(self, table: np.ndarray, i: jax.Array, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(table, dtype)[i]

  def _check_defined(self, strict: bool) -> None:
    # Checked when the chain is stepped (at trace time: the tables are numpy), not at
    # construction, so a continuous-time VP SDE with a small N stays usable. The forward
    # step needs beta_i <= 1; the ancestral step divides by sqrt(1 - beta_i): beta_i < 1.
    ok = np.all(self.betas < 1.0) if strict else np.all(self.betas <= 1.0)
    if not ok:
      bound = "< 1" if strict else "<= 1"
      raise UserError(
          f"the DDPM chain needs every beta_i {bound}, but beta_max / N = "
          f"{self.betas.max():.3g} "
          f"(N = {self.N}); use N >= beta_max (score_sde: N = 1000) or a sampler that does "
          f"not step the discrete chain (euler_maruyama, the ODE or a fast sampler)")

  def marginal(self, i):
    """x_i | x_0 ~ N(sqrt(abar_i) x_0, (1 - abar_i) I)."""
    return self._at(self.sqrt_alphas_cumprod, i), self._at(self.sqrt_1m_alphas_cumprod, i)

  def discretize(self, x, t):
    """f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i)."""
    self._check_defined(strict=False)
    i = self.index(t)
    beta = self._at(self.betas, i, x.dtype)
    f = batch_mul(jnp.sqrt(1.0 - beta), x) - x
    return f, jnp.sqrt(beta)

  def ancestral_step(self, x, score, t):
    """Eq. 47: x_mean = (x + beta_i score) / sqrt(1 - beta_i), std = sqrt(beta_i)."""
    self._check_defined(strict=True)
    beta = self._at(self.betas, self.index(t), x.dtype)
    x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
    return x_mean, jnp.sqrt(beta)

  def langevin_alpha(self, t):
    return self._at(self.alphas, self.index(t), t.dtype)


def smld_sigmas(sigma_min: float, sigma_max: float, N: int, *, descending: bool = False,
                xp=np) -> np.ndarray | jax.Array:
  """SMLD's geometric noise ladder sigma_i = exp(linspace(log sigma_min, log sigma_max, N)):
  (N,), the one formula for it (Song and Ermon 2019).

  descending=False, xp=np: the process's table, ascending, float64 (VESDE.chain).
  descending=True, xp=jnp: score_sde's models/utils.get_sigmas, index 0 = sigma_max,
  computed as it does (linspace from log sigma_max, float32), so a network's
  1/sigma[label] equals score_sde's bit for bit. The two orders are computed, not
  reversed, because a reversed linspace differs in the last bit.
  """
  lo, hi = xp.log(sigma_min), xp.log(sigma_max)
  return xp.exp(xp.linspace(hi, lo, N) if descending else xp.linspace(lo, hi, N))


class SMLDChain(AbstractChain):
  """SMLD's noise ladder: x_i = x_0 + sigma_i z with ascending sigmas (sigma_{-1} = 0).

  Args:
    sigmas: sigma_0 < ... < sigma_{N-1}; score_sde's VE uses the geometric ladder
      `smld_sigmas(sigma_min, sigma_max, N)`.
    T: end time of the continuous process.
  """

  def __init__(self, sigmas: np.ndarray, T: float = 1.0):
    sigmas = np.asarray(sigmas, np.float64)
    super().__init__(sigmas.shape[0], T)
    self.sigmas = sigmas

  def _sigma_and_below(self, t: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    i = self.index(t)
    sigmas = jnp.asarray(self.sigmas, dtype)
    return sigmas[i], jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])

  def marginal(self, i):
    return jnp.ones(jnp.shape(i), jnp.float32), jnp.asarray(self.sigmas, jnp.float32)[i]

  def discretize(self, x, t):
    """f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2)."""
    sigma, below = self._sigma_and_below(t, x.dtype)
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - below**2)

  def ancestral_step(self, x, score, t):
    """Eq. 48: x_mean = x + (sigma_i^2 - sigma_{i-1}^2) score,
    std = sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2)."""
    sigma, below = self._sigma_and_below(t, x.dtype)
    x_mean = x + batch_mul(sigma**2 - below**2, score)
    return x_mean, jnp.sqrt(below**2 * (sigma**2 - below**2) / sigma**2)

  def langevin_alpha(self, t):
    return jnp.ones_like(t)
