"""Noise-conditional classifiers (models/classifier.py), their training
(training/classifier.py) and the labeled toy mixtures (data/toy_labels.py).

The reference for the trained classifier is closed form: the toy 'two_gaussians' mixture
(modes m_0 = (-2, 0), m_1 = (+2, 0), std s = 0.3, equal weights) has
x_t | y ~ N(alpha m_y, (alpha^2 s^2 + sigma^2) I) under every process, so p_t(y | x_t) is
a softmax (`toy_labels.log_posterior`) and the unconditional score is the posterior-
weighted sum of the component scores.
"""
from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import models
import sde_lib
from configs.classifier import toy_classifier, wideresnet_classifier, with_classifier
from configs.default_toy import get_default_configs
from data import toy, toy_labels
from models.classifier import classifier_labels, get_log_prob_fn
from common.errors import MissingFileError, UserError
from common.mesh import batch_sharding, make_mesh
from solvers import get_ode_sampler
from modes.train_classifier import run as train_classifier
from training import classifier as tc

NAME = "two_gaussians"


def _toy_config(n_iters: int) -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vpsde"
  config.data.dataset = NAME
  section = toy_classifier(num_classes=2, nf=64, num_layers=2, n_iters=n_iters)
  section.training.batch_size = 256
  section.training.log_freq = 200
  section.training.snapshot_freq = 0
  section.training.snapshot_freq_for_preemption = 0
  return with_classifier(config, section)


@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory):
  """A VP classifier trained for 200 + 200 steps (batch 256, Adam lr 2e-3, EMA 0.99): the
  second call resumes from the first's checkpoint."""
  workdir = str(tmp_path_factory.mktemp("toy_classifier"))
  config = _toy_config(n_iters=200)
  train_classifier(config, workdir)
  config.classifier.training.n_iters = 400
  state = train_classifier(config, workdir)
  return config, workdir, state


def _mixture_score(sde, x, t):
  """Exact unconditional score of two_gaussians at time t: sum_y p_t(y|x) score_y."""
  means, s = toy_labels.gaussian_mixture(NAME)
  alpha, sigma = sde.alpha_sigma(t)
  var = (alpha**2 * s**2 + sigma**2)[:, None, None]
  post = jnp.exp(toy_labels.log_posterior(NAME, x, alpha, sigma))
  comp = -(x[:, None, :] - alpha[:, None, None] * jnp.asarray(means, x.dtype)[None]) / var
  return jnp.sum(post[..., None] * comp, axis=1)


