"""FIR resampling against closed forms, and NCSN++ / DDPM++ shapes, dtypes and dropout.

The networks are tiny (8x8 images, nf=16, ch_mult (1, 2), one residual block per level,
attention at 4x4) and jitted once per configuration. Their parameters are not drawn by
the networks' initialisers: the module is built abstractly (nnx.eval_shape) and its
parameters filled from numpy, because compiling hundreds of threefry draws costs XLA's
CPU backend minutes; initialisation itself is covered by the parameter-count tests.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import models.ddpm  # noqa: F401  (registers "ddpm")
import models.ncsnpp  # noqa: F401  (registers "ncsnpp")
from models import up_or_down_sampling as updown
from models.ncsnpp import NCSNpp
from models.precond import Precond, get_sigmas

# ----------------------------------------------------------------------------------------
# FIR up/down-sampling


def _fir_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
  """1-D operators of FIR [1, 3, 3, 1] resampling with zeros outside the signal.

  Upsampling puts output pixels 2m and 2m+1 at -1/4 and +1/4 of input pixel m:
  y[2m] = (3 x[m] + x[m-1]) / 4, y[2m+1] = (3 x[m] + x[m+1]) / 4. Downsampling averages
  with weights [1, 3, 3, 1] / 8 centred between pixels 2m and 2m+1.
  """
  up = np.zeros((2 * n, n))
  for m in range(n):
    up[2 * m, m] = up[2 * m + 1, m] = 0.75
    if m > 0:
      up[2 * m, m - 1] = 0.25
    if m + 1 < n:
      up[2 * m + 1, m + 1] = 0.25
  down = np.zeros((n, 2 * n))
  for m in range(n):
    for j, w in zip((2 * m - 1, 2 * m, 2 * m + 1, 2 * m + 2), (1, 3, 3, 1)):
      if 0 <= j < 2 * n:
        down[m, j] = w / 8
  return up, down


def test_fir_resampling_matches_closed_form():
  rng = np.random.default_rng(0)
  n = 6
  x = rng.normal(size=(2, n, n, 3))
  up, down = _fir_matrices(n)
  k = (1, 3, 3, 1)
  got_up = np.asarray(updown.upsample_2d(jnp.asarray(x, jnp.float32), k))
  want_up = np.einsum("ih,bhwc,jw->bijc", up, x, up)
  np.testing.assert_allclose(got_up, want_up, atol=1e-5)
  x2 = rng.normal(size=(2, 2 * n, 2 * n, 3))
  got_down = np.asarray(updown.downsample_2d(jnp.asarray(x2, jnp.float32), k))
  np.testing.assert_allclose(got_down, np.einsum("ih,bhwc,jw->bijc", down, x2, down),
                             atol=1e-5)
  # Upsample then downsample: the composition of the two closed forms.
  got = np.asarray(updown.downsample_2d(updown.upsample_2d(jnp.asarray(x, jnp.float32), k), k))
  both = down @ up
  np.testing.assert_allclose(got, np.einsum("ih,bhwc,jw->bijc", both, x, both), atol=1e-5)


def test_fir_constant_image_and_default_kernel():
  c = 2.5
  x = jnp.full((1, 8, 8, 2), c, jnp.float32)
  d = np.asarray(updown.downsample_2d(x, (1, 3, 3, 1)))
  np.testing.assert_allclose(d[:, 1:-1, 1:-1], c, rtol=1e-6)  # interior stays constant
  np.testing.assert_allclose(d[0, 0, 2, 0], c * 7 / 8, rtol=1e-6)  # 1/8 falls outside
  np.testing.assert_allclose(d[0, 0, 0, 0], c * 49 / 64, rtol=1e-6)
  u = np.asarray(updown.upsample_2d(x, (1, 3, 3, 1)))
  np.testing.assert_allclose(u[:, 1:-1, 1:-1], c, rtol=1e-6)
  # The default kernel [1, 1] is nearest-neighbour up / average-pool down.
  y = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 3)), jnp.float32)
  np.testing.assert_allclose(updown.upsample_2d(y), np.repeat(np.repeat(y, 2, 1), 2, 2),
                             atol=1e-6)
  np.testing.assert_allclose(updown.downsample_2d(y),
                             np.asarray(y).reshape(2, 2, 2, 2, 2, 3).mean((2, 4)), atol=1e-6)


def test_fused_resampling_convs_match_separate_ops_inside():
  """StyleGAN2's fused conv+resample equals resample-then-conv (or conv-then-resample)
  away from the borders, where only the zero-padding conventions differ."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  k = (1, 3, 3, 1)

  def conv(a):
    return jax.lax.conv_general_dilated(a, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  fused_up = updown.upsample_conv_2d(x, w, k)
  assert fused_up.shape == (2, 16, 16, 5)
  np.testing.assert_allclose(fused_up[:, 2:-2, 2:-2],
                             conv(updown.upsample_2d(x, k))[:, 2:-2, 2:-2], atol=1e-4)
  fused_down = updown.conv_downsample_2d(x, w, k)
  assert fused_down.shape == (2, 4, 4, 5)
  np.testing.assert_allclose(fused_down[:, 1:-1, 1:-1],
                             updown.downsample_2d(conv(x), k)[:, 1:-1, 1:-1], atol=1e-4)


# ----------------------------------------------------------------------------------------
# Networks

_SMALL = dict(channels=3, image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(4,), dropout=0.5, init_scale=1.0)


def _net(*, scale_by_sigma: bool = False, continuous: bool = True, centered: bool = False,
         sigma_min=None, sigma_max=None, num_scales=None, **kw) -> Precond:
  """NCSNpp(**kw) with score_sde's semantics (what models.get_model builds): input
  centering unless centered, 1/sigma output scaling if scale_by_sigma."""
  return Precond(NCSNpp(**kw), center_input=not centered, scale_by_sigma=scale_by_sigma,
                 continuous=continuous, sigma_min=sigma_min, sigma_max=sigma_max,
                 num_scales=num_scales)


def _filled(make, seed: int = 0):
  """(graphdef, state) of make()'s module, parameters from numpy: weights ~ N(0, 1/fan_in),
  1-D parameters ~ 1 + N(0, 0.1^2) for GroupNorm scales, N(0, 0.1^2) otherwise."""
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    if len(a.shape) >= 2:
      v = rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))
    else:
      v = 0.1 * rng.normal(size=a.shape) + (1.0 if "scale" in str(path[-1]) else 0.0)
    return jnp.asarray(v, a.dtype)

  return graphdef, jax.tree.map_with_path(fill, abstract)


