"""FIR up/down-sampling of NHWC images and the fused resampling convolution (StyleGAN2).

NCSN++ (Song et al. 2021, appendix H) resamples with the anti-aliasing FIR filter of
StyleGAN2 (Karras et al. 2020) instead of nearest-neighbour/average pooling. Everything
is built on one primitive, `upfirdn2d`, which does what scipy.signal.upfirdn does along
both spatial axes of every channel:

  1. upsample: insert `up - 1` zeros after every pixel,
  2. pad with `pad0` zeros before and `pad1` after (negative values crop),
  3. convolve (true convolution, not correlation) with the 2-D filter k, keeping only
     outputs whose footprint lies inside the padded image,
  4. downsample: keep every `down`-th pixel.

It is written with `lax.pad` (interior padding does the zero insertion) and a depthwise
`lax.conv_general_dilated` (its stride does the decimation), so it runs on any backend and
differentiates to any order.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
  """A 2-D FIR filter normalised to sum 1; a 1-D k means the separable outer(k, k)."""
  k = np.asarray(k, dtype=np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
  return (k / k.sum()).astype(np.float32)


def upfirdn2d(x: jax.Array, k: np.ndarray, *, up: int = 1, down: int = 1,
              pad0: int = 0, pad1: int = 0) -> jax.Array:
  """Upsample, pad, FIR-filter and downsample every channel of x (see module docstring).

  x: (B, H, W, C); k: (kh, kw) filter (used as given, not normalised). The same `up`,
  `down`, `pad0`, `pad1` apply to both spatial axes. Returns (B, H', W', C) with
  H' = (H * up + pad0 + pad1 - kh) // down + 1, in x's dtype.
  """
  if up < 1 or down < 1:
    raise ValueError(f"up and down must be >= 1, got {up}, {down}")
  c = x.shape[-1]
  kh, kw = k.shape
  # Interior padding inserts up - 1 zeros between pixels; the extra up - 1 at the high
  # end make it "after every pixel" (length H * up). Negative edge padding crops.
  zero = jnp.zeros((), x.dtype)
  x = lax.pad(x, zero, [(0, 0, 0), (pad0, pad1 + up - 1, up - 1),
                        (pad0, pad1 + up - 1, up - 1), (0, 0, 0)])
  # lax convolutions correlate; flipping the filter makes it a true convolution.
  w = jnp.asarray(np.ascontiguousarray(k[::-1, ::-1]), dtype=x.dtype)
  w = jnp.tile(w[:, :, None, None], (1, 1, 1, c))  # depthwise: (kh, kw, 1, C)
  return lax.conv_general_dilated(x, w, window_strides=(down, down), padding="VALID",
                                  dimension_numbers=_DIMS, feature_group_count=c)


def upsample_2d(x: jax.Array, k: Sequence[float] | None = None, factor: int = 2,
                gain: float = 1.0) -> jax.Array:
  """FIR upsampling by `factor`: (B, H, W, C) -> (B, H*factor, W*factor, C).

  The filter is scaled by factor^2 so that a constant image keeps its value (times gain)
  away from the borders; pixels outside the image count as zero. k defaults to
  [1] * factor, i.e. nearest-neighbour upsampling.
  """
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: jax.Array, k: Sequence[float] | None = None, factor: int = 2,
                  gain: float = 1.0) -> jax.Array:
  """FIR downsampling by `factor`: (B, H, W, C) -> (B, H//factor, W//factor, C).

  k defaults to [1] * factor, i.e. average pooling.
  """
  k = setup_kernel([1] * factor if k is None else k) * gain
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling: every pixel repeated factor x factor times."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Average pooling over non-overlapping factor x factor windows."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample_conv_2d(x: jax.Array, w: jax.Array, k: Sequence[float] | None = None,
                     factor: int = 2, gain: float = 1.0) -> jax.Array:
  """`upsample_2d` followed by a convolution with w, fused so padding happens once.

  x: (B, H, W, Cin); w: (kc, kc, Cin, Cout), kc odd. Returns (B, H*factor, W*factor, Cout).
  A stride-`factor` transposed convolution (input dilation in lax terms, output size
  (H - 1) * factor + kc) spreads w over the zero-inserted grid, and the FIR filter then
  interpolates and crops to H * factor.
  """
  kc = w.shape[0]
  if w.shape[1] != kc or kc % 2 != 1:
    raise ValueError(f"conv kernel must be square with odd size, got {w.shape}")
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = (k.shape[0] - factor) - (kc - 1)
  x = lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(1, 1),
                               padding=[(kc - 1, kc - 1)] * 2,
                               lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
  return upfirdn2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: jax.Array, w: jax.Array, k: Sequence[float] | None = None,
                       factor: int = 2, gain: float = 1.0) -> jax.Array:
  """A convolution with w followed by `downsample_2d`, fused: FIR-filter, then stride.

  x: (B, H, W, Cin); w: (kc, kc, Cin, Cout). Returns (B, H//factor, W//factor, Cout).
  """
  kc = w.shape[0]
  if w.shape[1] != kc:
    raise ValueError(f"conv kernel must be square, got {w.shape}")
  k = setup_kernel([1] * factor if k is None else k) * gain
  p = (k.shape[0] - factor) + (kc - 1)
  x = upfirdn2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
  return lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(factor, factor),
                                  padding="VALID", dimension_numbers=_DIMS)


class Conv2d(nnx.Module):
  """Convolution with optional fused FIR 2x up- or down-sampling (StyleGAN2's Conv2d).

  x: (B, H, W, in_features) -> (B, H', W', out_features) with H' = 2H if up, H/2 if down,
  H otherwise ('SAME' padding). The kernel is (kernel, kernel, in, out); bias zeros.
  """

  def __init__(self, in_features: int, out_features: int, kernel: int = 3, *,
               up: bool = False, down: bool = False,
               resample_kernel: Sequence[int] = (1, 3, 3, 1), use_bias: bool = True,
               kernel_init: nnx.Initializer | None = None,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if up and down:
      raise ValueError("Conv2d cannot both up- and down-sample")
    if kernel < 1 or kernel % 2 != 1:
      raise ValueError(f"kernel size must be odd, got {kernel}")
    if kernel_init is None:
      kernel_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    self.up, self.down = up, down
    self.resample_kernel = tuple(resample_kernel)
    self.dtype = dtype
    self.weight = nnx.Param(kernel_init(rngs.params(),
                                        (kernel, kernel, in_features, out_features),
                                        jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    w = self.weight[...].astype(self.dtype)
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                   dimension_numbers=_DIMS)
    if self.bias is not None:
      x = x + self.bias[...].astype(self.dtype)
    return x
