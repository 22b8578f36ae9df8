"""Building blocks of the NCSN / NCSNv2 RefineNet (Song & Ermon 2019, 2020; Lin et al. 2017)
on NHWC arrays: residual, RCU, CRP, MSF and Refine blocks, conditional or not (the list
and the initialization: `ResidualBlock`)."""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from common.choices import check_choice, lookup
from models import conv as conv_lib
from models.normalization import NormFactory

Activation = Callable[[jax.Array], jax.Array]

_ACTIVATIONS: dict[str, Activation] = {
    "elu": jax.nn.elu,
    "relu": jax.nn.relu,
    "lrelu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
    "swish": jax.nn.swish,
}


def get_act(name: str) -> Activation:
  """The nonlinearity named by config.model.nonlinearity: elu, relu, lrelu (0.2), swish."""
  return lookup(_ACTIVATIONS, name.lower(), "nonlinearity (config.model.nonlinearity)")


def ncsn_conv(in_features: int, out_features: int, kernel_size: int = 3, *,
              dilation: int = 1, use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
              rngs: nnx.Rngs) -> nnx.Conv:
  """Stride-1 'SAME' convolution with PyTorch's default init (NCSN's conv1x1 / conv3x3).

  PyTorch's kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)), i.e. variance scaling 1/3
  fan_in uniform; its bias is drawn from the same interval.
  """
  fan_in = kernel_size * kernel_size * in_features
  bound = 1.0 / math.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nnx.Conv(
      in_features, out_features, (kernel_size, kernel_size), padding="SAME",
      kernel_dilation=(dilation, dilation), use_bias=use_bias,
      kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
      bias_init=bias_init, dtype=dtype, param_dtype=jnp.float32,
      conv_general_dilated=conv_lib.conv_general_dilated, rngs=rngs)


def _norm(norm: nnx.Module, x: jax.Array, y: jax.Array | None) -> jax.Array:
  if getattr(norm, "conditional", False):
    if y is None:
      raise ValueError("a conditional normalization needs the class labels y")
    return norm(x, y)
  return norm(x)


def _mean_pool_2x2(x: jax.Array) -> jax.Array:
  """Average of each 2x2 patch: (B, H, W, C) -> (B, H/2, W/2, C); H, W even."""
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4


