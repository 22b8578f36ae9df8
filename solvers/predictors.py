"""Predictors of the predictor-corrector sampler (Song et al. 2021, Sec. 4.2, Algs. 1-4),
one class each, registered by name in `PREDICTORS` (`get_predictor`)."""
from __future__ import annotations

import abc
from typing import ClassVar

import jax
import jax.numpy as jnp

from common.choices import lookup
from common.errors import UserError
from sde_lib.base import AbstractSDE, ModelFn, batch_mul


class AbstractPredictor(abc.ABC):
  """One step of a reverse-time solver from t to t - dt.

  Args:
    sde: the forward process.
    model_fn: `model_fn(x, t)` returning the process's native quantity.
    probability_flow: step the probability-flow ODE instead of the reverse SDE.
    dt: the (positive) step in time; default T / N as in score_sde. Only predictors that
      step a continuous-time equation use it; the discrete-chain ones follow sde.N.

  A predictor advances x from grid time t to the next, smaller grid time with one step of a
  numerical solver of the reverse-time SDE (eq. 6) or, with probability_flow=True, of the
  probability-flow ODE (eq. 13). Every predictor is a small class with one method,

      update(key, x, t) -> (x, x_mean),   x: (B, ...), t: (B,),

  where x_mean is the step without its final noise (the sampler returns it after the last
  step when denoising). `PREDICTORS` maps each name to its class; `get_predictor` is the one
  place that turns a name into a class.
  """

  #: model evaluations per call of `update`.
  nfe: ClassVar[int] = 1

  def __init__(self, sde: AbstractSDE, model_fn: ModelFn, probability_flow: bool = False,
               dt: float | None = None):
    self.check(sde, probability_flow)
    self.sde = sde
    self.model_fn = model_fn
    self.probability_flow = probability_flow
    self.rsde = sde.reverse(model_fn, probability_flow)
    self.dt = sde.T / sde.N if dt is None else float(dt)

  @classmethod
  def check(cls, sde: AbstractSDE, probability_flow: bool) -> None:
    """Raises UserError if this predictor is undefined for (sde, probability_flow)."""

  @abc.abstractmethod
  def update(self, key: jax.Array, x: jax.Array, t: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """One step from t: x (B, ...), t (B,) -> (x, x_mean), both x.shape."""


class EulerMaruyamaPredictor(AbstractPredictor):
  """Euler-Maruyama on the reverse SDE (eq. 6), or Euler on the probability flow (eq. 13).

      x_mean = x - rev_drift(x, t) dt,   x = x_mean + g(t) sqrt(dt) z,   z ~ N(0, I),

  with rev_drift = f - g^2 score (f - g^2/2 score for the flow, which draws no noise).
  """

  def update(self, key, x, t):
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x - drift * self.dt
    if self.probability_flow:
      return x_mean, x_mean
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_mul(diffusion * jnp.sqrt(self.dt), z), x_mean


class ReverseDiffusionPredictor(AbstractPredictor):
  """The reverse of the forward discretization (Song et al. 2021, eq. 46 and App. E):

      x_mean = x - f_i + G_i^2 score(x, t),   x = x_mean + G_i z,

  with (f_i, G_i) = sde.discretize(x, t): DDPM's chain for VP, SMLD's for VE,
  Euler-Maruyama (step T / N) otherwise. With probability_flow=True, G_i^2 / 2 and no noise.
  """

  def update(self, key, x, t):
    rev_f, rev_G = self.rsde.discretize(x, t)
    x_mean = x - rev_f
    if self.probability_flow:
      return x_mean, x_mean
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_mul(rev_G, z), x_mean


class AncestralSamplingPredictor(AbstractPredictor):
  """Ancestral sampling of the process's discrete chain (Song et al. 2021, eqs. 47-48):
  `sde.chain.ancestral_step`, i.e.

  DDPM (VP): x_mean = (x + beta_i score) / sqrt(1 - beta_i), x = x_mean + sqrt(beta_i) z.
  SMLD (VE): x_mean = x + (sigma_i^2 - sigma_{i-1}^2) score,
  x = x_mean + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) z.
  Defined only for processes with a chain (sde.chain is not None), and only for the
  reverse SDE.
  """

  @classmethod
  def check(cls, sde, probability_flow):
    if sde.chain is None:
      raise UserError(
          f"predictor 'ancestral_sampling' samples a discrete chain (DDPM for VPSDE, SMLD "
          f"for VESDE); {type(sde).__name__} has none: use 'reverse_diffusion' or "
          f"'euler_maruyama'")
    if probability_flow:
      raise UserError("predictor 'ancestral_sampling' samples the discrete chain and has "
                      "no probability-flow version; use probability_flow=False")

  def update(self, key, x, t):
    score = self.sde.score_from_native(self.model_fn(x, t), x, t)
    x_mean, std = self.sde.chain.ancestral_step(x, score, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_mul(std, z), x_mean


class NonePredictor(AbstractPredictor):
  """No predictor: leaves x unchanged (corrector-only sampling)."""

  nfe = 0

  def update(self, key, x, t):
    return x, x


PREDICTORS: dict[str, type[AbstractPredictor]] = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}


def get_predictor(name: str) -> type[AbstractPredictor]:
  """The predictor class registered as `name` (case-insensitive)."""
  return lookup(PREDICTORS, str(name).lower(), "predictor")
