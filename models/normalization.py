"""Normalization layers of NCSN / NCSNv2 (Song & Ermon 2019, 2020) on NHWC arrays, with
statistics per example and channel in float32 (InstanceNorm++: `InstanceNorm2dPlus`)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from common.choices import lookup


EPS = 1e-5

# A normalization factory: `make(num_features, rngs=...) -> module`.
NormFactory = Callable[..., nnx.Module]


def _near_one(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(1, 0.02^2): the NCSN initialization of the gamma and alpha scales."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, jnp.float32)


def _instance_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-(example, channel) mean and biased variance over (H, W): each (B, C), float32."""
  x = x.astype(jnp.float32)
  return jnp.mean(x, axis=(1, 2)), jnp.var(x, axis=(1, 2))


def _instance_norm_plus(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x - mu_c) / sqrt(s_c^2 + eps) and the standardized channel means.

  The latter are (mu_c - m) / sqrt(v + eps), the alpha term's input.

  x: (B, H, W, C) -> ((B, H, W, C) float32, (B, C) float32).
  """
  means, variances = _instance_stats(x)
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True)
  means_plus = (means - m) / jnp.sqrt(v + EPS)
  h = ((x.astype(jnp.float32) - means[:, None, None, :])
       / jnp.sqrt(variances[:, None, None, :] + EPS))
  return h, means_plus


class InstanceNorm2d(nnx.Module):
  """Instance normalization: gamma_c (x - mu_c) / sqrt(s_c^2 + eps) + beta_c."""

  conditional = False

  def __init__(self, num_features: int, *, bias: bool = True,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    del rngs  # deterministic initialization
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    means, variances = _instance_stats(x)
    h = ((x.astype(jnp.float32) - means[:, None, None, :])
         / jnp.sqrt(variances[:, None, None, :] + EPS))
    h = h * self.scale[...]
    if self.bias is not None:
      h = h + self.bias[...]
    return h.astype(self.dtype)


class InstanceNorm2dPlus(nnx.Module):
  """InstanceNorm++ (below), unconditional: NCSNv2's normalization.

  All layers act on x of shape (B, H, W, C) and return the same shape. Statistics are
  taken per example and per channel over the spatial axes (H, W), as instance norm does,
  and always in float32, whatever the compute dtype: the variance of a bfloat16 feature map
  would lose most of its digits. Parameters are float32; the output is cast to `dtype`.

  InstanceNorm++ (Song & Ermon 2019, appendix A; NCSNv2 drops the conditioning):

      mu_c, s_c^2      = mean, variance of x[b, :, :, c] over (H, W)
      m, v             = mean, variance of (mu_1 ... mu_C) over channels
      x'[b, h, w, c]   = gamma_c * ((x - mu_c) / sqrt(s_c^2 + eps)
                                    + alpha_c * (mu_c - m) / sqrt(v + eps)) + beta_c

  Plain instance norm discards the channel means mu_c, which shifts the colours of the
  samples; the alpha term hands the relative channel means back. In the conditional form
  (NCSNv1) gamma, alpha, beta are looked up per noise level ("class") from an embedding.
  Variances are the biased (1/n) ones, as in score_sde's JAX code (the PyTorch NCSNv2 takes
  the unbiased variance across channels for v, a difference of a factor C / (C - 1) inside
  one square root).

  Every layer has a class attribute `conditional`; conditional layers are called as
  `norm(x, y)` with integer class labels y of shape (B,), the others as `norm(x)`.
  """

  conditional = False

  def __init__(self, num_features: int, *, bias: bool = True,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.alpha = nnx.Param(_near_one(rngs.params(), (num_features,)))
    self.gamma = nnx.Param(_near_one(rngs.params(), (num_features,)))
    self.beta = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h, means_plus = _instance_norm_plus(x)
    h = h + means_plus[:, None, None, :] * self.alpha[...]
    h = h * self.gamma[...]
    if self.beta is not None:
      h = h + self.beta[...]
    return h.astype(self.dtype)


class ConditionalInstanceNorm2dPlus(nnx.Module):
  """Conditional InstanceNorm++ (NCSNv1, Song & Ermon 2019 eq. in appendix A).

  gamma[y], alpha[y], beta[y] are rows of a (num_classes, 3 C) table (2 C without bias):
  gamma and alpha start at N(1, 0.02^2), beta at 0. x: (B, H, W, C), y: (B,) int in
  [0, num_classes) -> (B, H, W, C).
  """

  conditional = True

  def __init__(self, num_features: int, num_classes: int, *, bias: bool = True,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.num_features = num_features
    self.num_classes = num_classes
    self.use_bias = bias
    table = _near_one(rngs.params(), (num_classes, 2 * num_features))
    if bias:
      table = jnp.concatenate(
          [table, jnp.zeros((num_classes, num_features), jnp.float32)], axis=-1)
    # One table for all three so a label costs one gather (the layout of score_sde's Embed).
    self.embed = nnx.Param(table)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    h, means_plus = _instance_norm_plus(x)
    rows = jnp.take(self.embed[...], y.astype(jnp.int32), axis=0)
    c = self.num_features
    gamma, alpha = rows[:, :c], rows[:, c:2 * c]
    h = h + means_plus[:, None, None, :] * alpha[:, None, None, :]
    h = gamma[:, None, None, :] * h
    if self.use_bias:
      h = h + rows[:, None, None, 2 * c:]
    return h.astype(self.dtype)


class VarianceNorm2d(nnx.Module):
  """Variance normalization: gamma_c x / sqrt(s_c^2 + eps) (+ beta_c); the mean is kept."""

  conditional = False

  def __init__(self, num_features: int, *, bias: bool = False,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.scale = nnx.Param(_near_one(rngs.params(), (num_features,)))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    _, variances = _instance_stats(x)
    h = x.astype(jnp.float32) / jnp.sqrt(variances[:, None, None, :] + EPS)
    h = h * self.scale[...]
    if self.bias is not None:
      h = h + self.bias[...]
    return h.astype(self.dtype)


class GroupNorm(nnx.Module):
  """Group normalization, min(32, C) groups (flax's default count), float32 statistics."""

  conditional = False

  def __init__(self, num_features: int, *, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.norm = nnx.GroupNorm(num_features, num_groups=min(32, num_features),
                              epsilon=1e-6, dtype=jnp.float32,
                              param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(x.astype(jnp.float32)).astype(self.dtype)


_UNCONDITIONAL = {
    "InstanceNorm": InstanceNorm2d,
    "InstanceNorm++": InstanceNorm2dPlus,
    "VarianceNorm": VarianceNorm2d,
    "GroupNorm": GroupNorm,
}


def get_normalization(name: str, *, conditional: bool = False,
                      num_classes: int | None = None,
                      dtype: jnp.dtype = jnp.float32) -> NormFactory:
  """The factory `make(num_features, rngs=rngs)` for normalization `name`.

  name: 'InstanceNorm', 'InstanceNorm++', 'VarianceNorm', 'GroupNorm' (score_sde's
  config.model.normalization values); conditional=True (NCSNv1) exists for
  'InstanceNorm++' only and needs num_classes (the number of noise levels).
  """
  if conditional:
    if name != "InstanceNorm++":
      raise ValueError(f"conditional normalization {name!r} is not implemented; "
                       "only 'InstanceNorm++' has a conditional form")
    if num_classes is None:
      raise ValueError("conditional normalization needs num_classes")

    def make_conditional(num_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
      return ConditionalInstanceNorm2dPlus(num_features, num_classes, dtype=dtype,
                                           rngs=rngs)

    return make_conditional
  cls = lookup(_UNCONDITIONAL, name, "normalization (config.model.normalization)")

  def make(num_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
    return cls(num_features, dtype=dtype, rngs=rngs)

  return make
