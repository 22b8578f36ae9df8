"""The previous FIR resampling of models/up_or_down_sampling.py, kept as the tests' reference.

Zero insertion by `lax.pad`'s interior padding and a depthwise (`feature_group_count=C`)
`lax.conv_general_dilated`; the fused up-sampling convolution as a transposed convolution
(input dilation) followed by the FIR filter. It is slow on XLA's CPU backend but
written independently of the shifted-sum code it checks, and it was itself verified against
closed-form resampling matrices (tests/test_ncsnpp.py) and scipy.signal.upfirdn
(tests/test_upfirdn.py). Not part of the library.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from models.up_or_down_sampling import setup_kernel

_DIMS = ("NHWC", "HWIO", "NHWC")


def upfirdn2d(x, k, *, up=1, down=1, pad0=0, pad1=0):
  c = x.shape[-1]
  zero = jnp.zeros((), x.dtype)
  x = lax.pad(x, zero, [(0, 0, 0), (pad0, pad1 + up - 1, up - 1),
                        (pad0, pad1 + up - 1, up - 1), (0, 0, 0)])
  w = jnp.asarray(np.ascontiguousarray(np.asarray(k)[::-1, ::-1]), dtype=x.dtype)
  w = jnp.tile(w[:, :, None, None], (1, 1, 1, c))
  return lax.conv_general_dilated(x, w, window_strides=(down, down), padding="VALID",
                                  dimension_numbers=_DIMS, feature_group_count=c)


def upsample_2d(x, k=None, factor=2, gain=1.0):
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x, k=None, factor=2, gain=1.0):
  k = setup_kernel([1] * factor if k is None else k) * gain
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x, w, k=None, factor=2, gain=1.0):
  kc = w.shape[0]
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = (k.shape[0] - factor) - (kc - 1)
  x = lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(1, 1),
                               padding=[(kc - 1, kc - 1)] * 2,
                               lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
  return upfirdn2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x, w, k=None, factor=2, gain=1.0):
  kc = w.shape[0]
  k = setup_kernel([1] * factor if k is None else k) * gain
  p = (k.shape[0] - factor) + (kc - 1)
  x = upfirdn2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
  return lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(factor, factor),
                                  padding="VALID", dimension_numbers=_DIMS)
