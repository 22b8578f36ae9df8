"""models/matmul.py: the attention projections' per-position product. Values and
derivatives (grad in x and w, jvp, linearize, grad of grad) equal jnp.tensordot's on the
same float32 inputs to 1e-6 relative; the reverse-mode weight gradient is a canonical
product (contract the first operand's last axis with the second's first); and the custom
rule is traced in on the CPU backend only."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import matmul


def _close(a, b, tol=1e-6):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1.0, np.abs(a).max()))


def _inputs(shape=(2, 4, 3, 5), out=6):
  kx, kw = jax.random.split(jax.random.key(0))
  return jax.random.normal(kx, shape), jax.random.normal(kw, (shape[-1], out))


def _ref(x, w):
  return jnp.tensordot(x, w, axes=1)


def test_values_and_derivatives_equal_tensordot():
  x, w = _inputs()
  ct = jax.random.normal(jax.random.key(1), x.shape[:-1] + (w.shape[-1],))
  dx, dw = jax.random.normal(jax.random.key(2), x.shape), jax.random.normal(
      jax.random.key(3), w.shape)

  def everything(f, x, w):  # one program per implementation
    return (f(x, w),
            jax.vjp(f, x, w)[1](ct),
            jax.jvp(f, (x, w), (dx, dw)),
            jax.jvp(lambda x: f(x, w), (x,), (dx,)),
            jax.linearize(lambda x: f(x, w), x)[1](dx),
            jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w))))(x)
                                       ** 2))(w))

  ref = jax.jit(lambda x, w: everything(_ref, x, w))(x, w)
  ours = jax.jit(lambda x, w: everything(matmul.per_position, x, w))(x, w)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(ours), strict=True):
    _close(a, b)


def _dots(jaxpr):
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(eqn)
    for sub in jax.core.jaxprs_in_params(eqn.params):
      out += _dots(sub)
  return out


def test_weight_gradient_is_taken_on_the_transposed_input():
  """grad in w of sum(per_position(x, w)^2) on (2, 4, 3, 5) x (5, 6): dw comes from a
  product of the cotangent (24, 6) with x stored transposed (5, 24), contracting the
  P = 24 positions; tensordot's own rule contracts axes (0, 1, 2) of x and of the
  cotangent instead."""
  x, w = _inputs()

  def forms(f):
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(f(x, w) ** 2)))(w)
    return [(tuple(e.invars[0].aval.shape), tuple(e.invars[1].aval.shape),
             e.params["dimension_numbers"][0]) for e in _dots(jaxpr.jaxpr)]

  ours = forms(matmul.per_position)
  assert ((24, 6), (5, 24), ((0,), (1,))) in ours, ours
  assert ((24, 6), (5, 24), ((0,), (1,))) not in forms(_ref)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_custom_rule_only_on_cpu_backend(monkeypatch, backend):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  x, w = _inputs()
  # A fresh function: jax caches traces by function and input types, not by backend.
  text = str(jax.make_jaxpr(lambda x, w: matmul.per_position(x, w))(x, w))
  assert ("custom_jvp_call" in text) == (backend == "cpu")
