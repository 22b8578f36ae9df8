"""2-D convolution whose weight gradient XLA's CPU backend runs fast inside loops: a drop-in
for `lax.conv_general_dilated`, equal to it in value and in every derivative, used by
every convolution of the networks (the why and the how: `conv_general_dilated`)."""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_NHWC = ("NHWC", "HWIO", "NHWC")
# The weight-tangent convolution's layouts: transposing it with respect to its kernel
# gives the canonical ("NHWC", "HWIO", "NHWC") convolution (conv_general_dilated's docstring).
_SWAPPED = ("CHWN", "IHWO", "HWNC")
# The input tangent's layouts under reverse_mode_layouts(): its transpose is canonical.
_KERNEL_OI = ("NHWC", "HWOI", "NHWC")


def sum_tangents(y: jax.Array, terms: list[jax.Array]) -> jax.Array:
  """The output tangent of a custom JVP rule: the sum of its terms, left to right, or
  zeros like y when every input tangent was a symbolic zero."""
  if not terms:
    return jnp.zeros_like(y)
  dy = terms[0]
  for t in terms[1:]:
    dy = dy + t
  return dy


def _make_conv(reverse_friendly_input: bool):
  """The custom_jvp convolution; see conv_general_dilated's docstring. reverse_friendly_input also
  writes the input tangent with the kernel as (kh, kw, O, I), so that its transpose (the
  input gradient) is canonical too, at the price of a non-canonical forward-mode tangent."""

  @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
  def conv(x, w, strides, padding, dilation, precision, preferred):
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=_NHWC, precision=precision,
                                    preferred_element_type=preferred)

  def conv_jvp(strides, padding, dilation, precision, preferred, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = conv(x, w, strides, padding, dilation, precision, preferred)
    kw = dict(rhs_dilation=dilation, precision=precision, preferred_element_type=preferred)
    terms = []
    if not isinstance(dx, SymbolicZero):
      if reverse_friendly_input:
        terms.append(lax.conv_general_dilated(dx, jnp.transpose(w, (0, 1, 3, 2)), strides,
                                              padding, dimension_numbers=_KERNEL_OI, **kw))
      else:
        terms.append(lax.conv_general_dilated(dx, w, strides, padding,
                                              dimension_numbers=_NHWC, **kw))
    if not isinstance(dw, SymbolicZero):
      t = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)),
                                   jnp.transpose(dw, (2, 0, 1, 3)), strides, padding,
                                   dimension_numbers=_SWAPPED, **kw)
      terms.append(jnp.transpose(t, (2, 0, 1, 3)))  # (H, W, N, O) -> (N, H, W, O)
    return y, sum_tangents(y, terms)

  conv.defjvp(conv_jvp, symbolic_zeros=True)
  return conv


_conv = _make_conv(False)
_conv_reverse = _make_conv(True)
_REVERSE_MODE = contextvars.ContextVar("models.conv.reverse_mode", default=False)


@contextlib.contextmanager
def reverse_mode_layouts():
  """Convolutions traced inside this block also get a canonical input gradient.

  For code that differentiates in reverse mode only (the training steps: training.step,
  training.classifier). The input gradient of conv(x, w) is conv(g, flip(w)) with the
  kernel's I and O axes swapped, which XLA's CPU backend again canonicalizes only at the
  top level of a program (measured: 38 ms inside a scan against 16-20 ms outside for one
  3x3, 64-channel layer on a (16, 32, 32, 64) batch). Inside this block the input tangent
  is written on the transposed kernel, so its transpose is canonical (19 ms in the scan);
  forward mode then pays instead (jax.linearize of the layer in a scan: 29 ms against
  8 ms), which is why it is not the default: the likelihood's trace estimators linearize
  the network inside the ODE solver's loop. Values and derivatives are the same numbers
  either way. The choice is made when a function is traced, so it is baked into the
  compiled program.
  """
  token = _REVERSE_MODE.set(True)
  try:
    yield
  finally:
    _REVERSE_MODE.reset(token)


