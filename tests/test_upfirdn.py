"""FIR resampling as shifted sums (models/up_or_down_sampling.py) against two references.

1. scipy.signal.upfirdn in float64, one axis at a time (the filters are separable), for
   the primitive `upfirdn2d` itself: an implementation independent of ours.
2. The previous implementation (tests/reference_upfirdn.py: lax.pad zero insertion and a
   depthwise convolution; the fused up-sampling conv as a transposed convolution) for
   the public wrappers, the fused convolutions and every gradient.

Inputs are standard normal, so outputs are O(1); the new code sums the same <= 16
products per output in another order, so agreement is to float32 round-off: we assert
|new - ref| <= 2e-6 * max|ref| + 1e-6 for the filters (sums of <= 16 terms) and
<= 1e-5 * max|ref| + 1e-5 for the convolutions (27-term dot products, summed again).
A mistaken offset, phase or pad moves whole pixels and fails these by O(1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_upfirdn as ref
import scipy.signal

from models import up_or_down_sampling as updown

# Every (up, down) pair with NCSN++'s FIR kernel (1, 3, 3, 1); the odd kernel (1, 2, 1)
# and the box (1, 1) with up-sampling, down-sampling and both (identity is one path for
# any kernel). Each case costs its own compiles, so the product of all is not run.
UPDOWN_CASES = ([((1, 3, 3, 1), ud) for ud in [(1, 1), (2, 1), (1, 2), (2, 2)]]
                + [((1, 2, 1), ud) for ud in [(2, 1), (1, 2), (2, 2)]]
                + [((1, 1), ud) for ud in [(2, 1), (1, 2)]])


def _rand(shape, seed):
  return np.random.default_rng(seed).normal(size=shape)


def _close(got, want, rel=2e-6, abs_=1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=rel * np.abs(want).max() + abs_)


def _scipy_upfirdn2d(x, k1, up, down, pad0, pad1):
  """upfirdn2d with the separable filter outer(k1, k1), in float64 via scipy.

  scipy.signal.upfirdn(h, x, up) is the full convolution h * (x with up - 1 zeros between
  samples); our output o along an axis is that full convolution at o * down + K - 1 - pad0
  (zero outside its support), for o < (H * up + pad0 + pad1 - K) // down + 1.
  """
  k1 = np.asarray(k1, np.float64)
  K = len(k1)
  y = np.asarray(x, np.float64)
  for axis in (1, 2):
    n = y.shape[axis]
    full = scipy.signal.upfirdn(k1, y, up=up, down=1, axis=axis)
    n_out = (n * up + pad0 + pad1 - K) // down + 1
    idx = np.arange(n_out) * down + K - 1 - pad0
    inside = (idx >= 0) & (idx < full.shape[axis])
    picked = np.take(full, np.clip(idx, 0, full.shape[axis] - 1), axis=axis)
    mask = inside.reshape([-1 if a == axis else 1 for a in range(4)])
    y = np.where(mask, picked, 0.0)
  return y


@pytest.mark.parametrize("k,factors", UPDOWN_CASES, ids=str)
def test_upfirdn2d_matches_scipy_float64(k, factors):
  """Odd and even sizes (H != W), the pads the wrappers use and others, negative ones
  (crops) included."""
  up, down = factors
  x = _rand((2, 7, 6, 3), 0)
  k1 = np.asarray(k, np.float64) / np.sum(k)
  k2 = updown.setup_kernel(k)
  K = len(k)
  for pad0, pad1 in {(0, 0), (K - 1, K - 1), ((K - up + 1) // 2 + up - 1, (K - up) // 2),
                     ((K - down + 1) // 2, (K - down) // 2), (-1, 2), (2, -1)}:
    got = jax.jit(lambda a, p0=pad0, p1=pad1: updown.upfirdn2d(
        a, k2, up=up, down=down, pad0=p0, pad1=p1))(jnp.asarray(x, jnp.float32))
    _close(got, _scipy_upfirdn2d(x, k1, up, down, pad0, pad1))


def test_upfirdn2d_general_filter_and_options():
  """A non-separable 3x3 filter and factor 3 against the reference; separable=True equals
  the fused 2-D sum; bfloat16 in, bfloat16 out, equal to the float32 result to bf16
  rounding (8 bits: 2^-8 relative); bad arguments raise."""
  x = jnp.asarray(_rand((2, 5, 8, 4), 1), jnp.float32)
  k = np.asarray(_rand((3, 3), 2), np.float32)
  for up, down, pad0, pad1 in [(1, 1, 1, 1), (3, 1, 2, 0), (1, 3, 0, 2), (3, 2, 1, -1)]:
    # One compiled program per case: run eagerly, every shifted slice compiles on its own.
    _close(*jax.jit(lambda a, u=up, d=down, p0=pad0, p1=pad1: (
        updown.upfirdn2d(a, k, up=u, down=d, pad0=p0, pad1=p1),
        ref.upfirdn2d(a, k, up=u, down=d, pad0=p0, pad1=p1)))(x))
  ks = updown.setup_kernel((1, 3, 3, 1))
  for up, down in [(1, 2), (2, 1), (2, 2)]:
    _close(*jax.jit(lambda a, u=up, d=down: (
        updown.upfirdn2d(a, ks, up=u, down=d, pad0=2, pad1=1, separable=True),
        updown.upfirdn2d(a, ks, up=u, down=d, pad0=2, pad1=1)))(x))
  y16 = updown.upfirdn2d(x.astype(jnp.bfloat16), ks, down=2, pad0=1, pad1=1)
  assert y16.dtype == jnp.bfloat16
  y32 = updown.upfirdn2d(x.astype(jnp.bfloat16).astype(jnp.float32), ks, down=2, pad0=1,
                         pad1=1)
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32,
                             atol=2 ** -8 * float(jnp.abs(y32).max()))
  with pytest.raises(ValueError, match="up and down"):
    updown.upfirdn2d(x, ks, up=0)
  with pytest.raises(ValueError, match="not separable"):
    updown.upfirdn2d(x, k, separable=True)
  with pytest.raises(ValueError, match="smaller than the filter"):
    updown.upfirdn2d(x, ks, pad0=-2, pad1=-2)


@pytest.mark.parametrize("k,size", [((1, 3, 3, 1), 6), ((1, 3, 3, 1), 7), ((1, 2, 1), 7),
                                    ((1, 1), 6)])
def test_resampling_wrappers_and_gradients_match_reference(k, size):
  """upsample_2d / downsample_2d and their input gradients (of sum(sin(y) * r), so the
  cotangent is not constant) equal the previous implementation's; gain and factor 2.
  Even and odd sizes with the FIR kernel; the odd kernel on an odd size, the box on an
  even one."""
  x = jnp.asarray(_rand((2, size, size + 1, 3), 3), jnp.float32)
  for new, old in [(updown.upsample_2d, ref.upsample_2d),
                   (updown.downsample_2d, ref.downsample_2d)]:
    y_new, y_old = jax.jit(lambda a, f=new, g=old: (f(a, k, gain=1.5), g(a, k, gain=1.5)))(x)
    _close(y_new, y_old)
    r = jnp.asarray(_rand(y_old.shape, 4), jnp.float32)
    g_new = jax.jit(jax.grad(lambda a, f=new, r=r: jnp.sum(jnp.sin(f(a, k, gain=1.5)) * r)))(x)
    g_old = jax.jit(jax.grad(lambda a, f=old, r=r: jnp.sum(jnp.sin(f(a, k, gain=1.5)) * r)))(x)
    _close(g_new, g_old)


def test_forward_mode_equals_the_linear_map():
  """upfirdn2d is linear, so its jvp along v is upfirdn2d(v) (the likelihood's
  jax.linearize relies on forward mode), and jvp of grad (second order) runs."""
  x = jnp.asarray(_rand((1, 6, 6, 2), 5), jnp.float32)
  v = jnp.asarray(_rand((1, 6, 6, 2), 6), jnp.float32)
  k = (1, 3, 3, 1)
  for f in (lambda a: updown.upsample_2d(a, k), lambda a: updown.downsample_2d(a, k)):
    tangent, image = jax.jit(lambda x, v, f=f: (jax.jvp(f, (x,), (v,))[1], f(v)))(x, v)
    _close(tangent, image)
    hvp = jax.jit(lambda x, v, f=f: jax.jvp(jax.grad(lambda a: jnp.sum(f(a) ** 3)), (x,),
                                            (v,))[1])(x, v)
    assert hvp.shape == x.shape and bool(jnp.all(jnp.isfinite(hvp)))


@pytest.mark.parametrize("k,size,kc", [((1, 3, 3, 1), 6, 3), ((1, 3, 3, 1), 7, 3),
                                       ((1, 3, 3, 1), 6, 1), ((1, 2, 1), 6, 3),
                                       ((1, 1), 7, 3)])
def test_fused_convs_and_gradients_match_reference(k, size, kc):
  """The fused up-sampling conv (now FIR first, then a VALID conv; before a transposed
  conv, then FIR) and the fused down-sampling conv equal the reference, and so do the
  gradients with respect to the input and the conv weights. Every size and conv width
  with the FIR kernel; the odd kernel and the box once each."""
  x = jnp.asarray(_rand((2, size, size, 3), 7), jnp.float32)
  w = jnp.asarray(_rand((kc, kc, 3, 4), 8), jnp.float32)
  pairs = [(updown.upsample_conv_2d, ref.upsample_conv_2d)]
  if size % 2 == 0:
    pairs.append((updown.conv_downsample_2d, ref.conv_downsample_2d))
  for new, old in pairs:
    y_new, y_old = jax.jit(lambda a, b, f=new, g=old: (f(a, b, k), g(a, b, k)))(x, w)
    _close(y_new, y_old, rel=1e-5, abs_=1e-5)
    r = jnp.asarray(_rand(y_old.shape, 9), jnp.float32)

    def grads(a, b, f, r=r):  # the input and weight gradients in one program
      return jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b, k)) * r), (0, 1))(a, b)

    for g_new, g_old in zip(jax.jit(lambda a, b, f=new: grads(a, b, f))(x, w),
                            jax.jit(lambda a, b, f=old: grads(a, b, f))(x, w)):
      _close(g_new, g_old, rel=1e-5, abs_=1e-5)


def test_conv2d_module_shapes_unchanged():
  """The Conv2d module (NCSN++'s fused resampling conv) keeps its shapes: 2H, H/2, H."""
  from flax import nnx
  x = jnp.asarray(_rand((1, 8, 8, 3), 10), jnp.float32)
  for up, down, h in [(True, False, 16), (False, True, 4), (False, False, 8)]:
    conv = updown.Conv2d(3, 5, 3, up=up, down=down, rngs=nnx.Rngs(0))
    assert conv(x).shape == (1, h, h, 5)
