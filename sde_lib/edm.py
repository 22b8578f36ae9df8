"""EDM's process (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): sigma(t) = t, s(t) = 1, so x_t = x_0 + t z and time is the noise level."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from common.errors import UserError
from sde_lib.base import AbstractSDE, _check_t, batch_mul, standard_normal_logp


class EDM(AbstractSDE):
  """EDM's ODE/SDE with sigma(t) = t and s(t) = 1 (Karras et al. 2022, Table 1, "Ours").

  The forward SDE is dx = sqrt(2 t) dw on t in [0, T], T = sigma_max (EDM: 80): f = 0 and
  g(t)^2 = d sigma(t)^2 / dt = 2 t (eq. 6 with s = 1), so x_t | x_0 ~ N(x_0, t^2 I)
  (alpha = 1, sigma = t) and the prior is N(0, sigma_max^2 I). Its probability-flow ODE
  is EDM's eq. 3, dx/dt = -t score = (x - D(x; t)) / t.

  Native quantity: EDM's denoiser D(x; sigma) = E[x_0 | x_t = x] at sigma = t (eq. 2-3),
  which is what EDM's networks (models/edm_precond.py's c_skip x + c_out F) output, so a
  network's output is the native quantity as it is; the other conversions are closed forms
      score = (D - x) / t^2,   eps = (x - D) / t,   x_0 = D.
  The network is fed the noise level sigma = t (`network_labels`); EDM's c_noise =
  ln(sigma) / 4 is applied inside the preconditioning, not here.

  sigma_min (EDM: 0.002) is the smallest noise level samplers go down to (the `eps` of
  the samplers; EDM's edm_sampler steps from sigma_min to 0 with x = D). The process has
  no discrete chain (`chain` is None): ancestral sampling and the discrete losses are
  undefined and raise UserError. The default `discretize` is Euler-Maruyama with step
  T / N in t = sigma; the Langevin step size uses alpha = 1, as for VE.
  """

  process_name = "EDM process"

  native = "denoiser"

  def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise UserError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                      f"sigma_max={sigma_max}")
    self.sigma_min = float(sigma_min)
    self.sigma_max = float(sigma_max)

  def _hparams(self) -> tuple:
    return (type(self).__name__, self.sigma_min, self.sigma_max, self.N)

  @property
  def T(self) -> float:
    return self.sigma_max

  def sigma(self, t: jax.Array) -> jax.Array:
    """sigma(t) = t: (B,)."""
    return t

  def sde(self, x, t):
    _check_t(x, t)
    return jnp.zeros_like(x), jnp.sqrt(2.0 * t)

  def marginal_prob(self, x0, t):
    _check_t(x0, t)
    return x0, t

  def alpha_sigma(self, t):
    return jnp.ones_like(t), t

  def log_snr(self, t):
    # alpha = 1: lambda = -log sigma = -log t.
    return -jnp.log(t)

  def t_from_log_snr(self, lam):
    return jnp.exp(-lam)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape) * self.sigma_max

  def prior_logp(self, z):
    return standard_normal_logp(z, self.sigma_max)

  def langevin_alpha(self, t):
    return jnp.ones_like(t)

  # Closed forms in D (x = x_0 + t eps).
  def score_from_native(self, native, x, t):
    return batch_mul(1.0 / t**2, native - x)

  def native_from_score(self, score, x, t):
    return x + batch_mul(t**2, score)

  def eps_from_native(self, native, x, t):
    return batch_mul(1.0 / t, x - native)

  def native_from_eps(self, eps, x, t):
    return x - batch_mul(t, eps)

  def x0_from_native(self, native, x, t):
    return native

  def native_from_x0(self, x0, x, t):
    return x0

  def network_labels(self, t, continuous=True):
    # The noise level itself; EDM's preconditioning maps it to c_noise = ln(sigma) / 4.
    return self.sigma(t)

  def native_from_network(self, out, x, t, continuous=True):
    """The network (with EDM's preconditioning) predicts the denoiser D itself."""
    return out

  def probability_flow_drift(self, native, x, t):
    # EDM's eq. 3 with s = 1, sigma = t: dx/dt = (x - D) / t (= -t score, without the
    # division by t^2 and multiplication by t).
    return batch_mul(1.0 / t, x - native)