def test_labeled_toy_samples_equal_the_unlabeled_ones_and_label_the_component():
  """Same key -> the same points as data.toy.sample (exact equality), for every labeled
  mixture; two_gaussians' label is the sign of x_1 for all but the points beyond 2/0.3 =
  6.7 standard deviations (none of 4096); every eight_gaussians point lies within 5 stds
  (1.0) of its label's mode (P(r > 5 std) = exp(-12.5): expected 0.015 of 4096 beyond;
  the nearest mode is not the label for ~0.5 of them, adjacent modes being 3.8 stds from
  the midpoint); checkerboard's points lie in the square their label names; circles' and two_moons'
  labels are checked below."""
  key = jax.random.PRNGKey(3)
  n = 4096
  for name in toy_labels.LABELED_DATASETS:
    x, y = toy_labels.sample_with_labels(key, name, n)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(toy.sample(key, name, n)))
    assert y.dtype == jnp.int32 and y.shape == (n,)
    assert set(np.unique(np.asarray(y))) == set(range(toy_labels.num_classes(name)))
  x, y = toy_labels.sample_with_labels(key, NAME, n)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x[:, 0] > 0).astype(np.int32))
  x, y = toy_labels.sample_with_labels(key, "eight_gaussians", n)
  means, _ = toy_labels.gaussian_mixture("eight_gaussians")
  dist = np.linalg.norm(np.asarray(x) - means[np.asarray(y)], axis=1)
  assert dist.max() < 5 * 0.2, dist.max()
  x, y = toy_labels.sample_with_labels(key, "checkerboard", n)
  col, row = np.floor(np.asarray(x[:, 0])) + 2, np.floor(np.asarray(x[:, 1])) + 2
  np.testing.assert_array_equal(np.asarray(y), (2 * col + row // 2).astype(np.int32))
  # circles: label 0 is the inner circle (radius 1), 1 the outer (radius 2); the radial
  # noise has std 0.05, so 1.5 separates them by 10 stds.
  x, y = toy_labels.sample_with_labels(key, "circles", n)
  outer = np.linalg.norm(np.asarray(x), axis=1) > 1.5
  np.testing.assert_array_equal(np.asarray(y), outer.astype(np.int32))
  # two_moons: label 1 is the upper moon, whose points lie above the lower one's (the
  # moons' centre lines at x_1 = 0 are 1.5 * (1 - 0.25) and 1.5 * (-0.25 - 0.5) apart
  # in x_2 from their means); checked through the per-label mean of x_2.
  x, y = toy_labels.sample_with_labels(key, "two_moons", n)
  x2, y = np.asarray(x[:, 1]), np.asarray(y)
  assert x2[y == 1].mean() > x2[y == 0].mean() + 0.5
  with pytest.raises(ValueError, match="no class labels"):
    toy_labels.sample_with_labels(key, "swiss_roll", 4)


def test_exact_posterior_matches_bayes_rule_with_scipy():
  """log_posterior = normalised N(x; alpha m_y, v I) (scipy, float64), rtol 1e-5."""
  from scipy.stats import multivariate_normal
  means, s = toy_labels.gaussian_mixture("eight_gaussians")
  x = np.random.default_rng(0).normal(size=(16, 2)) * 2
  alpha, sigma = np.full(16, 0.7), np.full(16, 0.5)
  got = np.exp(np.asarray(toy_labels.log_posterior("eight_gaussians", jnp.asarray(x),
                                                  jnp.asarray(alpha), jnp.asarray(sigma))))
  v = 0.7**2 * s**2 + 0.5**2
  dens = np.stack([multivariate_normal(0.7 * m, v * np.eye(2)).pdf(x) for m in means], 1)
  np.testing.assert_allclose(got, dens / dens.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_trained_mlp_classifier_approaches_the_exact_posterior(trained_toy):
  """After 400 steps, |p_model(y=1 | x_t) - p_exact(y=1 | x_t)| averaged over n = 2000
  x_t drawn from p_t is below 0.05 at t = 0.05, 0.2, 0.4, 0.6 (VP; alpha(t) = 0.99, 0.81,
  0.43, 0.16), and the expected excess cross-entropy E[KL(p_exact || p_model)] is below
  0.03 nats. Measured: mean abs error 0.004-0.016. An untrained classifier (p = 1/2) is
  ~0.4 off. Also: training resumed from the 200-step checkpoint (two metric records),
  and a rerun with another learning rate in the same directory is refused."""
  config, workdir, state = trained_toy
  assert int(state.step) == 400
  with open(os.path.join(tc.classifier_workdir(workdir), tc.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [200, 400]
  other = copy.deepcopy(config)
  other.classifier.optim.lr = 1e-3
  with pytest.raises(UserError, match="differing: classifier.optim.lr"):
    train_classifier(other, workdir)
  sde = sde_lib.get_sde(config)
  n = 2000
  log_prob = tc.restore_log_prob_fn(config, workdir, jnp.ones((n,), jnp.int32))
  x0 = toy.sample(jax.random.PRNGKey(11), NAME, n)
  z = jax.random.normal(jax.random.PRNGKey(12), x0.shape)
  evaluate = jax.jit(lambda f, x, t: f(x, t))
  for t in (0.05, 0.2, 0.4, 0.6):
    tt = jnp.full((n,), t)
    alpha, sigma = sde.alpha_sigma(tt)
    xt = alpha[:, None] * x0 + sigma[:, None] * z
    exact = jnp.exp(toy_labels.log_posterior(NAME, xt, alpha, sigma))
    p1 = jnp.exp(evaluate(log_prob, xt, tt))
    err = float(jnp.mean(jnp.abs(p1 - exact[:, 1])))
    p = jnp.clip(jnp.stack([1 - p1, p1], 1), 1e-12, 1.0)
    kl = float(jnp.mean(jnp.sum(exact * (jnp.log(jnp.clip(exact, 1e-12)) - jnp.log(p)),
                                1)))
    assert err < 0.05, (t, err)
    assert kl < 0.03, (t, kl)


def test_guidance_with_the_trained_classifier_moves_ode_samples_to_the_class(trained_toy):
  """VP probability-flow ODE (tsit5, rtol = atol = 1e-3), exact unconditional mixture
  score, n = 512 from the same prior draws: unguided, the share of samples in class 1's
  half-plane (x_1 > 0) is 0.5 +- 0.1 (4.5 standard errors); guided by the trained
  classifier towards class 1 with scale 1 it is above 0.95 (the exact conditional gives
  1 - Phi(-2/0.3) ~ 1); towards class 0, below 0.05."""
  config, workdir, _ = trained_toy
  sde = sde_lib.get_sde(config)
  n = 512
  classifier, _ = tc.restore_classifier(config, workdir)
  uncond = lambda x, t: sde.native_from_score(_mixture_score(sde, x, t), x, t)
  sampler = get_ode_sampler(sde, (n, 2), solver="tsit5", rtol=1e-3, atol=1e-3)
  key = jax.random.PRNGKey(7)
  x, _ = sampler(key, uncond)
  share = float(jnp.mean(x[:, 0] > 0))
  assert abs(share - 0.5) < 0.1, share
  for label in (1, 0):
    guided = models.classifier_guidance(
        uncond, get_log_prob_fn(sde, classifier, jnp.full((n,), label)), 1.0, sde)
    x, _ = sampler(key, guided)
    share = float(jnp.mean(x[:, 0] > 0))
    assert (share > 0.95) if label == 1 else (share < 0.05), (label, share)


def _tiny_wrn_config(image_size: int = 8, channels: int = 1, classes: int = 10):
  config = ml_collections.ConfigDict()
  config.model = wideresnet_classifier(classes, blocks_per_group=1,
                                       channel_multiplier=1).model
  config.model.embedding_size = 8
  config.training = ml_collections.ConfigDict(dict(continuous=True))
  config.data = ml_collections.ConfigDict(dict(centered=False, num_channels=channels,
                                               image_size=image_size))
  return config


@pytest.fixture(scope="module")
def tiny_wrn():
  """A WRN with 1 block per group, width 1, 10 classes, on 8x8x1 images (digits' shape);
  built once (its eager initialisation is the slow part on a CPU)."""
  return models.get_model(_tiny_wrn_config(), nnx.Rngs(0))


def test_wideresnet_forward_shapes_standardization_and_parameter_count(tiny_wrn):
  """Tiny WRN: logits (B, 10), finite, depending on the noise level; per-image
  standardization makes them invariant to x -> a x + b (a > 0), to float32 rounding
  (atol 1e-4). score_sde's WRN-28-10 (CIFAR-10 classifier, 32x32x3) has 38,913,242
  variables, counted from its linen module (the 128 Fourier weights included);
  jax.eval_shape counts ours without computing it. (Outside the suite, the tiny and a
  WRN-16-2 with score_sde's weights copied in gave its linen module's logits exactly.)"""
  net = tiny_wrn
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
  sigma = jnp.array([0.01, 0.1, 1.0, 10.0])
  forward = jax.jit(lambda n, x, s: n(x, s))  # one compile for the three calls
  logits = forward(net, x, sigma)
  assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
  other = forward(net, x, sigma[::-1])
  assert float(jnp.max(jnp.abs(other - logits))) > 1e-3
  moved = forward(net, 3.0 * x + 0.5, sigma)
  np.testing.assert_allclose(moved, logits, atol=1e-4)

  full = ml_collections.ConfigDict(dict(
      model=wideresnet_classifier(10).model, training=dict(continuous=True),
      data=dict(centered=False, num_channels=3, image_size=32)))
  shapes = jax.eval_shape(lambda: nnx.state(models.get_model(full, nnx.Rngs(0))))
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes)) == 38_913_242


def test_classifier_guidance_gradient_of_the_wideresnet_is_finite_and_shaped(tiny_wrn):
  """The log-probability of the tiny WRN through the process's labels (score_sde's
  sde.marginal_prob std, rtol 1e-6): (B,) values <= 0, and its x-gradient (what guidance
  adds) has x's shape and is finite."""
  net = tiny_wrn
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  t = jnp.array([0.1, 0.5, 1.0])
  np.testing.assert_allclose(classifier_labels(sde, t), sde.marginal_prob(x, t)[1],
                             rtol=1e-6)
  log_prob = get_log_prob_fn(sde, net, jnp.array([0, 3, 9]))
  def value_and_grad(f, v):
    lp, vjp = jax.vjp(lambda u: f(u, t), v)
    return lp, vjp(jnp.ones_like(lp))[0]

  lp, g = jax.jit(value_and_grad)(log_prob, x)
  assert lp.shape == (3,) and bool(jnp.all(lp <= 0))
  assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))


def test_digits_batches_and_a_short_wideresnet_run(tmp_path):
  """Image path: each batch's images are digits' training images (pixel / 255, to 1e-6) with
  their own labels; 4 steps of train_classifier on the digits with a tiny WRN give a
  finite loss, a checkpoint at step 4 and a restorable classifier."""
  from configs.vp.digits_ddpmpp_small_classifier import get_config
  from data import digits
  config = get_config()
  config.classifier.model.channel_multiplier = 1
  config.classifier.model.embedding_size = 8
  config.classifier.training.n_iters = 4
  config.classifier.training.n_jitted_steps = 4
  config.classifier.training.batch_size = 8
  images, labels = digits.load_digits("train")
  mesh = make_mesh()
  data_fn = tc._make_data_fn(config, 8, batch_sharding(mesh),
                             {"images": jnp.asarray(images), "labels": jnp.asarray(labels)})
  batch = jax.jit(data_fn)(jax.random.PRNGKey(0))
  flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
  for xb, yb in zip(np.asarray(batch["x"]).reshape(8, -1), np.asarray(batch["y"])):
    # Within 1e-6: XLA may divide by 255 as a multiplication by 1/255 (one ulp apart).
    hits = np.flatnonzero(np.max(np.abs(flat - xb), axis=1) < 1e-6)
    assert hits.size and yb in labels[hits]
  state = train_classifier(config, str(tmp_path))
  assert int(state.step) == 4
  net, step = tc.restore_classifier(config, str(tmp_path))
  assert step == 4
  out = net(jnp.zeros((2, 8, 8, 1)), jnp.array([0.1, 1.0]))
  assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_classifier_inputs_raise_user_errors(tmp_path):
  config = _toy_config(n_iters=1)
  config.data.dataset = "swiss_roll"
  with pytest.raises(UserError, match="no class labels"):
    train_classifier(config, str(tmp_path))
  config = _toy_config(n_iters=1)
  config.classifier.model.num_classes = 3
  with pytest.raises(UserError, match="num_classes = 3"):
    train_classifier(config, str(tmp_path))
  config = get_default_configs()
  with pytest.raises(UserError, match="no 'classifier' section"):
    train_classifier(config, str(tmp_path))
  with pytest.raises(MissingFileError, match="no classifier checkpoint"):
    tc.restore_classifier(_toy_config(n_iters=1), str(tmp_path / "empty"))
  net = models.get_model(tc.classifier_config(_toy_config(1)), nnx.Rngs(0))
  sde = sde_lib.get_sde(_toy_config(1))
  with pytest.raises(UserError, match="class label 2 out of range"):
    get_log_prob_fn(sde, net, jnp.array([0, 2]))
  bad = tc.classifier_config(_toy_config(1))
  bad.model.num_classes = 1
  with pytest.raises(UserError, match="num_classes >= 2"):
    models.get_model(bad, nnx.Rngs(0))
