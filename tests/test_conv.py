"""models/conv.py: lax's convolution with a weight gradient XLA's CPU backend runs fast in
loops. Values and derivatives of every order are compared with lax.conv_general_dilated
on the same inputs (float32; equal to 1e-6 relative, in practice bitwise), and the
reverse-mode program is checked to contain only canonical NHWC/HWIO convolutions, the
form XLA's CPU backend runs on its fast path inside `while` loops."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from models import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")
CASES = [  # (x shape, kernel, stride, padding, dilation)
    ((2, 9, 8, 3), 3, 1, "SAME", 1),
    ((2, 8, 8, 3), 3, 2, "SAME", 1),
    ((2, 9, 9, 4), 3, 2, ((1, 1), (1, 1)), 1),
    ((2, 10, 10, 3), 3, 1, "SAME", 2),
    ((1, 11, 10, 2), 1, 1, "VALID", 1),
    ((2, 12, 12, 3), 4, 2, ((0, 1), (2, 1)), 1),
]


def _pair(x_shape, k, seed=0):
  kx, kw = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, (k, k, x_shape[-1], 5)) / k
  return x, w


def _fns(stride, padding, dilation):
  def ref(x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                    rhs_dilation=(dilation, dilation),
                                    dimension_numbers=NHWC)

  def new(x, w):
    return conv_lib.conv_general_dilated(x, w, (stride, stride), padding,
                                         rhs_dilation=(dilation, dilation),
                                         dimension_numbers=NHWC)
  return ref, new


def _close(a, b, tol=1e-6):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1.0, np.abs(a).max()))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("x_shape,k,stride,padding,dilation", CASES)
def test_values_and_derivatives_equal_lax(x_shape, k, stride, padding, dilation, reverse):
  """Forward, grad in x and w, jvp, linearize (the likelihood's trace estimators), the
  Hessian-vector product (jvp of grad) and grad of grad all equal lax's, with and
  without reverse_mode_layouts()."""
  ref, new_default = _fns(stride, padding, dilation)

  def new(x, w):
    if not reverse:
      return new_default(x, w)
    with conv_lib.reverse_mode_layouts():
      return new_default(x, w)

  x, w = _pair(x_shape, k)
  vx, vw = _pair(x_shape, k, seed=1)
  _close(ref(x, w), new(x, w))

  def loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)) ** 2)

  for a, b in zip(jax.grad(loss(ref), (0, 1))(x, w), jax.grad(loss(new), (0, 1))(x, w)):
    _close(a, b)
  _close(jax.jvp(ref, (x, w), (vx, vw))[1], jax.jvp(new, (x, w), (vx, vw))[1])
  _close(jax.linearize(lambda u: ref(u, w), x)[1](vx),
         jax.linearize(lambda u: new(u, w), x)[1](vx))
  hr = jax.jvp(jax.grad(loss(ref), (0, 1)), (x, w), (vx, vw))[1]
  hn = jax.jvp(jax.grad(loss(new), (0, 1)), (x, w), (vx, vw))[1]
  for a, b in zip(hr, hn):
    _close(a, b, 1e-5)

  def gg(f):
    return jax.grad(lambda w: jnp.sum(jax.grad(loss(f))(x, w) ** 2))

  _close(gg(ref)(w), gg(new)(w), 1e-5)


def test_vmap_and_input_only_gradient():
  """vmap over a leading axis, and the gradient in x alone (classifier guidance, the
  score of a network input) equal lax's."""
  ref, new = _fns(1, "SAME", 1)
  x, w = _pair((3, 2, 6, 6, 3), 3)
  _close(jax.vmap(ref, (0, None))(x, w), jax.vmap(new, (0, None))(x, w))
  _close(jax.grad(lambda u: jnp.sum(ref(u, w) ** 3))(x[0]),
         jax.grad(lambda u: jnp.sum(new(u, w) ** 3))(x[0]))


def _convs(jaxpr) -> list:
  """Every conv_general_dilated equation in a closed jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(eqn)
    for sub in _sub_jaxprs(eqn.params):
      found.extend(_convs(sub))
  return found


def _sub_jaxprs(params) -> list:
  subs = []
  for v in params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        subs.append(item.jaxpr)
      elif hasattr(item, "eqns"):
        subs.append(item)
  return subs


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_gradients_are_canonical_convolutions_inside_scan(stride, dilation):
  """The reverse-mode program of a scanned training-like step: with lax's convolution
  the weight gradient has the batch and feature axes of x swapped and the input gradient
  the kernel's I and O axes, forms XLA's CPU backend runs ~60x and ~2x slower inside
  loops; with models/conv.py the weight gradient is NHWC/HWIO/NHWC, and under
  reverse_mode_layouts() the input gradient too (asserted on the jaxpr). The forward
  tangent (jax.linearize) stays canonical by default."""
  x, w = _pair((2, 8, 8, 3), 3)
  canonical = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

  def program(f, reverse=False):
    def body(carry, _):
      x, w = carry
      gx, gw = jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w))), (0, 1))(x, w)
      return (x - 0.1 * gx, w - 0.1 * gw), None

    def run(x, w):
      if reverse:
        with conv_lib.reverse_mode_layouts():
          return lax.scan(body, (x, w), None, length=2)[0]
      return lax.scan(body, (x, w), None, length=2)[0]
    return jax.make_jaxpr(run)(x, w).jaxpr

  def specs(jaxpr):
    return [e.params["dimension_numbers"] for e in _convs(jaxpr)]

  ref, new = _fns(stride, "SAME", dilation)
  ref_specs, new_specs = specs(program(ref)), specs(program(new))
  rev_specs = specs(program(new, reverse=True))
  # forward, weight gradient and input gradient
  assert len(ref_specs) == len(new_specs) == len(rev_specs) == 3
  assert sum(s != canonical for s in ref_specs) == 2  # the test sees the slow forms
  assert sum(s != canonical for s in new_specs) == 1  # only the input gradient's
  assert all(s == canonical for s in rev_specs), rev_specs
  linearized = jax.make_jaxpr(lambda x, v: jax.linearize(lambda u: new(u, w), x)[1](v))
  assert all(s == canonical for s in specs(linearized(x, x).jaxpr))


def test_nnx_conv_and_unsupported_layouts():
  """nnx.Conv with conv_general_dilated=models.conv's (NCSNv2, the classifiers) equals
  the default nnx.Conv with the same parameters; grouped and NCHW convolutions fall
  back to lax."""
  a = nnx.Conv(3, 4, (3, 3), kernel_dilation=(2, 2), rngs=nnx.Rngs(0))
  b = nnx.Conv(3, 4, (3, 3), kernel_dilation=(2, 2), rngs=nnx.Rngs(0),
               conv_general_dilated=conv_lib.conv_general_dilated)
  x = jax.random.normal(jax.random.key(2), (2, 7, 7, 3))
  _close(a(x), b(x))
  ga = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(a)
  gb = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(b)
  _close(ga["kernel"][...], gb["kernel"][...])
  w = jax.random.normal(jax.random.key(3), (3, 3, 1, 6))
  xg = jax.random.normal(jax.random.key(4), (2, 6, 6, 3))
  _close(lax.conv_general_dilated(xg, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                  feature_group_count=3),
         conv_lib.conv_general_dilated(xg, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                       feature_group_count=3))
  xc = jnp.transpose(xg, (0, 3, 1, 2))
  wc = jax.random.normal(jax.random.key(5), (6, 3, 3, 3))
  _close(lax.conv_general_dilated(xc, wc, (1, 1), "SAME"),
         conv_lib.conv_general_dilated(xc, wc, (1, 1), "SAME"))


def test_the_training_step_differentiates_with_canonical_convolutions():
  """The training step of training.step (what training.loop scans) on a tiny DDPM++ of
  the digits: every convolution in its program, forward and both gradients, is
  NHWC/HWIO/NHWC, i.e. the loss is traced under reverse_mode_layouts() (asserted on the
  jaxpr; nothing is compiled). Without that, the input gradients would not be."""
  from configs import tiny
  from configs.vp.digits_ddpmpp_small import get_config
  from common.mesh import make_mesh
  from training import step as step_lib
  from training.state import create_train_state

  config = tiny.shrink(get_config())
  config.training.batch_size = 2
  mesh = make_mesh(jax.devices()[:1])
  train_step = step_lib.build_train_step(config, mesh, host_batches=True)
  state = create_train_state(config)
  batch = np.zeros((2,) + (config.data.image_size,) * 2 + (1,), np.float32)
  jaxpr = jax.make_jaxpr(train_step)(state, batch).jaxpr
  convs = _convs(jaxpr)
  assert len(convs) >= 6  # a few layers' forward, weight and input gradients
  for eqn in convs:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    assert eqn.params["dimension_numbers"] == lax.conv_dimension_numbers(lhs, rhs, NHWC)


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_layouts_only_on_cpu_backend(monkeypatch, backend):
  """The custom layouts are traced in only when JAX's default backend is CPU (where they
  were measured); on any other backend the convolution and its reverse-mode gradient,
  inside reverse_mode_layouts() too, are lax's own program, jaxpr for jaxpr."""
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  x, w = _pair((2, 8, 8, 3), 3)

  def loss(conv):
    return lambda x, w: jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2)

  def grad_jaxpr(conv):
    with conv_lib.reverse_mode_layouts():
      return str(jax.make_jaxpr(jax.grad(loss(conv), argnums=(0, 1)))(x, w))

  ours, ref = grad_jaxpr(conv_lib.conv_general_dilated), grad_jaxpr(lax.conv_general_dilated)
  forward = str(jax.make_jaxpr(loss(conv_lib.conv_general_dilated))(x, w))
  assert conv_lib.layouts_apply() == (backend == "cpu")
  if backend == "cpu":
    assert ours != ref and "custom_jvp_call" in forward
  else:
    assert ours == ref and "custom_jvp_call" not in forward
