"""DDPM's U-Net ("ddpm"): shapes, dtypes, dropout, labels, scale_by_sigma, at a tiny size.

Parameters are filled from numpy after an abstract build (see tests/test_ncsnpp.py for
why); DDPM's GroupNorm has 32 groups, so the widths are multiples of 32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import models.ddpm  # noqa: F401  (registers "ddpm")
from models.ddpm import DDPM
from models.precond import Precond, get_sigmas

_SMALL = dict(channels=3, image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(4,), dropout=0.5)


def _filled(make, seed: int = 0):
  """(graphdef, state) of make()'s module with numpy parameters: weights ~ N(0, 1/fan_in);
  GroupNorm scales ~ 1 + N(0, 0.1^2); other 1-D parameters ~ N(0, 0.1^2)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    if len(a.shape) >= 2:
      v = rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))
    else:
      v = 0.1 * rng.normal(size=a.shape) + (1.0 if "scale" in str(path[-1]) else 0.0)
    return jnp.asarray(v, a.dtype)

  return graphdef, jax.tree.map_with_path(fill, abstract)


def _x():
  return jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)), jnp.float32)


def test_ddpm_f32_dropout_and_labels():
  x = _x()
  graphdef, state = _filled(lambda: Precond(DDPM(**_SMALL, rngs=nnx.Rngs(0)),
                                            center_input=True, scale_by_sigma=False,
                                            continuous=True))

  @jax.jit
  def run(state, labels, key):
    net = nnx.merge(graphdef, state)
    return net(x, labels), net(x, labels, train=True, key=key)

  # 'rbg' dropout keys: each threefry draw costs XLA's CPU backend seconds to compile.
  k1, k2 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")
  for labels in (jnp.array([0.5, 812.7]), jnp.array([0.0, 999.0])):  # 999 t; DDPM index
    ev, tr = run(state, labels, k1)
    ev2, tr2 = run(state, labels, k2)
    for y in (ev, tr):
      assert y.shape == x.shape and y.dtype == jnp.float32
      assert bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(ev, ev2)  # eval ignores the key
    assert float(jnp.abs(tr - ev).max()) > 1e-3  # dropout is active in training
    assert float(jnp.abs(tr - tr2).max()) > 1e-3  # and depends on the key
    assert float(jnp.abs(ev[0] - ev[1]).max()) > 1e-3  # the labels are embedded


def test_ddpm_bf16_close_to_f32_and_scale_by_sigma():
  """bfloat16 compute with the same float32 parameters; scale_by_sigma (SMLD, discrete
  labels) divides by get_sigmas(...)[labels]."""
  wrap = dict(center_input=True, scale_by_sigma=True, continuous=False, sigma_min=0.01,
              sigma_max=50.0, num_scales=10)
  x, labels = _x(), jnp.array([2.0, 9.0])
  graphdef, state = _filled(lambda: Precond(DDPM(**_SMALL, rngs=nnx.Rngs(0)), **wrap))
  graphdef16, abstract16 = nnx.split(nnx.eval_shape(lambda: Precond(
      DDPM(**_SMALL, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), **wrap)))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(abstract16))

  def outputs(graphdef):
    @jax.jit
    def run(state):
      net = nnx.merge(graphdef, state)
      scaled = net(x, labels)
      net.scale_by_sigma = False
      return scaled, net(x, labels)
    return run(state)

  scaled, raw = outputs(graphdef)
  scaled16, raw16 = outputs(graphdef16)
  for y in (scaled, raw, scaled16, raw16):
    assert y.shape == x.shape and y.dtype == jnp.float32
  used = get_sigmas(0.01, 50.0, 10)[jnp.array([2, 9])]
  np.testing.assert_allclose(scaled * used[:, None, None, None], raw, rtol=1e-5, atol=1e-6)
  rel = float(jnp.abs(raw16 - raw).mean() / jnp.abs(raw).mean())
  assert rel < 0.05, rel


def test_ddpm_builder_reads_config():
  from configs.vp.ddpm.cifar10 import get_config
  config = get_config()
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 32, (1, 2), 1
  config.data.image_size, config.model.attn_resolutions = 8, (4,)
  net = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))
  assert isinstance(net, Precond) and isinstance(net.backbone, DDPM)
  assert not net.center_input and not net.scale_by_sigma and not net.continuous
  graphdef, abstract = nnx.split(net)
  y = jax.eval_shape(lambda s: nnx.merge(graphdef, s)(jnp.zeros((2, 8, 8, 3)),
                                                      jnp.zeros((2,))), abstract)
  assert y.shape == (2, 8, 8, 3) and y.dtype == jnp.float32
  config.model.normalization = "InstanceNorm++"
  with pytest.raises(ValueError, match="GroupNorm"):
    models.get_model(config, nnx.Rngs(0))
