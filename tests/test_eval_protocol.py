"""score_sde's evaluation protocol (dequantization, repeats, the evaluation split).

* Bits/dim see every pixel dequantized exactly once, (k + u) / 256 with u ~ U[0, 1), whatever
  config.data.uniform_dequantization says, over 5 passes of the test split (1 of train),
  each pass with fresh noise and fresh probes (score_sde's run_lib.evaluate). The
  likelihood solve is replaced by a recorder (the data it would integrate and its key), so
  the test runs no network: it checks the data path of `--mode eval` itself. Before the fix
  the data were k / 255 (pixel 255 leaves its bin, offsets not uniform) or, with the flag,
  dequantized twice (about a third of the pixels leave their bin).
* Toy `--mode eval` reports the NLL in nats and nats/dim (no +8 offset), in data space.
* Rectified flow on CIFAR-10 follows gnobitab/RectifiedFlow: its config values, its EMA
  warm-up sequence exactly, training times in [0, 0.999], and sampling that ends exactly
  at t = 0.
"""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import data as data_lib
import sde_lib
import solvers.likelihood as likelihood_lib
from data.images import get_image_dataset
from sde_lib.gaussian import gaussian_logp, gaussian_model_fn
from training import checkpoint
from training.state import create_train_state, ema_decay


def _digits_config():
  from configs.tiny import shrink
  from configs.vp.digits_ddpmpp_small import get_config
  config = shrink(get_config())
  config.eval.enable_loss = False
  config.eval.enable_sampling = False
  config.eval.enable_bpd = True
  config.eval.batch_size = 16
  config.eval.max_batches = 2
  return config


def _untrained_workdir(config, workdir):
  """A checkpoint of the initial state (nothing is trained or compiled)."""
  manager = checkpoint.make_manager(config, str(workdir))
  try:
    checkpoint.save(manager, create_train_state(config))
  finally:
    manager.close()
  return str(workdir)


@pytest.fixture
def recorded(monkeypatch):
  """Replaces the probability-flow solve by a recorder: each call stores (key, x) and
  returns logp = -3 nats per example."""
  calls = []

  def fake_get_log_likelihood_fn(sde, **kwargs):
    def fn(key, model_fn, x):
      calls.append((np.asarray(jax.random.key_data(key) if jnp.issubdtype(
          key.dtype, jax.dtypes.prng_key) else key), np.asarray(x)))
      return jnp.full((x.shape[0],), -3.0), x, jnp.asarray(7, jnp.int32)
    return fn

  # Imported first: its own binding of the name must be the real function to restore.
  import evaluation.eval_protocol as eval_protocol
  monkeypatch.setattr(likelihood_lib, "get_log_likelihood_fn", fake_get_log_likelihood_fn)
  if hasattr(eval_protocol, "get_log_likelihood_fn"):
    monkeypatch.setattr(eval_protocol, "get_log_likelihood_fn", fake_get_log_likelihood_fn)
  return calls


@pytest.mark.parametrize("flag", [False, True])
def test_bpd_data_are_dequantized_exactly_once(tmp_path, recorded, flag):
  """Each pixel k of the first 2 x 16 test digits (2048 values per pass) reaches the
  likelihood inside its own bin, floor(256 x) = k (exact: (k + u) / 256 is exact in
  float32), and the offsets u = 256 x - k are U[0, 1): Kolmogorov-Smirnov p > 1e-3 per
  pass (fixed keys, so deterministic). Fails before the fix: k / 255 puts pixel 255 at
  256 / 256 and offsets k / 255, far from uniform; with data.uniform_dequantization the
  data were dequantized twice."""
  from modes.eval import evaluate
  config = _digits_config()
  config.data.uniform_dequantization = flag
  workdir = _untrained_workdir(config, tmp_path)
  evaluate(config, workdir)
  images = get_image_dataset(config, "test").images[:32]
  inverse = data_lib.get_data_inverse_scaler(config)
  assert len(recorded) == 10  # 5 passes of 2 batches
  for p in range(5):
    x = np.concatenate([np.asarray(inverse(recorded[2 * p + i][1])) for i in range(2)])
    k = images.astype(np.float64)
    assert x.shape == images.shape
    bins = np.floor(256.0 * x.astype(np.float64))
    assert np.mean(bins != k) == 0.0, f"{np.mean(bins != k):.3f} of pixels left their bin"
    u = 256.0 * x.astype(np.float64) - k
    assert scipy.stats.kstest(u.ravel(), "uniform").pvalue > 1e-3