def _dropout_key(seed: int) -> jax.Array:
  """Dropout keys of the 'rbg' implementation: XLA's CPU backend takes seconds to compile
  each threefry draw (one per dropout layer), RngBitGenerator almost nothing. The networks
  take any typed key."""
  return jax.random.key(seed, impl="rbg")


def _runner(graphdef, with_train: bool = False, with_unscaled: bool = False):
  """fn(state, x, labels) -> dict of outputs, compiled once: "eval"; with_train, "train"
  and "train2" (dropout with two keys: the same compiled function called with each);
  with_unscaled, "unscaled" (scale_by_sigma switched off).

  Every extra output is another copy of the network for XLA to compile, and dropout's
  random bits are slow to compile on CPU, so each test asks only for what it checks.
  """

  @jax.jit
  def run(state, x, labels, key):
    net = nnx.merge(graphdef, state)
    out = {"eval": net(x, labels)}
    if with_train:
      out["train"] = net(x, labels, train=True, key=key)
    if with_unscaled:
      net.scale_by_sigma = False
      out["unscaled"] = net(x, labels)
    return out

  def outputs(state, x, labels):
    out = run(state, x, labels, _dropout_key(42))
    if with_train:
      out["train2"] = run(state, x, labels, _dropout_key(43))["train"]
    return out

  return outputs


def _check_common(out, x):
  for name, y in out.items():
    assert y.shape == x.shape and y.dtype == jnp.float32, name
    assert bool(jnp.all(jnp.isfinite(y))), name
  if "train" in out:
    assert float(jnp.abs(out["train"] - out["eval"]).max()) > 1e-3  # dropout is active
    assert float(jnp.abs(out["train"] - out["train2"]).max()) > 1e-3  # and keyed


def _x():
  # numpy, not jax.random: an eager threefry draw costs a compile of its own.
  return jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)), jnp.float32)


def test_ncsnpp_fir_skip_pyramids_fourier_scale_by_sigma_f32_and_bf16():
  """NCSN++ as at 256 px: BigGAN blocks, FIR, output_skip + input_skip, Fourier features of
  log sigma, output / sigma. float32 with dropout on and off; bfloat16 compute, with the
  same float32 parameters, stays close to float32."""
  kw = dict(_SMALL, resblock_type="biggan", fir=True, progressive="output_skip",
            progressive_input="input_skip", progressive_combine="sum",
            embedding_type="fourier", scale_by_sigma=True, continuous=True)
  x, sigmas = _x(), jnp.array([0.05, 20.0])
  graphdef, state = _filled(lambda: _net(**kw, rngs=nnx.Rngs(0)))
  out = _runner(graphdef, with_train=True)(state, x, sigmas)
  _check_common(out, x)

  graphdef16, abstract16 = nnx.split(nnx.eval_shape(
      lambda: _net(**kw, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))))
  for leaf in jax.tree.leaves(abstract16):
    assert leaf.dtype == jnp.float32  # parameters stay float32 under bfloat16 compute
  out16 = _runner(graphdef16, with_unscaled=True)(state, x, sigmas)
  _check_common(out16, x)
  rel = float(jnp.abs(out16["eval"] - out["eval"]).mean() / jnp.abs(out["eval"]).mean())
  assert rel < 0.05, rel
  # scale_by_sigma divides the float32 output by the labels, the noise levels.
  np.testing.assert_allclose(out16["eval"] * sigmas[:, None, None, None], out16["unscaled"],
                             rtol=1e-5, atol=1e-6)


