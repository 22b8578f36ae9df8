"""DDPM-style building blocks (Ho et al. 2020), shared by DDPM, DDPM++ and NCSN++, with
DDPM's initialisation as score_sde ports it (`default_init`)."""
from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from models import conv as conv_lib
from models import matmul
from models import up_or_down_sampling as updown
from models.refinenet_layers import get_act  # noqa: F401  (re-exported for the nets)

Activation = Callable[[jax.Array], jax.Array]


class InitKeys:
  """A deterministic sequence of parameter-initialisation keys: fold_in(root, i), i = 0, 1, ...

  The layers here draw their keys from this instead of an nnx.Rngs stream. Why: every
  draw from an nnx.Rngs stream updates its counter Variable, and under tracing
  (nnx.eval_shape, jit) flax 0.12 compares the shardings of the old and new counters, which
  on a tracer builds an error message whose cost grows with the whole trace; for the
  ~1000-parameter-array networks here that made abstract initialisation take minutes.
  A network draws one root key from its nnx.Rngs and derives the rest here. Duck-types
  nnx.Rngs's `params()`.
  """

  def __init__(self, root: jax.Array):
    self.root = root
    self.count = 0

  def params(self) -> jax.Array:
    key = jax.random.fold_in(self.root, self.count)
    self.count += 1
    return key

  @classmethod
  def from_rngs(cls, rngs: "nnx.Rngs | InitKeys") -> "InitKeys":
    """Reuses an InitKeys; seeds a new one with a single draw from an nnx.Rngs."""
    return rngs if isinstance(rngs, InitKeys) else cls(rngs.params())


Rngs = Union[nnx.Rngs, InitKeys]


def default_init(scale: float = 1.0) -> nnx.Initializer:
  """DDPM's initializer: variance_scaling(scale, 'fan_avg', 'uniform').

  A zero scale becomes 1e-10, which keeps the weights (nearly) zero but non-degenerate.

  All modules take NHWC inputs, keep float32 parameters and compute in `dtype` (float32 or
  bfloat16). Initialisation follows DDPM's TensorFlow code as score_sde ports it:
  variance scaling with fan_avg and a uniform distribution (`default_init`), zero biases,
  and an init scale of (almost) zero on the last layer of every residual branch, so that
  each block starts as the identity.
  """
  return nnx.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg",
                                           "uniform")


