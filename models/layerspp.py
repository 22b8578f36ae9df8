"""Building blocks of NCSN++ and DDPM++ (Song et al. 2021, appendix H): FIR resampling,
BigGAN-style residual blocks, rescaled skips and the input-pyramid `Combine`."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.choices import check_choice
from models import up_or_down_sampling as updown
from models.layers import (NIN, Activation, AttnBlock, InitKeys, Rngs, apply_dropout,
                           conv1x1, conv3x3, default_init, dense, group_norm)


class Combine(nnx.Module):
  """Merges the input pyramid into the feature map (NCSN++'s 'input_skip').

  x: (B, H, W, in_ch) (pyramid), y: (B, H, W, out_ch) (features). x is projected by a
  1x1 conv to out_ch channels, then summed with y ('sum', out_ch channels) or
  concatenated with it ('cat', 2 * out_ch channels: [conv(x), y]).
  """

  def __init__(self, in_ch: int, out_ch: int, *, method: str = "cat",
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    check_choice(method, ("cat", "sum"), "progressive_combine")
    self.method = method
    self.conv = conv1x1(in_ch, out_ch, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    h = self.conv(x)
    y = y.astype(h.dtype)
    return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


def AttnBlockpp(channels: int, *, skip_rescale: bool = False, init_scale: float = 0.0,
                dtype: jnp.dtype = jnp.float32, rngs: Rngs) -> AttnBlock:
  """DDPM's attention block with min(C // 4, 32) GroupNorm groups and skip_rescale."""
  return AttnBlock(channels, num_groups=None, skip_rescale=skip_rescale,
                   init_scale=init_scale, dtype=dtype, rngs=rngs)


class Upsample(nnx.Module):
  """2x upsampling: (B, H, W, in_ch) -> (B, 2H, 2W, out_ch).

  fir=False: nearest neighbour, then a 3x3 conv if with_conv. fir=True: FIR upsampling
  with fir_kernel, or (with_conv) the fused FIR transposed 3x3 conv of StyleGAN2.
  Without a conv, out_ch must equal in_ch.
  """

  def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool = False,
               fir: bool = False, fir_kernel: Sequence[int] = (1, 3, 3, 1),
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    out_ch = out_ch or in_ch
    if not with_conv and out_ch != in_ch:
      raise ValueError("Upsample without a conv cannot change the channel count")
    self.fir = fir
    self.fir_kernel = tuple(fir_kernel)
    conv = None
    if with_conv and fir:
      conv = updown.Conv2d(in_ch, out_ch, 3, up=True, resample_kernel=fir_kernel,
                           kernel_init=default_init(), dtype=dtype, rngs=rngs)
    elif with_conv:
      conv = conv3x3(in_ch, out_ch, dtype=dtype, rngs=rngs)
    self.conv = conv

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.fir:
      return self.conv(x) if self.conv is not None else updown.upsample_2d(x, self.fir_kernel)
    h = updown.naive_upsample_2d(x, 2)
    return self.conv(h) if self.conv is not None else h


class Downsample(nnx.Module):
  """2x downsampling: (B, H, W, in_ch) -> (B, H/2, W/2, out_ch).

  fir=False: stride-2 3x3 conv (with_conv) or 2x2 average pooling. fir=True: the fused
  FIR-then-strided 3x3 conv (with_conv) or FIR downsampling with fir_kernel.
  """

  def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool = False,
               fir: bool = False, fir_kernel: Sequence[int] = (1, 3, 3, 1),
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    out_ch = out_ch or in_ch
    if not with_conv and out_ch != in_ch:
      raise ValueError("Downsample without a conv cannot change the channel count")
    self.fir = fir
    self.fir_kernel = tuple(fir_kernel)
    conv = None
    if with_conv and fir:
      conv = updown.Conv2d(in_ch, out_ch, 3, down=True, resample_kernel=fir_kernel,
                           kernel_init=default_init(), dtype=dtype, rngs=rngs)
    elif with_conv:
      conv = conv3x3(in_ch, out_ch, stride=2, dtype=dtype, rngs=rngs)
    self.conv = conv

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.conv is not None:
      return self.conv(x)
    if self.fir:
      return updown.downsample_2d(x, self.fir_kernel)
    return updown.naive_downsample_2d(x, 2)


class ResnetBlockDDPMpp(nnx.Module):
  """DDPM's residual block with DDPM++'s changes (resblock_type='ddpm').

  x: (B, H, W, in_ch), temb: (B, temb_dim) or None -> (B, H, W, out_ch):
    h = conv3x3(act(GN(x))) + Dense(act(temb))
    h = conv3x3_{init_scale}(dropout(act(GN(h))))
    out = (shortcut(x) + h) [/ sqrt(2) if skip_rescale]
  """

  def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
               act: Activation = jax.nn.swish, conv_shortcut: bool = False,
               dropout: float = 0.1, skip_rescale: bool = False, init_scale: float = 0.0,
               dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    rngs = InitKeys.from_rngs(rngs)
    out_ch = out_ch or in_ch
    self.act = act
    self.skip_rescale = skip_rescale
    self.norm0 = group_norm(in_ch, dtype=dtype, rngs=rngs)
    self.conv0 = conv3x3(in_ch, out_ch, dtype=dtype, rngs=rngs)
    self.temb_proj = (dense(temb_dim, out_ch, dtype=dtype, rngs=rngs)
                      if temb_dim is not None else None)
    self.norm1 = group_norm(out_ch, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.conv1 = conv3x3(out_ch, out_ch, init_scale=init_scale, dtype=dtype, rngs=rngs)
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
    out = x.astype(h.dtype) + h
    return out / np.sqrt(2.0) if self.skip_rescale else out


class ResnetBlockBigGANpp(nnx.Module):
  """BigGAN's residual block (Brock et al. 2019) as NCSN++ uses it (resblock_type='biggan').

  Resampling (up or down by 2, FIR or naive) happens inside the block, on both the branch
  (after the first GroupNorm + act) and the skip path, and the skip path gets a 1x1 conv
  whenever the shape changes. x: (B, H, W, in_ch) -> (B, H', W', out_ch), H' = 2H if up,
  H/2 if down, H otherwise.

  Relative to DDPM's blocks (models/layers.py) they add: GroupNorm with min(C // 4, 32)
  groups, residual sums rescaled by 1/sqrt(2) (`skip_rescale`, as in BigGAN / StyleGAN2),
  anti-aliased FIR resampling (`fir`, models/up_or_down_sampling.py), BigGAN-style residual
  blocks that resample inside the block, and `Combine` for the progressive input pyramid.
  All take NHWC inputs, keep float32 parameters and compute in `dtype`.
  """

  def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
               act: Activation = jax.nn.swish, up: bool = False, down: bool = False,
               dropout: float = 0.1, fir: bool = False,
               fir_kernel: Sequence[int] = (1, 3, 3, 1), skip_rescale: bool = True,
               init_scale: float = 0.0, dtype: jnp.dtype = jnp.float32, rngs: Rngs):
    if up and down:
      raise ValueError("a residual block cannot both up- and down-sample")
    rngs = InitKeys.from_rngs(rngs)
    out_ch = out_ch or in_ch
    self.act = act
    self.up, self.down = up, down
    self.fir = fir
    self.fir_kernel = tuple(fir_kernel)
    self.skip_rescale = skip_rescale
    self.norm0 = group_norm(in_ch, dtype=dtype, rngs=rngs)
    self.conv0 = conv3x3(in_ch, out_ch, dtype=dtype, rngs=rngs)
    self.temb_proj = (dense(temb_dim, out_ch, dtype=dtype, rngs=rngs)
                      if temb_dim is not None else None)
    self.norm1 = group_norm(out_ch, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.conv1 = conv3x3(out_ch, out_ch, init_scale=init_scale, dtype=dtype, rngs=rngs)
    self.shortcut = (conv1x1(in_ch, out_ch, dtype=dtype, rngs=rngs)
                     if in_ch != out_ch or up or down else None)

  def _resample(self, x: jax.Array) -> jax.Array:
    if self.up:
      return (updown.upsample_2d(x, self.fir_kernel) if self.fir
              else updown.naive_upsample_2d(x, 2))
    if self.down:
      return (updown.downsample_2d(x, self.fir_kernel) if self.fir
              else updown.naive_downsample_2d(x, 2))
    return x

  def __call__(self, x: jax.Array, temb: jax.Array | None = None, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    h = self.act(self.norm0(x))
    h = self._resample(h)
    x = self._resample(x)
    h = self.conv0(h)
    if temb is not None and self.temb_proj is not None:
      h = h + self.temb_proj(self.act(temb))[:, None, None, :]
    h = self.act(self.norm1(h))
    h = apply_dropout(self.dropout, h, train, key)
    h = self.conv1(h)
    if self.shortcut is not None:
      x = self.shortcut(x)
    out = x.astype(h.dtype) + h
    return out / np.sqrt(2.0) if self.skip_rescale else out