def test_ncsnpp_residual_pyramids_discrete_labels():
  """Residual input and output pyramids; positional embedding of SMLD noise-level indices;
  scale_by_sigma divides by get_sigmas(...)[labels]."""
  kw = dict(_SMALL, resblock_type="biggan", fir=True, progressive="residual",
            progressive_input="residual", embedding_type="positional",
            scale_by_sigma=True, continuous=False, sigma_min=0.01, sigma_max=50.0,
            num_scales=10)
  x, labels = _x(), jnp.array([0.0, 7.0])
  graphdef, state = _filled(lambda: _net(**kw, rngs=nnx.Rngs(0)))
  out = _runner(graphdef, with_unscaled=True)(state, x, labels)
  _check_common(out, x)
  used = get_sigmas(0.01, 50.0, 10)[jnp.array([0, 7])]
  np.testing.assert_allclose(out["eval"] * used[:, None, None, None], out["unscaled"],
                             rtol=1e-5, atol=1e-6)


def test_ncsnpp_ddpm_blocks_fir_input_skip_cat_bf16():
  """DDPM residual blocks with separate FIR Down/Upsample convs and a concatenating
  input_skip pyramid, in bfloat16."""
  kw = dict(_SMALL, resblock_type="ddpm", fir=True, progressive="none",
            progressive_input="input_skip", progressive_combine="cat",
            embedding_type="positional", scale_by_sigma=False, dtype=jnp.bfloat16)
  x = _x()
  graphdef, state = _filled(lambda: _net(**kw, rngs=nnx.Rngs(0)))
  _check_common(_runner(graphdef)(state, x, jnp.array([10.0, 900.0])), x)


def test_ddpmpp_positional_continuous_and_discrete_labels():
  """DDPM++: no FIR, no pyramids, positional embedding of 999 t or of a DDPM index; the
  same compiled network serves both."""
  kw = dict(_SMALL, resblock_type="ddpm", fir=False, progressive="none",
            progressive_input="none", embedding_type="positional", scale_by_sigma=False,
            centered=True)
  x = 2 * _x() - 1
  graphdef, state = _filled(lambda: _net(**kw, rngs=nnx.Rngs(0)))
  run = _runner(graphdef)
  for labels in (jnp.array([0.999, 512.3]), jnp.array([0.0, 999.0])):  # 999 t; index
    out = run(state, x, labels)
    _check_common(out, x)
    # The time embedding matters: different labels, different outputs.
    assert float(jnp.abs(out["eval"][0] - out["eval"][1]).max()) > 1e-3


def test_resnet_block_ddpmpp_dropout():
  """DDPM++'s residual block: dropout only with train=True, keyed, and a key is required."""
  from models.layerspp import ResnetBlockDDPMpp
  graphdef, state = _filled(lambda: ResnetBlockDDPMpp(
      16, 32, temb_dim=8, dropout=0.5, skip_rescale=True, init_scale=1.0, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 16)), jnp.float32)
  temb = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)

  @jax.jit
  def run(state, key):
    b = nnx.merge(graphdef, state)
    return b(x, temb), b(x, temb, key=key), b(x, temb, train=True, key=key)

  ev, ev_key, tr = run(state, _dropout_key(3))
  tr2 = run(state, _dropout_key(4))[2]
  assert ev.shape == (2, 4, 4, 32) and ev.dtype == jnp.float32
  np.testing.assert_array_equal(ev, ev_key)
  assert float(jnp.abs(tr - ev).max()) > 1e-3 and float(jnp.abs(tr - tr2).max()) > 1e-3
  with pytest.raises(ValueError, match="key"):
    nnx.merge(graphdef, state)(x, temb, train=True)


def test_ncsnpp_builder_reads_config():
  from configs.ve.cifar10_ncsnpp_continuous import get_config
  config = get_config()
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
  config.data.image_size, config.model.attn_resolutions = 8, (4,)
  net = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))
  assert isinstance(net, Precond) and isinstance(net.backbone, NCSNpp)
  assert net.scale_by_sigma and net.continuous and net.backbone.embedding_type == "fourier"
  assert net.backbone.progressive_input == "residual" and net.center_input
  graphdef, abstract = nnx.split(net)
  y = jax.eval_shape(lambda s: nnx.merge(graphdef, s)(jnp.zeros((2, 8, 8, 3)), jnp.ones((2,))),
                     abstract)
  assert y.shape == (2, 8, 8, 3) and y.dtype == jnp.float32
  config.training.continuous = False  # Fourier features need noise levels, not indices
  with pytest.raises(ValueError, match="Fourier"):
    models.get_model(config, nnx.Rngs(0))

