"""Turning a network's output into the process's native quantity.

`get_score_fn(sde, model, ...)` returns `model_fn(x, t)`: the score grad log p_t(x) for
VP, sub-VP and VE, the velocity dx/dt for rectified flow (DESIGN.md). It follows the
score-SDE code's conventions for what the network is fed and what it predicts:

| process            | continuous label   | discrete label               | network predicts      |
|--------------------|--------------------|------------------------------|-----------------------|
| VP, sub-VP         | 999 t              | (N - 1) t (DDPM index)       | noise eps; score = -eps / std |
| VE                 | sigma(t)           | round((T - t)(N - 1)) (NCSN) | the score (scaled by 1/sigma inside the net if scale_by_sigma) |
| rectified flow     | 999 t              | 999 t                        | the velocity          |

The returned function is an equinox Module holding the network as a pytree, so it can be
passed to jitted samplers as an argument: new parameters do not recompile.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

from sde_lib import VESDE, AbstractSDE, RectifiedFlow, SubVPSDE, VPSDE
from sde_lib.base import batch_mul


class ModelFn(eqx.Module):
  """The raw network as a function of (x, labels): `model(x, labels, train, key)`."""

  model: nnx.Module
  train: bool = eqx.field(static=True, default=False)
  key: jax.Array | None = None

  def __call__(self, x: jax.Array, labels: jax.Array) -> jax.Array:
    return self.model(x, labels, train=self.train, key=self.key)


def get_model_fn(model: nnx.Module, train: bool = False,
                 key: jax.Array | None = None) -> ModelFn:
  """The network itself as `fn(x, labels)`; dropout uses `key` when train=True."""
  return ModelFn(model, train, key)


class ScoreFn(eqx.Module):
  """`model_fn(x, t)` returning the native quantity of `sde` (see module docstring)."""

  net: ModelFn
  sde: AbstractSDE = eqx.field(static=True)
  continuous: bool = eqx.field(static=True, default=True)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    sde = self.sde
    if isinstance(sde, RectifiedFlow):
      return self.net(x, t * 999)
    if isinstance(sde, VPSDE):  # VP and sub-VP: the network predicts the noise.
      if self.continuous or isinstance(sde, SubVPSDE):
        labels = t * 999
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = t * (sde.N - 1)
        std = jnp.asarray(sde.sqrt_1m_alphas_cumprod, jnp.float32)[
            jnp.round(labels).astype(jnp.int32)]
      return -batch_mul(1.0 / std, self.net(x, labels))
    if isinstance(sde, VESDE):
      if self.continuous:
        labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = jnp.round((sde.T - t) * (sde.N - 1))
      return self.net(x, labels)
    raise NotImplementedError(f"no parameterization for SDE {type(sde).__name__}")


def get_score_fn(sde: AbstractSDE, model: nnx.Module, train: bool = False,
                 continuous: bool = True, key: jax.Array | None = None) -> ScoreFn:
  """`model_fn(x, t) -> native quantity` of `sde` from a network (score_sde's name).

  For rectified flow the native quantity is the velocity, not the score.
  """
  return ScoreFn(get_model_fn(model, train, key), sde, continuous)