class Conv(nnx.Module):
  """2-D convolution, NHWC, 'SAME' padding (TensorFlow's: with stride 2 the extra row and
  column of padding go at the end). kernel (k, k, in, out) float32, bias zeros."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int = 1, use_bias: bool = True,
               kernel_init: nnx.Initializer | None = None,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    kernel_init = kernel_init or default_init()
    self.stride = stride
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (kernel_size, kernel_size, in_features, out_features), jnp.float32))
    self.bias = (nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias
                 else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = conv_lib.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype), (self.stride, self.stride),
        "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Dense(nnx.Module):
  """Fully-connected layer: x (..., in) @ kernel (in, out) + bias; DDPM init, zero bias."""

  def __init__(self, in_features: int, out_features: int, *,
               kernel_init: nnx.Initializer | None = None,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    kernel_init = kernel_init or default_init()
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features),
                                        jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return (x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
            + self.bias[...].astype(self.dtype))


class GroupNorm(nnx.Module):
  """Group normalisation (Wu & He 2018) of NHWC features, statistics in float32.

  x: (B, H, W, C); channels split into num_groups groups, each normalised over (H, W,
  channels of the group), then a per-channel scale (ones) and bias (zeros). epsilon 1e-6
  as Flax's GroupNorm, which score_sde uses.
  """

  def __init__(self, num_features: int, num_groups: int = 32, *, epsilon: float = 1e-6,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs | None = None):
    del rngs  # scale and bias start at one and zero
    if num_features % num_groups:
      raise ValueError(f"{num_groups} groups do not divide {num_features} channels")
    self.num_groups, self.epsilon, self.dtype = num_groups, epsilon, dtype
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """The two-pass statistics, summed per channel first.

    mean_g = sum over (positions, channels of g) of x / n, var_g = sum (x - mean_g)^2 / n,
    y = (x - mean_g) rsqrt(var_g + eps) scale_c + bias_c, with n = positions * C / G.
    Each sum runs over the positions of a (B, positions, C) view first (the channel axis
    stays minor and contiguous) and only then over the C / G channels of a group; reducing
    a (B, H, W, G, C / G) view over axes (1, 2, 4) in one go took XLA's CPU backend 4-7x
    longer (BENCHMARKS.md, "Side by side with score_sde_pytorch"). The same two-pass
    formula, so the same round-off up to summation order.
    """
    b, *mid, c = x.shape
    g = self.num_groups
    n = int(np.prod(mid, dtype=np.int64)) * (c // g)
    xf = x.astype(jnp.float32).reshape(b, -1, c)

    def per_group(per_channel: jax.Array) -> jax.Array:  # (B, C) -> (B, C), group sums / n
      sums = per_channel.reshape(b, g, c // g).sum(-1) / n
      return jnp.repeat(sums, c // g, axis=1)

    mean = per_group(xf.sum(1))[:, None, :]
    var = per_group(jnp.square(xf - mean).sum(1))[:, None, :]
    a = lax.rsqrt(var + self.epsilon) * self.scale[...]
    y = xf * a + (self.bias[...] - mean * a)
    return y.reshape(x.shape).astype(self.dtype)


def conv1x1(in_features: int, out_features: int, *, stride: int = 1,
            use_bias: bool = True, init_scale: float = 1.0,
            dtype: jnp.dtype = jnp.float32, rngs: Rngs) -> Conv:
  """1x1 convolution with DDPM initialisation (score_sde's ddpm_conv1x1)."""
  return Conv(in_features, out_features, 1, stride=stride, use_bias=use_bias,
              kernel_init=default_init(init_scale), dtype=dtype, rngs=rngs)


def conv3x3(in_features: int, out_features: int, *, stride: int = 1,
            use_bias: bool = True, init_scale: float = 1.0,
            dtype: jnp.dtype = jnp.float32, rngs: Rngs) -> Conv:
  """3x3 'SAME' convolution with DDPM initialisation (score_sde's ddpm_conv3x3)."""
  return Conv(in_features, out_features, 3, stride=stride, use_bias=use_bias,
              kernel_init=default_init(init_scale), dtype=dtype, rngs=rngs)


def dense(in_features: int, out_features: int, *, dtype: jnp.dtype = jnp.float32,
          rngs: Rngs) -> Dense:
  """Fully-connected layer with DDPM initialisation (time-embedding MLP, temb projection)."""
  return Dense(in_features, out_features, dtype=dtype, rngs=rngs)


def group_norm(num_features: int, num_groups: int | None = None, *,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs | None = None) -> GroupNorm:
  """GroupNorm; num_groups=None means DDPM++'s rule min(C // 4, 32), DDPM uses 32."""
  if num_groups is None:
    num_groups = min(num_features // 4, 32)
  return GroupNorm(num_features, num_groups, dtype=dtype)


class NIN(nnx.Module):
  """Network-in-network: a per-pixel linear map over the channel axis.

  x: (..., in_dim) -> (..., num_units); W (in_dim, num_units) with DDPM init (scale 0.1
  by default, DDPM's choice for attention projections), b zeros.
  """

  def __init__(self, in_dim: int, num_units: int, *, init_scale: float = 0.1,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    self.dtype = dtype
    self.W = nnx.Param(default_init(init_scale)(rngs.params(), (in_dim, num_units),
                                                 jnp.float32))
    self.b = nnx.Param(jnp.zeros((num_units,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    return (matmul.per_position(x, self.W[...].astype(self.dtype))
            + self.b[...].astype(self.dtype))


class AttnBlock(nnx.Module):
  """Self-attention over all H*W positions, single head (DDPM's AttnBlock).

  x: (B, H, W, C) -> (B, H, W, C): x + NIN(softmax(q k^T / sqrt(C)) v), with q, k, v
  per-pixel projections of GroupNorm(x). The output projection starts at ~0
  (init_scale), so the block starts as the identity. With skip_rescale the sum is divided
  by sqrt(2) (DDPM++/NCSN++, Song et al. 2021 appendix H). num_groups=None uses
  min(C // 4, 32) groups (DDPM++), DDPM uses 32.
  """

  def __init__(self, channels: int, *, num_groups: int | None = 32,
               skip_rescale: bool = False, init_scale: float = 0.0,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    rngs = InitKeys.from_rngs(rngs)
    self.skip_rescale = skip_rescale
    self.dtype = dtype
    self.norm = group_norm(channels, num_groups, dtype=dtype, rngs=rngs)
    self.q = NIN(channels, channels, dtype=dtype, rngs=rngs)
    self.k = NIN(channels, channels, dtype=dtype, rngs=rngs)
    self.v = NIN(channels, channels, dtype=dtype, rngs=rngs)
    self.out = NIN(channels, channels, init_scale=init_scale, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, hh, ww, c = x.shape
    h = self.norm(x)
    q = self.q(h).reshape(b, hh * ww, c)
    k = self.k(h).reshape(b, hh * ww, c)
    v = self.v(h).reshape(b, hh * ww, c)
    # Softmax in float32: bfloat16 logits lose the small differences that matter here.
    logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * (c ** -0.5)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum("bij,bjc->bic", w, v).reshape(b, hh, ww, c)
    h = self.out(h)
    out = x.astype(h.dtype) + h
    return out / np.sqrt(2.0) if self.skip_rescale else out


class Upsample(nnx.Module):
  """DDPM's 2x nearest-neighbour upsampling, optionally followed by a 3x3 conv."""

  def __init__(self, channels: int, *, with_conv: bool = False,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    self.conv = conv3x3(channels, channels, dtype=dtype, rngs=rngs) if with_conv else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = updown.naive_upsample_2d(x, 2)
    return self.conv(h) if self.conv is not None else h


class Downsample(nnx.Module):
  """DDPM's 2x downsampling: a stride-2 3x3 conv, or 2x2 average pooling."""

  def __init__(self, channels: int, *, with_conv: bool = False,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    self.conv = (conv3x3(channels, channels, stride=2, dtype=dtype, rngs=rngs)
                 if with_conv else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.conv is not None:
      return self.conv(x)
    return updown.naive_downsample_2d(x, 2)


def apply_dropout(dropout: nnx.Dropout, h: jax.Array, train: bool,
                  key: jax.Array | None) -> jax.Array:
  """Dropout with an explicit key; identity unless train=True and the rate is > 0."""
  if not train or dropout.rate == 0:
    return h
  if key is None:
    raise ValueError("train=True with dropout > 0 needs a dropout `key`")
  return dropout(h, deterministic=False, rngs=key)


class ResnetBlockDDPM(nnx.Module):
  """DDPM's residual block (Ho et al. 2020, appendix B), conditioned on a time embedding.

  x: (B, H, W, in_ch), temb: (B, temb_dim) or None -> (B, H, W, out_ch):
    h = conv3x3(act(GN(x))) + Dense(act(temb))[:, None, None, :]
    h = conv3x3_{init 0}(dropout(act(GN(h))))
    out = shortcut(x) + h,  shortcut = identity, or NIN / conv3x3 if in_ch != out_ch.
  GroupNorm uses 32 groups, as DDPM.
  """

  def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
               act: Activation = jax.nn.swish, conv_shortcut: bool = False,
               dropout: float = 0.1, dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    rngs = InitKeys.from_rngs(rngs)
    out_ch = out_ch or in_ch
    self.act = act
    self.norm0 = group_norm(in_ch, 32, dtype=dtype, rngs=rngs)
    self.conv0 = conv3x3(in_ch, out_ch, dtype=dtype, rngs=rngs)
    self.temb_proj = (dense(temb_dim, out_ch, dtype=dtype, rngs=rngs)
                      if temb_dim is not None else None)
    self.norm1 = group_norm(out_ch, 32, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.conv1 = conv3x3(out_ch, out_ch, init_scale=0.0, dtype=dtype, rngs=rngs)
    if in_ch == out_ch:
      self.shortcut = None
    elif conv_shortcut:
      self.shortcut = conv3x3(in_ch, out_ch, dtype=dtype, rngs=rngs)
    else:
      self.shortcut = NIN(in_ch, out_ch, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, temb: jax.Array | None = None, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    h = self.conv0(self.act(self.norm0(x)))
    if temb is not None and self.temb_proj is not None:
      h = h + self.temb_proj(self.act(temb))[:, None, None, :]
    h = self.act(self.norm1(h))
    h = apply_dropout(self.dropout, h, train, key)
    h = self.conv1(h)
    if self.shortcut is not None:
      x = self.shortcut(x)
    return x.astype(h.dtype) + h