def layouts_apply() -> bool:
  """Whether the custom layouts above are used: only when JAX's default backend is CPU,
  read when a function is traced. They were measured on XLA's CPU backend only; elsewhere
  every convolution is plain `lax.conv_general_dilated` until a measurement shows them
  neutral or better there."""
  return jax.default_backend() == "cpu"


def _pairs(values: Sequence[int] | None, n: int) -> tuple[int, ...]:
  return (1,) * n if values is None else tuple(int(v) for v in values)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated` with the loop-friendly weight gradient (below).

  lhs: (N, H, W, C) and rhs: (kh, kw, C, O) in ("NHWC", "HWIO", "NHWC") layout (given as
  strings or as the ConvDimensionNumbers flax builds for them), ungrouped, without input
  dilation; anything else, or extra keyword arguments other than out_sharding=None, goes
  to lax unchanged. Returns (N, H', W', O).

      y = conv_general_dilated(x, w, window_strides, padding, ...)   # lax's signature

  A drop-in for `lax.conv_general_dilated`, used by every convolution of the networks
  (models/layers.py, models/up_or_down_sampling.py, and `nnx.Conv(conv_general_dilated=...)`
  in NCSNv2 and the classifiers). The forward value is lax's, bit for bit; so are the
  gradients (tests/test_conv.py). What changes is the program the weight gradient becomes.

  Why. The weight gradient of y = conv(x, w) (NHWC input, HWIO kernel) is itself a
  convolution, with the batch and feature axes of x swapped ("f01b_i01o->01bf" in XLA's
  notation). XLA's CPU backend rewrites that to its fast canonical form ("b01f_01io->b01f",
  with explicit transposes) only at the top level of a program: inside a `while` loop --
  the `lax.scan` of `training.step.make_multi_step` -- it stays in the slow generic loop
  nest. On 2 CPU cores the NCSN++ training step took 17.0 s inside the scan and 0.75 s
  jitted alone (BENCHMARKS.md); a single 3x3, 64-channel convolution's gradient
  on a (16, 32, 32, 64) batch takes 2.4 s in a length-1 scan and 0.04 s outside.

  How. A `jax.custom_jvp` whose tangent in w is the same convolution written on physically
  transposed operands:

      dy = conv(dx, w)  +  T_out( conv'(T_x(x), T_w(dw)) )

  with x stored as (C, H, W, N) ("CHWN"), dw as (I, kh, kw, O) ("IHWO") and the output
  as (H, W, N, O) ("HWNC"). The sum is the same number as lax's. Reverse mode transposes
  this tangent; JAX's rule for the rhs of conv' swaps the batch and feature roles, which
  here produces exactly the canonical form ("NHWC", "HWIO", "NHWC") on transposed arrays,
  and XLA runs it on its fast path in loops as well. Forward mode (`jax.linearize` in the
  likelihood's trace estimators) and higher derivatives keep working, since the rule is
  made of ordinary primitives; zero tangents are skipped (symbolic zeros), so the
  likelihood's input-only tangent costs one convolution.

  The input gradient has the same problem in a milder form (2x in a loop); code that
  only differentiates in reverse mode (the training steps) traces its loss inside
  `reverse_mode_layouts()`, which fixes that too at the expense of forward mode.

  Other layouts, grouped or input-dilated convolutions fall back to lax unchanged, and so
  does everything on backends other than CPU (`layouts_apply`).
  """
  if (layouts_apply() and lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
      and batch_group_count == 1 and all(v is None for v in kwargs.values())
      and _pairs(lhs_dilation, 2) == (1, 1) and dimension_numbers is not None
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    strides, dilation = _pairs(window_strides, 2), _pairs(rhs_dilation, 2)
    if isinstance(padding, str):
      window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation)]
      padding = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    conv = _conv_reverse if _REVERSE_MODE.get() else _conv
    return conv(lhs, rhs, strides, pads, dilation, precision, preferred_element_type)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  batch_group_count, precision, preferred_element_type,
                                  **kwargs)