def test_bpd_repeats_and_fresh_noise(tmp_path, recorded):
  """bpd_num_repeats None: 5 passes over the test split (records 0..9 for 2 batches per
  pass), every record with its own key (fresh probes) and, for the same images, new
  dequantization noise in every pass (no value repeats: P(a float32 uniform repeats) ~
  1e-7 per pixel); the train split: 1 pass. The summary is over all 5 x 32 examples."""
  from modes.eval import evaluate
  config = _digits_config()
  workdir = _untrained_workdir(config, tmp_path)
  summary = evaluate(config, workdir)
  assert summary["n"] == 5 * 32 and summary["num_batches"] == 10
  keys = {tuple(k.ravel()) for k, _ in recorded}
  assert len(keys) == 10
  first = [x for _, x in recorded[0::2]]  # batch 0 of each pass
  for a in range(5):
    for b in range(a + 1, 5):
      assert np.all(first[a] != first[b])
  (out,) = glob.glob(os.path.join(workdir, "eval", "bpd_step0*"))
  with open(os.path.join(out, "bpd_batches.jsonl")) as f:
    assert sorted(json.loads(line)["batch"] for line in f) == list(range(10))

  recorded.clear()
  train_dir = tmp_path / "train_split"
  config.eval.bpd_dataset = "train"
  summary = evaluate(config, _untrained_workdir(config, train_dir))
  assert len(recorded) == 2 and summary["n"] == 32


def test_bpd_offset_and_protocol_settings(tmp_path, recorded):
  """With logp = -3 nats per example (the recorder), bits/dim are 3 / (64 ln 2) + 8 for
  uncentered 8x8 digits (score_sde's offset); bpd_dequantize = False is honoured (the
  data stay k / 255) and bpd_num_repeats = 0 is a UserError."""
  from modes.eval import evaluate
  config = _digits_config()
  config.eval.bpd_num_repeats = 1
  config.eval.bpd_dequantize = False
  summary = evaluate(config, _untrained_workdir(config, tmp_path))
  assert summary["mean_bpd"] == pytest.approx(3.0 / (64 * np.log(2)) + 8.0, rel=1e-6)
  images = get_image_dataset(config, "test").images[:16]
  np.testing.assert_allclose(recorded[0][1], images / 255.0, rtol=0, atol=1e-7)
  config.eval.bpd_num_repeats = 0
  with pytest.raises(sde_lib.UserError, match="bpd_num_repeats"):
    evaluate(config, str(tmp_path))


def _toy_config():
  from configs.default_toy import get_config
  config = get_config()
  config.model.nf = 16
  config.model.num_layers = 2
  config.model.embedding_dim = 16
  config.eval.enable_loss = False
  config.eval.enable_sampling = False
  config.eval.num_eval_points = 40
  config.eval.batch_size = 20
  return config


@pytest.mark.parametrize("centered", [False, True])
def test_toy_eval_reports_nats_without_offset(tmp_path, recorded, centered):
  """Toy data: summary mean_nll = 3 nats exactly for logp = -3 in model space (minus
  D log 2 = 2 log 2 when centered: the density of x is 2^D that of 2x - 1), and
  mean_nll_per_dim = mean_nll / 2; no bits/dim (before the fix: 3 / (2 ln 2) + 8
  "bits/dim"). Toy data are never dequantized, and 1 pass is the default."""
  from modes.eval import evaluate
  config = _toy_config()
  config.data.centered = centered
  summary = evaluate(config, _untrained_workdir(config, tmp_path))
  expected = 3.0 - (2 * np.log(2.0) if centered else 0.0)
  assert "mean_bpd" not in summary
  assert summary["mean_nll"] == pytest.approx(expected, rel=1e-6)
  assert summary["mean_nll_per_dim"] == pytest.approx(expected / 2, rel=1e-6)
  assert summary["n"] == 40 and len(recorded) == 2
  config.eval.bpd_dequantize = True
  with pytest.raises(sde_lib.UserError, match="bpd_dequantize"):
    evaluate(config, str(tmp_path))


def test_toy_nll_equals_the_closed_form():
  """The toy NLL function itself (no recorder) on data N(0, 0.5^2 I) in 2-D under the
  VP SDE with its exact score: -log p_eps(x) in nats equals the closed form of the
  marginal at eps = 1e-5 to 1e-3 nats per point (exact trace, rtol = atol = 1e-5;
  16 points; centred data, so that p_T is the prior N(0, I) up to a variance error of
  alpha(T)^2 = 4.5e-5)."""
  from evaluation.eval_protocol import get_bpd_likelihood_fn
  config = _toy_config()
  sde = sde_lib.get_sde(config)
  fn, metric = get_bpd_likelihood_fn(config, sde)
  assert metric == "nll"
  x = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  nll, _, _ = fn(jax.random.PRNGKey(2), gaussian_model_fn(sde, 0.0, 0.5), x)
  exact = -gaussian_logp(sde, x, jnp.full((16,), 1e-5), 0.0, 0.5)
  np.testing.assert_allclose(np.asarray(nll), np.asarray(exact), atol=1e-3)


# ---------------------------------------------------------------- rectified flow (item 5)


