"""FIR up/down-sampling of NHWC images and the fused resampling convolution of StyleGAN2
(Karras et al. 2020), as NCSN++ uses them (Song et al. 2021, appendix H); everything is
built on `upfirdn2d`."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from models import conv as conv_lib

_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
  """A 2-D FIR filter normalised to sum 1; a 1-D k means the separable outer(k, k)."""
  k = np.asarray(k, dtype=np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
  return (k / k.sum()).astype(np.float32)


def _axis_plan(n: int, taps: np.ndarray, up: int, down: int, pad0: int, pad1: int):
  """How one spatial axis of `upfirdn2d` reads its input, as shifted strided slices.

  The output along the axis is y[o] = sum_j kf[j] * u[o * down + j - pad0], with kf the
  flipped filter and u the zero-inserted input (u[up * i] = x[i], zero elsewhere).
  Polyphase: the full-rate output z[up * q + r] (phase r) only meets the taps j with
  (r + j - pad0) divisible by up, which read x[q + (r + j - pad0) / up]; no product with an
  inserted zero is formed. Returns (phases, lo, hi, count, stride, n_out, keep):
  phases[r] lists (tap index j, slice start into x padded by (lo, hi)); each phase has
  `count` outputs read with `stride`; after interleaving the phases the first `n_out`
  full-rate outputs are kept and then every `keep`-th.
  """
  kk = len(taps)
  length = n * up + pad0 + pad1
  if length < kk:
    raise ValueError(f"upfirdn2d: padded size {length} is smaller than the filter {kk}")
  n_out = length - kk + 1                      # full-rate ("down = 1") outputs
  if up == 1:
    # One phase; the decimation is the slices' stride, so skipped outputs cost nothing.
    count = (n_out - 1) // down + 1
    offsets = [[(j, j - pad0) for j in range(kk)]]
    stride, keep = down, 1
  else:
    count = -(-n_out // up)
    offsets = [[(j, (r + j - pad0) // up) for j in range(kk) if (r + j - pad0) % up == 0]
               for r in range(up)]
    stride, keep = 1, down
  first = [e for phase in offsets for _, e in phase]
  lo = max([0] + [-e for e in first])
  hi = max([0] + [e + stride * (count - 1) - (n - 1) for e in first])
  phases = [[(j, e + lo) for j, e in phase] for phase in offsets]
  return phases, lo, hi, count, stride, n_out, keep


def _upfirdn(x: jax.Array, kf: np.ndarray, up: tuple[int, int], down: tuple[int, int],
             pad0: tuple[int, int], pad1: tuple[int, int]) -> jax.Array:
  """upfirdn2d with per-axis factors and the already flipped filter kf: (kh, kw)."""
  _, h, w, _ = x.shape
  ph, lo_h, hi_h, nh, sh, full_h, keep_h = _axis_plan(h, kf[:, 0], up[0], down[0],
                                                      pad0[0], pad1[0])
  pw, lo_w, hi_w, nw, sw, full_w, keep_w = _axis_plan(w, kf[0, :], up[1], down[1],
                                                      pad0[1], pad1[1])
  # lax.pad with negative edges crops; one pad serves every slice of every phase.
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               [(0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)])
  rows = []
  for phase_h in ph:
    cols = []
    for phase_w in pw:
      acc = None
      for jh, a in phase_h:
        for jw, b in phase_w:
          tap = float(kf[jh, jw])
          if tap == 0.0:
            continue
          s = lax.slice(xp, (0, a, b, 0),
                        (xp.shape[0], a + sh * (nh - 1) + 1, b + sw * (nw - 1) + 1,
                         xp.shape[3]), (1, sh, sw, 1))
          term = s * jnp.asarray(tap, x.dtype)
          acc = term if acc is None else acc + term
      if acc is None:  # a phase that meets no nonzero tap
        acc = jnp.zeros((x.shape[0], nh, nw, x.shape[3]), x.dtype)
      cols.append(acc)
    rows.append(cols[0] if len(cols) == 1 else jnp.stack(cols, axis=3).reshape(
        x.shape[0], nh, nw * len(cols), x.shape[3]))
  y = rows[0] if len(rows) == 1 else jnp.stack(rows, axis=2).reshape(
      x.shape[0], nh * len(rows), rows[0].shape[2], x.shape[3])
  if len(ph) > 1 or len(pw) > 1:
    # Interleaved phases are whole multiples of up long: crop, then decimate.
    y = y[:, :full_h:keep_h, :full_w:keep_w, :]
  return y


def _separate(k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """(a, b) with outer(a, b) == k to float32 round-off, or None if k has rank > 1."""
  i0, j0 = np.unravel_index(np.argmax(np.abs(k)), k.shape)
  if k[i0, j0] == 0:
    return None
  a = k[:, j0].astype(np.float64)
  b = k[i0, :].astype(np.float64) / float(k[i0, j0])
  if not np.allclose(np.outer(a, b), k, rtol=1e-6, atol=1e-7 * abs(float(k[i0, j0]))):
    return None
  return a, b


def upfirdn2d(x: jax.Array, k: np.ndarray, *, up: int = 1, down: int = 1,
              pad0: int = 0, pad1: int = 0, separable: bool = False) -> jax.Array:
  """Upsample, pad, FIR-filter and downsample every channel of x (below).

  x: (B, H, W, C); k: (kh, kw) filter (used as given, not normalised). The same `up`,
  `down`, `pad0`, `pad1` apply to both spatial axes. Returns (B, H', W', C) with
  H' = (H * up + pad0 + pad1 - kh) // down + 1, in x's dtype.

  Written as sums of shifted, strided slices of the padded input, weighted by the taps
  (polyphase for up > 1: an output phase only meets the taps that land on real pixels),
  so XLA fuses it into one elementwise loop on every backend; a depthwise convolution
  (feature_group_count=C) is slow on XLA's CPU backend (BENCHMARKS.md). separable=True
  filters along H, then W with the rank-1 factors of k: fewer multiply-adds, but two
  loops instead of one fused loop, and measured no faster on the CPU for 4x4 filters, so
  off by default. Sub-float32 inputs are filtered in float32.

  NCSN++ (Song et al. 2021, appendix H) resamples with the anti-aliasing FIR filter of
  StyleGAN2 (Karras et al. 2020) instead of nearest-neighbour/average pooling. Everything
  is built on one primitive, `upfirdn2d`, which does what scipy.signal.upfirdn does along
  both spatial axes of every channel:

    1. upsample: insert `up - 1` zeros after every pixel,
    2. pad with `pad0` zeros before and `pad1` after (negative values crop),
    3. convolve (true convolution, not correlation) with the 2-D filter k, keeping only
       outputs whose footprint lies inside the padded image,
    4. downsample: keep every `down`-th pixel.

  It is written as a sum of shifted, strided slices of the padded input, one per filter tap
  (polyphase for up-sampling: no products with the inserted zeros), which XLA fuses into one
  elementwise loop on every backend, and which differentiates to any order in both modes.
  The depthwise convolution it replaces was slow on XLA's CPU backend (BENCHMARKS.md); it is kept
  in tests/reference_upfirdn.py as the tests' reference.
  """
  if up < 1 or down < 1:
    raise ValueError(f"up and down must be >= 1, got {up}, {down}")
  k = np.asarray(k, dtype=np.float64)
  if k.ndim != 2:
    raise ValueError(f"upfirdn2d wants a 2-D filter, got shape {k.shape}")
  dtype = x.dtype
  if jnp.finfo(dtype).bits < 32:
    x = x.astype(jnp.float32)
  kf = k[::-1, ::-1]  # lax-style correlation with the flipped filter = true convolution
  factors = _separate(kf) if separable else None
  if separable and factors is None:
    raise ValueError(f"filter of shape {k.shape} is not separable (rank > 1)")
  if factors is None:
    y = _upfirdn(x, kf, (up, up), (down, down), (pad0, pad0), (pad1, pad1))
  else:
    a, b = factors
    y = _upfirdn(x, a[:, None], (up, 1), (down, 1), (pad0, 0), (pad1, 0))
    y = _upfirdn(y, b[None, :], (1, up), (1, down), (0, pad0), (0, pad1))
  return y.astype(dtype)


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
  StyleGAN2 writes this as a stride-`factor` transposed convolution (output size
  (H - 1) * factor + kc) followed by the FIR filter, cropped to H * factor. Both are
  convolutions along the image axes, so they commute: the FIR up-sampling is done first,
  to the (kc - 1) / 2 extra pixels per side the convolution needs, and then a plain VALID
  convolution, with no transposed (input-dilated) convolution. Same result.
  """
  kc = w.shape[0]
  if w.shape[1] != kc or kc % 2 != 1:
    raise ValueError(f"conv kernel must be square with odd size, got {w.shape}")
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = (k.shape[0] - factor) - (kc - 1)
  # StyleGAN2's filter padding after the transposed conv, shifted by the conv's kc - 1.
  pad0 = (p + 1) // 2 + factor - 1 + kc - 1
  pad1 = kc + k.shape[0] - 2 - pad0
  x = upfirdn2d(x, k, up=factor, pad0=pad0, pad1=pad1)
  return conv_lib.conv_general_dilated(x, w.astype(x.dtype), window_strides=(1, 1),
                                  padding="VALID", dimension_numbers=_DIMS)


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
  return conv_lib.conv_general_dilated(x, w.astype(x.dtype), window_strides=(factor, factor),
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
      x = conv_lib.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                   dimension_numbers=_DIMS)
    if self.bias is not None:
      x = x + self.bias[...].astype(self.dtype)
    return x
