"""Exact quantities for Gaussian data N(mean, std^2 I) under any process in sde_lib: with
x_t | x_0 ~ N(alpha x_0, sigma^2 I) the marginal is N(alpha m, (alpha^2 s^2 + sigma^2) I),
so its score and log-density are closed forms that tests of samplers, likelihoods and
training compare against."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.base import AbstractSDE, ModelFn, batch_mul


def gaussian_marginal(sde: AbstractSDE, t: jax.Array, mean, std
                      ) -> tuple[jax.Array, jax.Array]:
  """Per-example mean scale alpha(t) m and std sqrt(alpha^2 s^2 + sigma^2) of p_t.

  `mean` broadcasts against x's event shape; returns (alpha (B,), marginal std (B,)).
  """
  alpha, sigma = sde.alpha_sigma(t)
  return alpha, jnp.sqrt(alpha**2 * std**2 + sigma**2)


def gaussian_score(sde: AbstractSDE, x: jax.Array, t: jax.Array, mean, std) -> jax.Array:
  """grad_x log p_t(x) for data N(mean, std^2 I): -(x - alpha m) / (alpha^2 s^2 + sigma^2)."""
  alpha, marg_std = gaussian_marginal(sde, t, mean, std)
  centred = x - batch_mul(alpha, jnp.broadcast_to(mean, x.shape))
  return -batch_mul(1.0 / marg_std**2, centred)


def gaussian_velocity(sde: AbstractSDE, x: jax.Array, t: jax.Array, mean, std
                      ) -> jax.Array:
  """E[d/dt (alpha x_0 + sigma z) | x_t = x] for data N(mean, std^2 I): the velocity of the
  interpolation, alpha' E[x_0|x] + sigma' E[z|x], with
  E[x_0|x] = m + alpha s^2 (x - alpha m) / V,  E[z|x] = sigma (x - alpha m) / V,
  V = alpha^2 s^2 + sigma^2, and alpha', sigma' by autodiff. Finite at t = T, where going
  through the score would divide by zero for rectified flow."""
  (alpha, sigma), (dalpha, dsigma) = jax.jvp(sde.alpha_sigma, (t,), (jnp.ones_like(t),))
  m = jnp.broadcast_to(mean, x.shape)
  centred = x - batch_mul(alpha, m)
  var = alpha**2 * std**2 + sigma**2
  e_x0 = m + batch_mul(alpha * std**2 / var, centred)
  e_z = batch_mul(sigma / var, centred)
  return batch_mul(dalpha, e_x0) + batch_mul(dsigma, e_z)


def gaussian_denoiser(sde: AbstractSDE, x: jax.Array, t: jax.Array, mean, std
                      ) -> jax.Array:
  """E[x_0 | x_t = x] for data N(mean, std^2 I): m + alpha s^2 (x - alpha m) / V,
  V = alpha^2 s^2 + sigma^2 (Tweedie); EDM's ideal denoiser D(x; sigma) for the EDM
  process (alpha = 1, sigma = t). x.shape."""
  alpha, marg_std = gaussian_marginal(sde, t, mean, std)
  m = jnp.broadcast_to(mean, x.shape)
  return m + batch_mul(alpha * std**2 / marg_std**2, x - batch_mul(alpha, m))


def gaussian_model_fn(sde: AbstractSDE, mean, std) -> ModelFn:
  """The exact native model function (score; velocity for rectified flow; the denoiser
  E[x_0 | x] for EDM's process)."""

  def model_fn(x, t):
    if sde.native == "velocity":
      return gaussian_velocity(sde, x, t, mean, std)
    if sde.native == "denoiser":
      return gaussian_denoiser(sde, x, t, mean, std)
    return gaussian_score(sde, x, t, mean, std)

  return model_fn


def gaussian_logp(sde: AbstractSDE, x: jax.Array, t: jax.Array, mean, std) -> jax.Array:
  """log p_t(x) in nats: (B,)."""
  alpha, marg_std = gaussian_marginal(sde, t, mean, std)
  d = np.prod(x.shape[1:])
  centred = (x - batch_mul(alpha, jnp.broadcast_to(mean, x.shape))).reshape(x.shape[0], -1)
  return (-0.5 * d * jnp.log(2 * np.pi * marg_std**2)
          - 0.5 * jnp.sum(centred**2, axis=1) / marg_std**2)