def test_ema_warmup_decay_sequence():
  """RectifiedFlow's models/ema.py: decay_n = min(rate, (1 + n) / (10 + n)) at update
  n = 1, 2, ...; exact values 2/11, 3/12, ..., then the rate itself."""
  n = np.arange(1, 20001)  # (1 + n) / (10 + n) reaches 0.999 at n = 8990
  got = np.asarray(ema_decay(jnp.asarray(n), 0.999, True), np.float64)
  want = np.minimum(0.999, (1.0 + n) / (10.0 + n))
  np.testing.assert_allclose(got, want, rtol=1e-7)
  assert got[0] == pytest.approx(2 / 11, rel=1e-7) and got[-1] == pytest.approx(0.999, rel=1e-7)
  assert got[8000] < 0.9989 and got[8989] == pytest.approx(0.999, rel=1e-7)  # n = 8990
  assert float(ema_decay(jnp.asarray(5), 0.999, False)) == pytest.approx(0.999)


@pytest.mark.parametrize("warmup", [True, False])
def test_train_step_ema_follows_the_warmup(warmup):
  """Six updates of a tiny toy MLP: the state's EMA equals the float64 recursion
  ema_n = d_n ema_{n-1} + (1 - d_n) params_n over the recorded parameters, with d_n the
  warm-up decays (or the constant rate 0.999999 without it), to 1e-6 relative + 1e-7
  absolute. The two differ by far more (the warm-up forgets the initialisation)."""
  from training import losses, optim
  from training.step import make_train_step
  config = _toy_config()
  config.model.ema_rate = 0.999999
  state = create_train_state(config)
  sde = sde_lib.get_sde(config)
  step = jax.jit(make_train_step(
      losses.get_loss_fn(sde, config), optim.get_optimizer(config), 0.999999,
      ema_warmup=warmup,
      data_fn=lambda key: data_lib.toy.sample(key, "eight_gaussians", 32, 2)))
  flat = lambda tree: np.concatenate(  # noqa: E731
      [np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(tree)])
  ema = flat(state.ema_params)
  for n in range(1, 7):
    state, _ = step(state, None)
    d = min(0.999999, (1 + n) / (10 + n)) if warmup else 0.999999
    ema = d * ema + (1 - d) * flat(state.params)
  np.testing.assert_allclose(flat(state.ema_params), ema, rtol=1e-6, atol=1e-7)


def test_rf_cifar10_config_matches_rectifiedflow():
  """configs/rf/cifar10_rf_ddpmpp.py against gnobitab/RectifiedFlow's
  cifar10_rf_gaussian_ddpmpp.py (+ default_cifar10_configs.py, losses.py, sampling.py):
  values copied from those files."""
  from configs.rf.cifar10_rf_ddpmpp import get_config
  c = get_config()
  assert c.model.ema_rate == 0.999999 and c.model.ema_warmup
  assert c.model.dropout == 0.15 and c.data.centered
  assert c.model.embedding_type == "positional" and not c.model.scale_by_sigma
  assert (c.model.nf, tuple(c.model.ch_mult), c.model.num_res_blocks) == (128, (1, 2, 2, 2), 4)
  assert tuple(c.training.time_range) == (0.0, 0.999) and c.training.reduce_mean
  assert (c.optim.lr, c.optim.warmup, c.optim.grad_clip, c.training.batch_size) == (
      2e-4, 5000, 1.0, 128)
  assert c.sampling.ode_solver == "dopri5" and c.sampling.rtol == c.sampling.atol == 1e-5


def test_rf_training_times_cover_0_to_0999():
  """training.time_range = (0, 0.999): 20000 drawn times lie in [0, 0.999], reach within
  1e-3 of both ends, and are uniform there (KS p > 1e-3)."""
  from training.losses import get_continuous_loss_fn
  sde = sde_lib.RectifiedFlow(N=1000)
  seen = []

  def model_fn(x, t):
    seen.append(np.asarray(t))
    return jnp.zeros_like(x)

  loss = get_continuous_loss_fn(sde, time_range=(0.0, 0.999))
  loss(model_fn, jnp.zeros((20000, 2)), jax.random.PRNGKey(0))
  t = seen[0]
  assert t.min() >= 0.0 and t.max() <= 0.999
  assert t.min() < 1e-3 and t.max() > 0.998
  assert scipy.stats.kstest(t, "uniform", args=(0.0, 0.999)).pvalue > 1e-3
  with pytest.raises(sde_lib.UserError, match="time_range"):
    get_continuous_loss_fn(sde, time_range=(0.0, 1.5))


def test_rf_sampling_ends_exactly_at_t0():
  """The RF config's ODE sampler (dopri5 from 1 to eps = 1e-3, then the step to t = 0)
  on the constant velocity v = c, whose exact flow maps z to z - c: the sample equals
  z - c to 1e-5 (the score_sde reverse-diffusion ending would leave ~1e-3 c off)."""
  from configs.rf.cifar10_rf_ddpmpp import get_config
  from solvers.from_config import get_sampling_fn
  config = get_config()
  sde = sde_lib.get_sde(config)
  c = jnp.linspace(-1.0, 1.0, 6).reshape(1, 6)
  sampler = get_sampling_fn(config, sde, (4, 6))
  z = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
  x, nfe = sampler(jax.random.PRNGKey(4), lambda x, t: jnp.broadcast_to(c, x.shape), x_T=z)
  np.testing.assert_allclose(np.asarray(x), np.asarray(z - c), atol=1e-5)
  assert nfe > 1