class ConvMeanPool(nnx.Module):
  """Convolution then 2x2 mean pooling: (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               use_bias: bool = True, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.conv = ncsn_conv(in_features, out_features, kernel_size, use_bias=use_bias,
                          dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return _mean_pool_2x2(self.conv(x))


class ResidualBlock(nnx.Module):
  """NCSNv2's pre-activation residual block (and NCSNv1's CondResidualBlock).

  resample=None:   h = conv2(act(norm2(conv1(act(norm1(x)))))) + shortcut(x), C_in -> C_out.
  resample='down': conv1 keeps C_in, conv2 maps to C_out. Without dilation conv2 and the
                   1x1 shortcut are ConvMeanPool (spatial size halves); with dilation > 1
                   both are dilated 3x3 convs and the spatial size is kept, the dilation
                   widening the receptive field instead (NCSNv2's deeper stages).
  The shortcut is the identity when C_in == C_out and resample is None, else a conv: 1x1
  (no dilation) or dilated 3x3.
  x: (B, H, W, C_in) -> (B, H', W', C_out). With a conditional normalization, call with y.
  NCSNv2 has no up-sampling residual block (its decoder is the RefineBlocks), so
  resample is None or 'down'.

  The score network of NCSNv2 is a RefineNet (Lin et al. 2017): a ResNet encoder whose
  deeper stages trade resolution for dilation, and a cascade of RefineBlocks that fuse each
  encoder stage with the coarser path. The blocks here:

  * `ResidualBlock`: pre-activation residual block (norm, act, conv, norm, act, conv) with
    optional dilation and 2x down-sampling (`ConvMeanPool`).
  * `RCUBlock`: residual conv unit, n_blocks x (n_stages x (act, conv)) + skip.
  * `CRPBlock`: chained residual pooling, n_stages x (5x5 stride-1 pool, conv), each added
    to the output.
  * `MSFBlock`: multi-resolution fusion, conv each input, resize to the finest, sum.
  * `RefineBlock`: RCU on each input, MSF, CRP, output RCU.

  Passing a *conditional* normalization (`ConditionalInstanceNorm2dPlus`) gives NCSNv1's
  noise-conditional forms (CondResidualBlock, CondRCUBlock, CondCRPBlock with average
  pooling, CondMSFBlock): normalization layers are inserted as in NCSNv1 and every call then
  takes the class labels y. NCSNv2 itself uses unconditional InstanceNorm++ in the encoder
  and no normalization inside the RefineBlocks.

  Convolutions use PyTorch's default initialization, as NCSN and NCSNv2 were trained with:
  kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Parameters are float32; convolutions
  compute in `dtype`.
  """

  def __init__(self, in_features: int, out_features: int, *, normalization: NormFactory,
               act: Activation = jax.nn.elu, resample: str | None = None,
               dilation: int = 1, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    check_choice(resample, (None, "down"), "resample")
    self.act = act
    self.norm1 = normalization(in_features, rngs=rngs)
    conv = functools.partial(ncsn_conv, dtype=dtype, rngs=rngs)
    if resample == "down":
      self.conv1 = conv(in_features, in_features, dilation=dilation)
      self.norm2 = normalization(in_features, rngs=rngs)
      if dilation > 1:
        self.conv2 = conv(in_features, out_features, dilation=dilation)
        self.shortcut = conv(in_features, out_features, dilation=dilation)
      else:
        self.conv2 = ConvMeanPool(in_features, out_features, 3, dtype=dtype, rngs=rngs)
        self.shortcut = ConvMeanPool(in_features, out_features, 1, dtype=dtype, rngs=rngs)
    else:
      self.conv1 = conv(in_features, out_features, dilation=dilation)
      self.norm2 = normalization(out_features, rngs=rngs)
      self.conv2 = conv(out_features, out_features, dilation=dilation)
      if in_features == out_features:
        self.shortcut = None
      elif dilation > 1:
        self.shortcut = conv(in_features, out_features, dilation=dilation)
      else:
        self.shortcut = conv(in_features, out_features, 1)

  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    h = self.act(_norm(self.norm1, x, y))
    h = self.conv1(h)
    h = self.act(_norm(self.norm2, h, y))
    h = self.conv2(h)
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return h + shortcut


# NCSNv1's name: a ResidualBlock built with a conditional normalization.
ConditionalResidualBlock = ResidualBlock


class RCUBlock(nnx.Module):
  """Residual conv unit: n_blocks times x <- x + n_stages x ([norm], act, 3x3 conv).

  The convs have no bias.

  normalization=None (NCSNv2) or conditional (NCSNv1, a norm before each act).
  x: (B, H, W, C) -> (B, H, W, C).
  """

  def __init__(self, features: int, n_blocks: int, n_stages: int, *,
               act: Activation = jax.nn.relu, normalization: NormFactory | None = None,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.act = act
    self.n_blocks, self.n_stages = n_blocks, n_stages
    n = n_blocks * n_stages
    self.convs = nnx.List([ncsn_conv(features, features, use_bias=False, dtype=dtype,
                                     rngs=rngs) for _ in range(n)])
    self.norms = (nnx.List([normalization(features, rngs=rngs) for _ in range(n)])
                  if normalization is not None else None)

  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        k = i * self.n_stages + j
        if self.norms is not None:
          x = _norm(self.norms[k], x, y)
        x = self.convs[k](self.act(x))
      x = x + residual
    return x


class CRPBlock(nnx.Module):
  """Chained residual pooling (Lin et al. 2017).

  x <- act(x); path <- x; then n_stages times: path <- conv(pool(path)); x <- x + path.

  NCSNv2: 5x5 stride-1 max pooling, no normalization. NCSNv1 (conditional normalization
  given): path <- conv(avgpool(norm(path, y))). Convs are 3x3 without bias.
  x: (B, H, W, C) -> (B, H, W, C).
  """

  def __init__(self, features: int, n_stages: int, *, act: Activation = jax.nn.relu,
               normalization: NormFactory | None = None, pool: str = "max",
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    check_choice(pool, ("max", "avg"), "pool")
    self.act = act
    self.pool = pool
    self.convs = nnx.List([ncsn_conv(features, features, use_bias=False, dtype=dtype,
                                     rngs=rngs) for _ in range(n_stages)])
    self.norms = (nnx.List([normalization(features, rngs=rngs) for _ in range(n_stages)])
                  if normalization is not None else None)

  def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    x = self.act(x)
    path = x
    for k, conv in enumerate(self.convs):
      if self.norms is not None:
        path = _norm(self.norms[k], path, y)
      if self.pool == "max":
        path = nnx.max_pool(path, (5, 5), strides=(1, 1), padding="SAME")
      else:
        # Zero padding counted in the mean, as PyTorch's AvgPool2d(5, 1, 2) does.
        path = nnx.avg_pool(path, (5, 5), strides=(1, 1), padding="SAME",
                            count_include_pad=True)
      path = conv(path)
      x = path + x
    return x


class MSFBlock(nnx.Module):
  """Multi-resolution fusion: sum_i resize(conv3x3_i([norm_i](x_i)), output_shape).

  in_features: channels of each input; output: (B, *output_shape, features). Resizing is
  jax.image.resize ('bilinear' or 'nearest_neighbor'), half-pixel centred as in score_sde
  (the PyTorch NCSNv2 used align_corners=True).
  """

  def __init__(self, in_features: Sequence[int], features: int, *,
               interpolation: str = "bilinear", normalization: NormFactory | None = None,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    methods = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}
    self.method = lookup(methods, interpolation, "interpolation (config.model.interpolation)")
    self.convs = nnx.List([ncsn_conv(c, features, dtype=dtype, rngs=rngs)
                           for c in in_features])
    self.norms = (nnx.List([normalization(c, rngs=rngs) for c in in_features])
                  if normalization is not None else None)

  def __call__(self, xs: Sequence[jax.Array], output_shape: Sequence[int],
               y: jax.Array | None = None) -> jax.Array:
    total = None
    for k, (x, conv) in enumerate(zip(xs, self.convs)):
      h = x if self.norms is None else _norm(self.norms[k], x, y)
      h = conv(h)
      h = jax.image.resize(h, (h.shape[0], *output_shape, h.shape[-1]), self.method)
      total = h if total is None else total + h
    return total


class RefineBlock(nnx.Module):
  """RefineNet block: RCU(2 blocks x 2 stages) on each input, MSF to the first input's
  resolution (skipped for the single-input start block), CRP(2 stages), output RCU
  (3 blocks if end else 1, 2 stages).

  in_features: channels of each input (encoder stage first, then the coarser refine path).
  xs: list of (B, H_i, W_i, C_i) -> (B, *output_shape, features). With start=True there is
  one input and it must already have `features` channels.
  """

  def __init__(self, in_features: Sequence[int], features: int, *,
               act: Activation = jax.nn.relu, interpolation: str = "bilinear",
               start: bool = False, end: bool = False,
               normalization: NormFactory | None = None, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    if start and (len(in_features) != 1 or in_features[0] != features):
      raise ValueError("a start RefineBlock takes one input with `features` channels")
    kw = dict(act=act, normalization=normalization, dtype=dtype, rngs=rngs)
    self.adapt = nnx.List([RCUBlock(c, 2, 2, **kw) for c in in_features])
    self.msf = (None if start else
                MSFBlock(in_features, features, interpolation=interpolation,
                         normalization=normalization, dtype=dtype, rngs=rngs))
    # NCSNv1 (conditional) pools by averaging, NCSNv2 by max.
    self.crp = CRPBlock(features, 2, pool="avg" if normalization is not None else "max",
                        **kw)
    self.output = RCUBlock(features, 3 if end else 1, 2, **kw)

  def __call__(self, xs: Sequence[jax.Array], output_shape: Sequence[int],
               y: jax.Array | None = None) -> jax.Array:
    hs = [rcu(x, y) for rcu, x in zip(self.adapt, xs)]
    h = hs[0] if self.msf is None else self.msf(hs, output_shape, y)
    h = self.crp(h, y)
    return self.output(h, y)
