"""EDM's non-leaking augmentation (Karras et al. 2022, App. F.2; NVlabs/edm
training/augment.py, after Karras et al. 2020's ADA): random flips and geometric
transforms of the training images, whose parameters the network is told (augment_labels).

Where it runs: on the device, inside the training loss (training/losses.py), as EDM's
EDMLoss calls its AugmentPipe on the GPU in the training step, rather than in the host
input pipeline. We deliberately follow EDM's placement: the resampling (sym6 up- and
down-sampling around an affine warp) costs far more than decoding a record and would make
the host workers the bottleneck; on the device its draws come from the step's key, so a
resumed run repeats them exactly. Shapes are static (padding by the largest margin)."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import UserError

# Daubechies' symlet-6 low-pass filter: the 2x up- and down-sampling around the resampling
# (the `wavelets['sym6']` of NVlabs/edm's augment.py and StyleGAN2-ADA's).
SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036,
    -0.007800708325034148], np.float32)

#: The number of augment labels with EDM's settings (the network's augment_dim).
AUGMENT_DIM = 9


class Draws(NamedTuple):
  """The random numbers of one call, in EDM's order (each (N,); translate_w (2, N)):
  flip bits x and y with their gates, isotropic scale (normal, gate), rotation (uniform,
  gate), anisotropic scale (normal, angle uniform, gate, angle gate), translation
  (normals, gate). Uniforms in [0, 1), normals N(0, 1), bits in {0, 1}."""
  xflip_w: jax.Array
  xflip_gate: jax.Array
  yflip_w: jax.Array
  yflip_gate: jax.Array
  scale_w: jax.Array
  scale_gate: jax.Array
  rotate_u: jax.Array
  rotate_gate: jax.Array
  aniso_w: jax.Array
  aniso_u: jax.Array
  aniso_gate: jax.Array
  aniso_rotate_gate: jax.Array
  translate_w: jax.Array
  translate_gate: jax.Array


def draw(key: jax.Array, n: int) -> Draws:
  """The random numbers for a batch of n images."""
  k = jax.random.split(key, 14)
  u = lambda i: jax.random.uniform(k[i], (n,))  # noqa: E731
  g = lambda i: jax.random.normal(k[i], (n,))  # noqa: E731
  bit = lambda i: jax.random.bernoulli(k[i], 0.5, (n,)).astype(jnp.float32)  # noqa: E731
  return Draws(bit(0), u(1), bit(2), u(3), g(4), u(5), u(6), u(7), g(8), u(9), u(10), u(11),
               jax.random.normal(k[12], (2, n)), u(13))


def _mat(rows) -> jax.Array:
  """A batch of matrices from rows of (N,) arrays or scalars: (N, r, c), N = 1 for
  scalars alone (broadcast in the products)."""
  n = max((jnp.shape(v)[0] for row in rows for v in row if jnp.ndim(v)), default=1)
  return jnp.stack([jnp.stack([jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,))
                               for v in row], -1) for row in rows], -2)


def _translate(tx, ty):
  return _mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale(sx, sy):
  return _mat([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate(theta):
  return _mat([[jnp.cos(theta), -jnp.sin(theta), 0], [jnp.sin(theta), jnp.cos(theta), 0],
               [0, 0, 1]])


def _conv1d(x: jax.Array, taps: np.ndarray, axis: int, stride: int, pad: int) -> jax.Array:
  """Depthwise correlation of x (N, C, H, W) with `taps` along H (axis 2) or W (axis 3),
  zero padding `pad` on both sides (torch.nn.functional.conv2d's semantics)."""
  c = x.shape[1]
  shape = (c, 1, len(taps), 1) if axis == 2 else (c, 1, 1, len(taps))
  w = jnp.broadcast_to(jnp.asarray(taps, x.dtype).reshape(shape[1:]), shape)
  strides = (stride, 1) if axis == 2 else (1, stride)
  padding = ((pad, pad), (0, 0)) if axis == 2 else ((0, 0), (pad, pad))
  return jax.lax.conv_general_dilated(x, w, strides, padding, feature_group_count=c,
                                      dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                      precision=jax.lax.Precision.HIGHEST)


def _zero_stuff(x: jax.Array, axis: int) -> jax.Array:
  """Inserts a zero after every sample along axis (and drops the last): length 2 L - 1."""
  z = jnp.stack([x, jnp.zeros_like(x)], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] *= 2
  return jax.lax.slice_in_dim(z.reshape(shape), 0, shape[axis] - 1, axis=axis)


def _grid_sample(images: jax.Array, theta: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """torch's affine_grid + grid_sample (bilinear, zero padding, align_corners=False):
  images (N, C, H, W), theta (N, 2, 3) -> (N, C, *out_hw)."""
  n, c, h, w = images.shape
  ho, wo = out_hw
  xs = (2 * jnp.arange(wo, dtype=jnp.float32) + 1) / wo - 1
  ys = (2 * jnp.arange(ho, dtype=jnp.float32) + 1) / ho - 1
  base = jnp.stack([jnp.broadcast_to(xs[None, :], (ho, wo)),
                    jnp.broadcast_to(ys[:, None], (ho, wo)), jnp.ones((ho, wo))], -1)
  grid = jnp.einsum("nij,hwj->nhwi", theta, base, precision=jax.lax.Precision.HIGHEST)
  ix = ((grid[..., 0] + 1) * w - 1) / 2
  iy = ((grid[..., 1] + 1) * h - 1) / 2
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  fx, fy = ix - x0, iy - y0

  def tap(img, yy, xx):
    ok = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
    v = img[:, jnp.clip(yy, 0, h - 1).astype(jnp.int32),
            jnp.clip(xx, 0, w - 1).astype(jnp.int32)]
    return jnp.where(ok[None], v, 0.0)

  def one(img, x0, y0, fx, fy):
    return (tap(img, y0, x0) * ((1 - fx) * (1 - fy))[None]
            + tap(img, y0, x0 + 1) * (fx * (1 - fy))[None]
            + tap(img, y0 + 1, x0) * ((1 - fx) * fy)[None]
            + tap(img, y0 + 1, x0 + 1) * (fx * fy)[None])

  return jax.vmap(one)(images, x0, y0, fx, fy)


def augment_with(images: jax.Array, d: Draws, p: float, *, scale_std: float = 0.2,
                 rotate_frac_max: float = 1.0, aniso_std: float = 0.2,
                 aniso_rotate_prob: float = 0.5, translate_frac_std: float = 0.125
                 ) -> tuple[jax.Array, jax.Array]:
  """EDM's AugmentPipe with train.py's settings (xflip 1e8, yflip, scale, rotate_frac,
  aniso, translate_frac all on, each gated with probability p) for given draws.

  images: (N, H, W, C) float; returns (augmented images (N, H, W, C), augment_labels
  (N, 9) float32: the x- and y-flip bits, the scale exponent, cos - 1 and sin of the
  rotation, w cos r and w sin r of the anisotropic scale, the two translations in units
  of translate_frac_std, each 0 where its transform is off).

  Each image is x-flipped with probability 1/2 (EDM's xflip = 1e8 makes the gate always
  open), y-flipped with probability p/2, and resampled through G^-1 = S(2^(-0.2 w)) R(u)
  A(w', r) T(-t) (each factor the identity where its gate is closed): reflect-padded,
  upsampled 2x with the sym6 filter, sampled bilinearly at the transformed grid and
  downsampled 2x with the same filter. EDM pads by a margin computed from the batch's
  corners (a data-dependent shape); this pads by the largest margin it can take, H - 1
  and W - 1, so the shapes are static under jit: the result is EDM's wherever the
  transformed image stays inside EDM's margin (EDM samples zeros beyond it).
  """
  if images.ndim != 4:
    raise UserError(f"augmentation takes images (N, H, W, C), got shape {images.shape}")
  x = jnp.transpose(images, (0, 3, 1, 2)).astype(jnp.float32)
  n, c, h, w = x.shape
  labels = []

  xw = jnp.where(d.xflip_gate < 1e8 * p, d.xflip_w, 0.0)
  x = jnp.where((xw == 1)[:, None, None, None], x[..., ::-1], x)
  yw = jnp.where(d.yflip_gate < p, d.yflip_w, 0.0)
  x = jnp.where((yw == 1)[:, None, None, None], x[:, :, ::-1, :], x)
  labels += [xw, yw]

  g_inv = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
  sw = jnp.where(d.scale_gate < p, d.scale_w, 0.0)
  s = jnp.exp2(sw * scale_std)
  g_inv = g_inv @ _scale(1 / s, 1 / s)
  labels += [sw]
  rw = jnp.where(d.rotate_gate < p, (d.rotate_u * 2 - 1) * (math.pi * rotate_frac_max), 0.0)
  g_inv = g_inv @ _rotate(rw)  # EDM's rotate2d_inv(-w)
  labels += [jnp.cos(rw) - 1, jnp.sin(rw)]
  aw = jnp.where(d.aniso_gate < p, d.aniso_w, 0.0)
  ar = jnp.where(d.aniso_rotate_gate < aniso_rotate_prob, (d.aniso_u * 2 - 1) * math.pi, 0.0)
  s = jnp.exp2(aw * aniso_std)
  g_inv = g_inv @ _rotate(-ar) @ _scale(1 / s, s) @ _rotate(ar)
  labels += [aw * jnp.cos(ar), aw * jnp.sin(ar)]
  tw = jnp.where(d.translate_gate[None] < p, d.translate_w, 0.0)
  g_inv = g_inv @ _translate(-tw[0] * (w * translate_frac_std),
                             -tw[1] * (h * translate_frac_std))
  labels += [tw[0], tw[1]]

  hz_pad = len(SYM6) // 4
  # Static padding (see the docstring): symmetric, so the origin does not move.
  x = jnp.pad(x, ((0, 0), (0, 0), (h - 1, h - 1), (w - 1, w - 1)), mode="reflect")
  # Upsample 2x: zero-stuff, then the flipped filter with padding (len + 1) // 2.
  up_pad = (len(SYM6) + 1) // 2
  x = _conv1d(_zero_stuff(x, 3), SYM6[::-1].copy(), 3, 1, up_pad)
  x = _conv1d(_zero_stuff(x, 2), SYM6[::-1].copy(), 2, 1, up_pad)
  g_inv = _scale(2, 2) @ g_inv @ _scale(0.5, 0.5)
  g_inv = _translate(-0.5, -0.5) @ g_inv @ _translate(0.5, 0.5)
  out_h, out_w = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
  g_inv = (_scale(2 / x.shape[3], 2 / x.shape[2]) @ g_inv
           @ _scale(out_w / 2, out_h / 2))
  x = _grid_sample(x, g_inv[:, :2, :], (out_h, out_w))
  # Downsample 2x with the filter, padding (len - 1) // 2, and crop the margin.
  down_pad = (len(SYM6) - 1) // 2
  x = _conv1d(x, SYM6, 3, 2, down_pad)[:, :, :, hz_pad:-hz_pad]
  x = _conv1d(x, SYM6, 2, 2, down_pad)[:, :, hz_pad:-hz_pad, :]

  out = jnp.transpose(x, (0, 2, 3, 1)).astype(images.dtype)
  return out, jnp.stack(labels, axis=1).astype(jnp.float32)


def augment(key: jax.Array, images: jax.Array, p: float
            ) -> tuple[jax.Array, jax.Array]:
  """EDM's augmentation of images (N, H, W, C) with probability multiplier p (EDM:
  0.12 for CIFAR-10, 0.15 at 64 px): (images, augment_labels (N, 9)); `augment_with`."""
  if not 0.0 <= float(p) <= 1.0:
    raise UserError(f"augmentation probability must be in [0, 1], got {p}")
  return augment_with(images, draw(key, images.shape[0]), float(p))
