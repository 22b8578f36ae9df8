"""Rectified flow (Liu, Gong and Liu, ICLR 2023) in the project's time direction: t = 0 is
data, t = 1 the prior."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE, _check_t, batch_mul, standard_normal_logp
from common.errors import UserError


class RectifiedFlow(AbstractSDE):
  """The interpolation x_t = (1 - t) x_0 + t z, z ~ N(0, I), t in [0, 1].

  The native model quantity is the velocity v(x, t) = E[z - x_0 | x_t], and sampling
  integrates dx/dt = v from t = 1 down to 0. Its marginals x_t | x_0 ~ N((1 - t) x_0,
  t^2 I) are also those of the SDE
      dx = -x / (1 - t) dt + sqrt(2 t / (1 - t)) dw
  (alpha = 1 - t, sigma = t: f = d log alpha / dt, g^2 = d sigma^2/dt - 2 f sigma^2), whose
  probability-flow ODE is exactly dx/dt = v. That identity,
      v = f x - g^2 / 2 * score   <=>   score = -(x + (1 - t) v) / t,
  converts between the velocity and the score, so every sampler and the likelihood apply
  to rectified flow as to the SDEs. The SDE is singular at t = 1: stochastic samplers must
  start from T - eps; the probability flow (the velocity itself) is not.
  """

  process_name = "rectified flow"

  native = "velocity"

  # gnobitab/RectifiedFlow: data at t_RF = 1, x = t_RF x_1 + (1 - t_RF) z.
  reference_time_reversed = True

  def __init__(self, N: int = 1000):
    super().__init__(N)

  @property
  def T(self) -> float:
    return 1.0

  def sde(self, x, t):
    _check_t(x, t)
    return batch_mul(-1.0 / (1.0 - t), x), jnp.sqrt(2.0 * t / (1.0 - t))

  def marginal_prob(self, x0, t):
    _check_t(x0, t)
    return batch_mul(1.0 - t, x0), t

  def log_snr(self, t):
    # alpha = 1 - t, sigma = t.
    return jnp.log1p(-t) - jnp.log(t)

  def t_from_log_snr(self, lam):
    return jax.nn.sigmoid(-lam)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return standard_normal_logp(z)

  # The conversions in closed form in the velocity v = eps - x_0 (x = (1 - t) x_0 + t eps),
  # so that t = 1 (x_0 from v) and t = 0 (eps from v) stay finite.
  def score_from_native(self, native, x, t):
    return -batch_mul(1.0 / t, x + batch_mul(1.0 - t, native))

  def native_from_score(self, score, x, t):
    return -batch_mul(1.0 / (1.0 - t), x + batch_mul(t, score))

  def eps_from_native(self, native, x, t):
    return x + batch_mul(1.0 - t, native)

  def native_from_eps(self, eps, x, t):
    return batch_mul(1.0 / (1.0 - t), eps - x)

  def x0_from_native(self, native, x, t):
    return x - batch_mul(t, native)

  def native_from_x0(self, x0, x, t):
    return batch_mul(1.0 / t, x - x0)

  def network_labels(self, t, continuous=True):
    # The network is conditioned on 999 t, as the VP networks it borrows.
    return t * 999

  def native_from_network(self, out, x, t, continuous=True):
    """The network predicts the velocity itself."""
    return out

  def denoising_residual(self, native, x0, z, t):
    """Velocity matching (Liu, Gong & Liu 2023, eq. 1): r = v - (z - x_0)."""
    return native - (z - x0)

  def likelihood_weight(self, t):
    raise UserError("likelihood_weighting applies to the SDE losses, not to rectified "
                    "flow; set config.training.likelihood_weighting = False")

  def train_time_range(self, eps):
    # Both ends kept eps away, so that labels such as log(t) stay finite.
    return eps, self.T - eps

  def probability_flow_drift(self, native, x, t):
    # The flow's drift is the velocity itself; going through the score would divide by
    # t and by 1 - t.
    return native
