"""NCSNv2 (models/ncsnv2.py), its normalizations and RefineNet blocks, and its configs.

Full-size networks are only built abstractly (nnx.eval_shape); forward passes use nf = 16
on 16x16 images, one compile per network variant (float32, bfloat16, centered/continuous).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import models.ncsnv2  # noqa: F401  (registers ncsnv2_64/128/256 and ncsn)
import sde_lib
from configs.ve.ncsnv2 import bedroom, celeba, cifar10
from models import normalization, refinenet_layers

_NEAR_ONE = ("alpha", "gamma", "scale", "embed")


def _materialize(make, seed: int = 0):
  """`make()` built abstractly, its parameters then drawn in numpy from the distributions
  of the real initializers. Eager initialization on the CPU compiles a random-number
  kernel for every distinct parameter shape (about a second each), which would dominate
  this file's run time; the initializers themselves are tested in test_initializers."""
  module = nnx.eval_shape(make)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
    shape = leaf.shape
    if name == "kernel":
      bound = 1 / math.sqrt(math.prod(shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    elif name in _NEAR_ONE:
      value = 1 + 0.02 * rng.normal(size=shape)
    elif name == "beta":
      value = np.zeros(shape)
    else:  # conv biases
      value = rng.uniform(-0.1, 0.1, shape)
    assert leaf.dtype == jnp.float32, (path, leaf.dtype)  # parameters always float32
    return jnp.asarray(value, jnp.float32)

  state = jax.tree_util.tree_map_with_path(draw, nnx.state(module, nnx.Param))
  nnx.update(module, state)
  return module


# ----------------------------------------------------------------------------------------
# Normalizations against numpy
# ----------------------------------------------------------------------------------------


def _np_instance_norm_plus(x, gamma, alpha, beta):
  """InstanceNorm++ (Song & Ermon 2019, app. A) in float64; gamma/alpha/beta: (B, C)."""
  x = np.asarray(x, np.float64)
  mu = x.mean(axis=(1, 2))                                  # (B, C)
  var = ((x - mu[:, None, None]) ** 2).mean(axis=(1, 2))    # biased, as score_sde
  m = mu.mean(axis=1, keepdims=True)
  v = ((mu - m) ** 2).mean(axis=1, keepdims=True)
  xhat = (x - mu[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
  mu_hat = (mu - m) / np.sqrt(v + 1e-5)
  h = xhat + alpha[:, None, None] * mu_hat[:, None, None]
  return gamma[:, None, None] * h + beta[:, None, None]


def _test_input(shape=(3, 5, 4, 6), seed=0):
  rng = np.random.default_rng(seed)
  # Per-channel offsets and scales, so the channel-means term alpha * mu_hat matters.
  offsets = rng.normal(0, 3, size=(shape[0], 1, 1, shape[-1]))
  scales = rng.uniform(0.5, 4, size=(shape[0], 1, 1, shape[-1]))
  return (rng.normal(size=shape) * scales + offsets).astype(np.float32)


def test_conditional_instance_norm_plus_matches_numpy():
  b, c, num_classes = 3, 6, 4
  norm = _materialize(lambda: normalization.ConditionalInstanceNorm2dPlus(
      c, num_classes, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(1)
  table = rng.normal(size=(num_classes, 3 * c)).astype(np.float32)
  norm.embed[...] = jnp.asarray(table)
  x = _test_input((b, 5, 4, c))
  y = np.array([2, 0, 2])
  got = np.asarray(norm(jnp.asarray(x), jnp.asarray(y)))
  want = _np_instance_norm_plus(x, table[y, :c], table[y, c:2 * c], table[y, 2 * c:])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Without the alpha term the result is far off: the test sees the channel-means term.
  plain = _np_instance_norm_plus(x, table[y, :c], 0 * table[y, c:2 * c], table[y, 2 * c:])
  assert np.max(np.abs(plain - want)) > 0.1


def test_initializers():
  # PyTorch's default conv init, as NCSNv2 was trained with: U(+-1/sqrt(fan_in)) for
  # kernel and bias.
  conv = refinenet_layers.ncsn_conv(16, 32, 3, rngs=nnx.Rngs(0))
  bound = 1 / math.sqrt(3 * 3 * 16)
  k = np.asarray(conv.kernel[...])
  b = np.asarray(conv.bias[...])
  assert k.shape == (3, 3, 16, 32) and k.dtype == np.float32
  assert np.abs(k).max() <= bound and np.abs(b).max() <= bound
  # 4608 draws: the std of U(-a, a) is a / sqrt(3) to within about 1%.
  assert abs(k.std() / (bound / math.sqrt(3)) - 1) < 0.05
  assert b.std() > bound / 4  # not zero-initialized
  bf16 = refinenet_layers.ncsn_conv(16, 32, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert bf16.kernel[...].dtype == jnp.float32


def test_conditional_instance_norm_plus_init_and_no_bias():
  c, k = 8, 5
  norm = normalization.ConditionalInstanceNorm2dPlus(c, k, rngs=nnx.Rngs(0))
  table = np.asarray(norm.embed[...])
  assert table.shape == (k, 3 * c) and table.dtype == np.float32
  # gamma, alpha ~ N(1, 0.02^2), beta = 0
  assert abs(table[:, :2 * c].mean() - 1) < 0.02 and 0.01 < table[:, :2 * c].std() < 0.03
  np.testing.assert_array_equal(table[:, 2 * c:], 0)

  nb = normalization.ConditionalInstanceNorm2dPlus(c, k, bias=False, rngs=nnx.Rngs(0))
  assert nb.embed[...].shape == (k, 2 * c)
  x = _test_input((2, 4, 4, c), seed=3)
  y = np.array([4, 1])
  t = np.asarray(nb.embed[...])
  want = _np_instance_norm_plus(x, t[y, :c], t[y, c:], np.zeros((2, c)))
  np.testing.assert_allclose(np.asarray(nb(jnp.asarray(x), jnp.asarray(y))), want,
                             rtol=1e-4, atol=1e-4)


def test_instance_norm_plus_matches_numpy():
  c = 6
  norm = _materialize(lambda: normalization.InstanceNorm2dPlus(c, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(2)
  gamma, alpha, beta = (rng.normal(size=c).astype(np.float32) for _ in range(3))
  norm.gamma[...], norm.alpha[...], norm.beta[...] = map(jnp.asarray, (gamma, alpha, beta))
  x = _test_input((2, 6, 3, c), seed=4)
  tile = lambda p: np.tile(p, (2, 1))
  want = _np_instance_norm_plus(x, tile(gamma), tile(alpha), tile(beta))
  np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-4, atol=1e-4)


def test_instance_and_variance_norm_match_numpy():
  x = _test_input((2, 5, 5, 4), seed=5)
  mu = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
  var = x.astype(np.float64).var(axis=(1, 2), keepdims=True)
  inorm = normalization.InstanceNorm2d(4, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(inorm(jnp.asarray(x))),
                             (x - mu) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  vnorm = _materialize(lambda: normalization.VarianceNorm2d(4, rngs=nnx.Rngs(0)))
  scale = np.asarray(vnorm.scale[...])
  np.testing.assert_allclose(np.asarray(vnorm(jnp.asarray(x))),
                             x / np.sqrt(var + 1e-5) * scale, rtol=1e-4, atol=1e-4)


def test_norm_bfloat16_computes_statistics_in_float32():
  # A large common offset: bfloat16 statistics (8-bit mantissa) would lose the signal.
  x = _test_input((2, 8, 8, 4), seed=6) + 300.0
  f32 = _materialize(lambda: normalization.InstanceNorm2dPlus(4, rngs=nnx.Rngs(0)))
  bf16 = _materialize(lambda: normalization.InstanceNorm2dPlus(
      4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  a = f32(jnp.asarray(x))
  b = bf16(jnp.asarray(x))
  assert b.dtype == jnp.bfloat16 and bf16.gamma[...].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a), atol=0.05)


def test_get_normalization_errors():
  with pytest.raises(ValueError, match="unknown normalization"):
    normalization.get_normalization("BatchNorm")
  with pytest.raises(ValueError, match="num_classes"):
    normalization.get_normalization("InstanceNorm++", conditional=True)


# ----------------------------------------------------------------------------------------
# RefineNet blocks
# ----------------------------------------------------------------------------------------


# One compile per block instead of one per primitive, as eager calls would cost.
_call = nnx.jit(lambda module, x: module(x))


def _n_params(module) -> int:
  leaves = jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))
  return sum(int(np.prod(p.shape)) for p in leaves)


def test_residual_block_shapes_and_shortcuts():
  norm = normalization.get_normalization("InstanceNorm++")
  x = jnp.ones((2, 8, 8, 4))
  mk = lambda i, o, **kw: _materialize(lambda: refinenet_layers.ResidualBlock(
      i, o, normalization=norm, rngs=nnx.Rngs(0), **kw))
  down = mk(4, 6, resample="down")
  assert jax.eval_shape(down, x).shape == (2, 4, 4, 6)
  # down: norm1(4), conv1 3x3 4->4, norm2(4), ConvMeanPool 3x3 4->6,
  # shortcut ConvMeanPool 1x1 4->6
  assert _n_params(down) == 12 + (144 + 4) + 12 + (216 + 6) + (24 + 6)
  dil = mk(4, 6, resample="down", dilation=2)
  assert jax.eval_shape(dil, x).shape == (2, 8, 8, 6)  # dilation replaces down-sampling
  assert dil.shortcut.kernel_dilation == (2, 2)
  same = mk(4, 4)
  assert same.shortcut is None
  # Identity shortcut: with conv2 zeroed the block returns x exactly.
  same.conv2.kernel[...] = jnp.zeros_like(same.conv2.kernel[...])
  same.conv2.bias[...] = jnp.zeros_like(same.conv2.bias[...])
  xr = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  np.testing.assert_allclose(np.asarray(_call(same, xr)), np.asarray(xr), atol=1e-6)
  with pytest.raises(ValueError, match="resample"):
    mk(4, 4, resample="up")


def test_conv_mean_pool_is_conv_then_2x2_average():
  cmp = _materialize(lambda: refinenet_layers.ConvMeanPool(2, 3, 1, rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(1), (1, 4, 6, 2))
  h = np.asarray(cmp.conv(x))
  want = h.reshape(1, 2, 2, 3, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(_call(cmp, x)), want, rtol=1e-5, atol=1e-6)


def test_crp_block_max_pool_chain():
  crp = _materialize(lambda: refinenet_layers.CRPBlock(2, 2, act=lambda v: v,
                                                       rngs=nnx.Rngs(0)))
  # Identity 3x3 convs (centre tap): the chain becomes x + pool(x) + pool(pool(x)).
  eye = jnp.zeros((3, 3, 2, 2)).at[1, 1].set(jnp.eye(2))
  for conv in crp.convs:
    conv.kernel[...] = eye
  x = jax.random.normal(jax.random.key(2), (1, 7, 7, 2))
  xn = np.asarray(x)

  def maxpool5(a):
    p = np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-np.inf)
    out = np.empty_like(a)
    for i in range(a.shape[1]):
      for j in range(a.shape[2]):
        out[:, i, j] = p[:, i:i + 5, j:j + 5].max(axis=(1, 2))
    return out

  p1 = maxpool5(xn)
  np.testing.assert_allclose(np.asarray(_call(crp, x)), xn + p1 + maxpool5(p1), atol=1e-5)


def test_refine_block_shapes():
  rb = nnx.eval_shape(lambda: refinenet_layers.RefineBlock([4, 8], 6, rngs=nnx.Rngs(0)))
  xs = [jnp.ones((2, 8, 8, 4)), jnp.ones((2, 4, 4, 8))]
  out = jax.eval_shape(lambda m: m(xs, (8, 8)), rb)
  assert out.shape == (2, 8, 8, 6)
  with pytest.raises(ValueError, match="start"):
    refinenet_layers.RefineBlock([4], 6, start=True, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------


def _small_config(dtype="float32"):
  config = cifar10.get_config()
  config.model.nf = 16
  config.model.dtype = dtype
  return config


@pytest.fixture(scope="module")
def small_nets():
  """nf = 16 NCSNv2 (ncsnv2_64 layout) in float32 and bfloat16, same parameters, jitted."""
  traces = []

  def forward(net, x, labels):
    traces.append(x.shape)  # runs once per trace, i.e. per compile
    return net(x, labels)

  apply = nnx.jit(forward)
  apply.traces = traces
  # The same seed gives both the same parameters.
  f32 = _materialize(lambda: models.get_model(_small_config("float32"), nnx.Rngs(0)))
  bf16 = _materialize(lambda: models.get_model(_small_config("bfloat16"), nnx.Rngs(0)))
  return f32, bf16, apply


def test_forward_float32_shape_scaling_and_determinism(small_nets):
  net, _, apply = small_nets
  # Every call in this file uses batch 2, 16x16 and float32 labels (what get_score_fn
  # passes), so the f32 network compiles once.
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  x_same = jnp.broadcast_to(x[:1], x.shape)
  n_traces = len(apply.traces)
  out = apply(net, x_same, jnp.array([0.0, 231.0]))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out[0])) > 0
  # Deterministic for train=False.
  np.testing.assert_array_equal(np.asarray(apply(net, x_same, jnp.array([0.0, 231.0]))),
                                np.asarray(out))
  # NCSNv2 does not see the noise level: it divides one output by sigma_label, with sigmas
  # descending from sigma_max = 50 (index 0) to sigma_min = 0.01 (index N - 1),
  # geometric. Non-integer labels are truncated to an index, as score_sde's NCSN++ does
  # (sigmas[time_cond.astype(jnp.int32)]; its NCSNv2 takes integer labels only).
  out2 = apply(net, x_same, jnp.array([117.4, 4.6]))
  sig = np.exp(np.linspace(np.log(50.0), np.log(0.01), 232))
  o = np.asarray(out, np.float64)
  o2 = np.asarray(out2, np.float64)
  unscaled = o[0] * sig[0]
  scale = np.abs(unscaled).max()
  for got in (o[1] * sig[231], o2[0] * sig[117], o2[1] * sig[4]):
    np.testing.assert_allclose(got, unscaled, rtol=1e-4, atol=1e-5 * scale)
  np.testing.assert_allclose(o[0] * 50.0, o[1] * 0.01, rtol=1e-4, atol=1e-5 * scale)
  assert len(apply.traces) == n_traces + 1  # three calls, one compile
  assert _n_params(net) == _hand_count_ncsnv2_64(16)


def test_forward_bfloat16_close_to_float32(small_nets):
  f32, bf16, apply = small_nets  # _materialize checked that bf16's parameters are float32
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  labels = jnp.array([5.0, 50.0])
  a = np.asarray(apply(f32, x, labels))
  b = apply(bf16, x, labels)
  assert b.dtype == jnp.float32 and b.shape == x.shape
  b = np.asarray(b)
  # Same parameters (same seed), bfloat16 convolutions: a few percent of the output scale.
  rel = np.linalg.norm(b - a) / np.linalg.norm(a)
  assert rel < 0.05, rel


def test_centered_input_and_continuous_labels(small_nets):
  ref, _, apply = small_nets
  config = _small_config()
  config.data.centered = True
  config.training.continuous = True
  net = _materialize(lambda: models.get_model(config, nnx.Rngs(0)))  # ref's parameters
  x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3))
  # centered: the net takes its input as is, where the uncentered one maps x -> 2x - 1;
  # continuous: the labels are sigma itself, where the discrete net looks up an index.
  got = apply(net, 2 * x - 1, jnp.array([50.0, 0.01]))
  want = apply(ref, x, jnp.array([0.0, 231.0]))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_ncsn_is_conditional():
  config = _small_config()
  config.model.name = "ncsn"
  net = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))
  # One class per noise level, in every normalization (NCSN's conditional InstanceNorm++).
  assert net.backbone.out_norm.embed.shape == (232, 3 * 16)
  assert net.backbone.refine[1].msf.norms[0].embed.shape == (232, 3 * 32)
  out = jax.eval_shape(lambda n: n(jnp.ones((2, 16, 16, 3)), jnp.array([0.0, 3.0]),
                                   train=True, key=jax.random.key(0)), net)
  assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32


def _hand_count_ncsnv2_64(nf: int, channels: int = 3) -> int:
  """Parameters of score_sde's ncsnv2_64, counted per layer from its source
  (yang-song/score_sde models/ncsnv2.py, layers.py, normalization.py)."""
  conv = lambda k, i, o, bias=True: k * k * i * o + (o if bias else 0)
  norm = lambda c: 3 * c  # InstanceNorm++: alpha, gamma, beta

  def res(i, o, down=False, dil=1):
    if down:
      return (norm(i) + conv(3, i, i) + norm(i) + conv(3, i, o)
              + conv(1 if dil == 1 else 3, i, o))
    short = 0 if i == o else conv(1 if dil == 1 else 3, i, o)
    return norm(i) + conv(3, i, o) + norm(o) + conv(3, o, o) + short

  rcu = lambda c, n_blocks: n_blocks * 2 * conv(3, c, c, bias=False)
  crp = lambda c: 2 * conv(3, c, c, bias=False)
  msf = lambda ins, f: sum(conv(3, i, f) for i in ins)

  def refine(ins, f, start=False, end=False):
    return (sum(rcu(i, 2) for i in ins) + (0 if start else msf(ins, f)) + crp(f)
            + rcu(f, 3 if end else 1))

  n = conv(3, channels, nf)
  n += res(nf, nf) + res(nf, nf)
  n += res(nf, 2 * nf, down=True) + res(2 * nf, 2 * nf)
  n += res(2 * nf, 2 * nf, down=True, dil=2) + res(2 * nf, 2 * nf, dil=2)
  n += res(2 * nf, 2 * nf, down=True, dil=4) + res(2 * nf, 2 * nf, dil=4)
  n += refine([2 * nf], 2 * nf, start=True)
  n += refine([2 * nf, 2 * nf], 2 * nf)
  n += refine([2 * nf, 2 * nf], 2 * nf)
  n += refine([nf, 2 * nf], nf, end=True)
  return n + norm(nf) + conv(3, nf, channels)


def test_param_counts_match_score_sde():
  """Full-size counts, built abstractly. The expected numbers were obtained by
  initializing score_sde's own flax.linen NCSNv2 (models/ncsnv2.py at yang-song/score_sde
  HEAD) under jax.eval_shape with these configs: 33,970,563 (ncsnv2_64, nf = 128),
  83,445,379 (ncsnv2_128), 94,132,611 (ncsnv2_256). The per-layer hand count above
  agrees for ncsnv2_64. (The PyTorch NCSNv2 differs: its third RefineBlock has nf, not
  2 nf, features.)"""
  assert _hand_count_ncsnv2_64(128) == 33_970_563
  expected = {"ncsnv2_64": 33_970_563, "ncsnv2_128": 83_445_379,
              "ncsnv2_256": 94_132_611}
  x = jnp.ones((1, 32, 32, 3))  # 32 px: divisible by 8 for ncsnv2_256's three halvings
  for name, count in expected.items():
    config = cifar10.get_config() if name == "ncsnv2_64" else bedroom.get_config()
    config.model.name = name
    net = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))  # noqa: B023
    assert _n_params(net) == count, name
    out = jax.eval_shape(lambda n: n(x, jnp.zeros((1,))), net)
    assert out.shape == x.shape and out.dtype == jnp.float32, name


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module,name,size,sigma_max,n,snr,steps", [
    (cifar10, "ncsnv2_64", 32, 50.0, 232, 0.176, 5),
    (celeba, "ncsnv2_64", 64, 90.0, 500, 0.128, 5),
    (bedroom, "ncsnv2_128", 128, 190.0, 1086, 0.095, 3),
])
def test_configs(module, name, size, sigma_max, n, snr, steps):
  c = module.get_config()
  assert "python main.py --config configs/ve/ncsnv2/" in module.__doc__
  assert c.training.sde == "vesde" and c.training.continuous is False
  assert c.model.name == name and c.data.image_size == size
  assert c.model.sigma_min == 0.01 and c.model.sigma_max == sigma_max
  assert c.model.num_scales == n and c.model.scale_by_sigma
  assert (c.sampling.predictor, c.sampling.corrector) == ("none", "ald")
  assert c.sampling.snr == snr and c.sampling.n_steps_each == steps
  assert c.optim.lr == 1e-4 and c.optim.grad_clip < 0 and c.optim.warmup == 0
  for section, fields in {
      "training": "batch_size n_iters snapshot_freq log_freq eval_freq "
                  "snapshot_freq_for_preemption snapshot_sampling likelihood_weighting "
                  "continuous reduce_mean n_jitted_steps sde",
      "sampling": "n_steps_each noise_removal probability_flow snr method predictor "
                  "corrector ode_solver rtol atol",
      "eval": "begin_ckpt end_ckpt batch_size enable_sampling num_samples enable_loss "
              "enable_bpd bpd_dataset",
      "data": "dataset image_size random_flip centered uniform_dequantization "
              "num_channels data_dir",
      "model": "name sigma_min sigma_max num_scales beta_min beta_max dropout ema_rate "
               "normalization nonlinearity nf dtype",
      "optim": "weight_decay optimizer lr beta1 eps warmup grad_clip"}.items():
    for f in fields.split():
      assert f in c[section], f"{section}.{f}"
  sde = sde_lib.get_sde(c)
  assert isinstance(sde, sde_lib.VESDE) and sde.N == n
  assert math.isclose(float(sde.sigma_max), sigma_max)
