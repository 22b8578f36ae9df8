"""Per-position matrix product x @ w whose weight gradient XLA's CPU backend runs as a plain
matrix product: the attention blocks' projections (the why and the how: `per_position`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from models.conv import layouts_apply, sum_tangents


@jax.custom_jvp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w


def _matmul_jvp(primals, tangents):
  x, w = primals
  dx, dw = tangents
  y = _matmul(x, w)
  terms = []
  if not isinstance(dx, SymbolicZero):
    terms.append(dx @ w)
  if not isinstance(dw, SymbolicZero):
    # x stored transposed, (I, P): see per_position's docstring for what reverse mode
    # makes of this term.
    xt = jnp.transpose(x)
    terms.append(lax.dot_general(xt, dw, (((0,), (0,)), ((), ()))))
  return y, sum_tangents(y, terms)


_matmul.defjvp(_matmul_jvp, symbolic_zeros=True)


def per_position(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (..., I) @ w (I, O) -> (..., O): the same numbers as `jnp.tensordot(x, w, 1)`.

  Why. The weight gradient of y = x w over P = prod(x.shape[:-1]) positions is
  x^T ct, a product that contracts the long, major axis of both (P, I) and (P, O). XLA's
  CPU backend makes one operand physically transposed first, and in the attention blocks'
  output projection it picked ct, the output of a large fusion of the backward pass
  (broadcasts and sums from the residual branches), which it then ran in transposed,
  cache-unfriendly order: 40-70 ms for one (4096, 64) cotangent of the reduced NCSN++
  training step, ~12 % of the step (BENCHMARKS.md, "Side by side with score_sde_pytorch").

  How. A `jax.custom_jvp` whose tangent in w is written on x stored transposed, (I, P).
  Reverse mode then gives dw as (ct^T xt^T)^T: a product of the cotangent with the small
  copy of x, then a transpose of the (O, I) result. XLA simplifies that into a product
  reading ct in place (measured in the compiled step: the transposed copies of ct are gone
  and the step's CPU time fell from ~1310 to ~1090 ms). Values and derivatives are the same
  numbers (tests/test_matmul.py); zero tangents are skipped (symbolic zeros), so forward
  mode in x alone costs one product.
  On backends other than CPU it is `jnp.tensordot` (`models.conv.layouts_apply`).
  """
  if not layouts_apply():
    return jnp.tensordot(x, w, axes=1)
  lead = x.shape[:-1]
  return _matmul(x.reshape(-1, x.shape[-1]), w).reshape(*lead, w.shape[-1])
