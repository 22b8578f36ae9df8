"""Correctors of the predictor-corrector sampler (Song et al. 2021, Sec. 4.2, Algs. 4-5),
one class each, registered by name in `CORRECTORS` (`get_corrector`)."""
from __future__ import annotations

import abc
from typing import ClassVar

import jax
import jax.numpy as jnp

from common.choices import lookup
from common.errors import UserError
from sde_lib.base import AbstractSDE, ModelFn, batch_mul


def _langevin_alpha(sde: AbstractSDE, t: jax.Array) -> jax.Array:
  """The process's Langevin alpha (DDPM's alpha_i for VP and sub-VP, 1 for VE), or 1 where
  it defines none (rectified flow): (B,)."""
  alpha = sde.langevin_alpha(t)
  return jnp.ones_like(t) if alpha is None else alpha


def _per_example_norm(v: jax.Array) -> jax.Array:
  return jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)


class AbstractCorrector(abc.ABC):
  """`n_steps` Langevin steps at fixed t targeting signal-to-noise ratio `snr`.

  Args:
    sde: the forward process.
    model_fn: `model_fn(x, t)` returning the process's native quantity.
    snr: the target signal-to-noise ratio r of Alg. 5.
    n_steps: Langevin steps per call (score_sde's n_steps_each).

  A corrector runs `n_steps` of score-based MCMC (Langevin dynamics) at a fixed time t, to
  pull x towards p_t. Every corrector is a small class with one method,

      update(key, x, t) -> (x, x_mean),   x: (B, ...), t: (B,),

  where x_mean is the last Langevin step without its noise. `CORRECTORS` maps each name to
  its class; `get_corrector` is the one place that turns a name into a class.
  """

  #: model evaluations per Langevin step.
  nfe: ClassVar[int] = 1

  def __init__(self, sde: AbstractSDE, model_fn: ModelFn, snr: float | jax.Array,
               n_steps: int):
    self.check(sde)
    self.sde = sde
    self.model_fn = model_fn
    self.snr = snr
    self.n_steps = int(n_steps)

  @classmethod
  def check(cls, sde: AbstractSDE) -> None:
    """Raises UserError if this corrector is undefined for `sde`."""

  def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.sde.score_from_native(self.model_fn(x, t), x, t)

  @abc.abstractmethod
  def step_size(self, grad: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Langevin step size epsilon: (B,)."""

  def update(self, key: jax.Array, x: jax.Array, t: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """n_steps of x <- x + eps score(x, t) + sqrt(2 eps) z: x (B, ...), t (B,)."""

    def body(i, carry):
      x, _ = carry
      grad = self.score(x, t)
      noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
      step = self.step_size(grad, noise, t)
      x_mean = x + batch_mul(step, grad)
      return x_mean + batch_mul(jnp.sqrt(2.0 * step), noise), x_mean

    # fori_loop keeps the compiled program one Langevin step long whatever n_steps is.
    return jax.lax.fori_loop(0, self.n_steps, body, (x, x))


class LangevinCorrector(AbstractCorrector):
  """Langevin corrector (Song et al. 2021, Alg. 5).

  epsilon = 2 alpha (r ||z|| / ||score||)^2, where ||.|| is the mean over the batch of the
  per-example L2 norms, as in score_sde. The batch is the one this call sees: there is no
  cross-device mean, so samples do not depend on how many devices share the batch.
  """

  def step_size(self, grad, noise, t):
    grad_norm = jnp.mean(_per_example_norm(grad))
    noise_norm = jnp.mean(_per_example_norm(noise))
    return 2.0 * _langevin_alpha(self.sde, t) * (self.snr * noise_norm / grad_norm)**2


class AnnealedLangevinCorrector(AbstractCorrector):
  """Annealed Langevin dynamics of NCSN (Song and Ermon 2019, Alg. 1), as in score_sde:

  epsilon = 2 alpha (r sigma(t))^2, with sigma(t) the marginal std of p_0t. Defined where
  the process has a Langevin alpha (`sde.langevin_alpha` is not None): the VP, sub-VP and
  VE SDEs, as in score_sde.
  """

  @classmethod
  def check(cls, sde):
    with jax.ensure_compile_time_eval():
      undefined = sde.langevin_alpha(jnp.zeros((1,))) is None
    if undefined:
      raise UserError(f"corrector 'ald' is defined only for the VP, sub-VP and VE SDEs "
                      f"(as in score_sde), not for {type(sde).__name__}; use 'langevin' "
                      f"or 'none'")

  def step_size(self, grad, noise, t):
    _, std = self.sde.alpha_sigma(t)
    return 2.0 * _langevin_alpha(self.sde, t) * (self.snr * std)**2


class NoneCorrector(AbstractCorrector):
  """No corrector: leaves x unchanged."""

  nfe = 0

  def step_size(self, grad, noise, t):
    return jnp.zeros_like(t)

  def update(self, key, x, t):
    return x, x


CORRECTORS: dict[str, type[AbstractCorrector]] = {
    "langevin": LangevinCorrector,
    "ald": AnnealedLangevinCorrector,
    "none": NoneCorrector,
}


def get_corrector(name: str) -> type[AbstractCorrector]:
  """The corrector class registered as `name` (case-insensitive)."""
  return lookup(CORRECTORS, str(name).lower(), "corrector")
