"""EDM's training pieces against their formulas, evaluated independently here: the loss
(training.losses.get_edm_loss_fn) against its closed-form expectation for Gaussian data and
the exact denoiser, the EMA by half-life in images and the learning-rate ramp-up in images
(NVlabs/edm training/training_loop.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from common.errors import UserError
from training import losses, optim, state as state_lib


def _expected_edm_loss(s, sigma_data, p_mean, p_std, n_nodes=80):
  """E over ln sigma ~ N(p_mean, p_std^2) of lambda(sigma) * posterior variance, per
  dimension, for data N(m, s^2 I) and the exact denoiser: c(sigma) = (sigma^2 + sd^2) /
  (sigma sd)^2 * s^2 sigma^2 / (s^2 + sigma^2); also E[c^2]. Gauss-Hermite quadrature."""
  u, w = np.polynomial.hermite_e.hermegauss(n_nodes)
  w = w / w.sum()
  sigma = np.exp(p_mean + p_std * u)
  c = (sigma**2 + sigma_data**2) / (sigma * sigma_data)**2 * s**2 * sigma**2 / (s**2 + sigma**2)
  return float(np.sum(w * c)), float(np.sum(w * c**2))


@pytest.mark.parametrize("process,s,p_mean,p_std", [
    ("edm", 0.5, -1.2, 1.2), ("edm", 0.2, -1.2, 1.2), ("edm", 1.0, 0.5, 0.5),
    ("vp", 0.2, -1.2, 1.2)])
def test_edm_loss_of_the_exact_denoiser_is_its_closed_form(process, s, p_mean, p_std):
  """loss = mean over B of sum_d lambda (D* - y)^2 / d; per example its expectation given
  sigma is c(sigma) d, with (D* - y) ~ N(0, posterior variance I), so E[loss] = E[c] and
  Var(per example) = E[c^2] (1 + 2 / d) - E[c]^2. B = 8192, d = 2: within 4 standard
  errors. With s = sigma_data, c = 1 for every sigma. On the VP process the same loss goes
  through its x0 prediction at t(sigma~) and has the same expectation."""
  sde = sde_lib.EDM() if process == "edm" else sde_lib.VPSDE()
  m, d, b = 0.3, 2, 8192
  fn = losses.get_edm_loss_fn(sde, sigma_data=0.5, p_mean=p_mean, p_std=p_std,
                              reduce_mean=True)
  y = m + s * jax.random.normal(jax.random.PRNGKey(0), (b, d))
  loss = float(jax.jit(fn, static_argnums=0)(sde_lib.gaussian_model_fn(sde, m, s), y,
                                             jax.random.PRNGKey(1)))
  mean, second = _expected_edm_loss(s, 0.5, p_mean, p_std)
  se = np.sqrt(second * (1 + 2 / d) - mean**2) / np.sqrt(b)
  if s == 0.5:
    assert abs(mean - 1) < 1e-12
  assert abs(loss - mean) < 4 * se, (loss, mean, se)


def test_edm_loss_reduction_and_errors():
  """reduce_mean=False is EDM's per-example sum over elements: d times the mean."""
  sde = sde_lib.EDM()
  y = jax.random.normal(jax.random.PRNGKey(2), (16, 3, 4))
  model_fn = sde_lib.gaussian_model_fn(sde, 0.0, 1.0)
  key = jax.random.PRNGKey(3)
  total = losses.get_edm_loss_fn(sde, reduce_mean=False)(model_fn, y, key)
  mean = losses.get_edm_loss_fn(sde, reduce_mean=True)(model_fn, y, key)
  np.testing.assert_allclose(total, 12 * mean, rtol=1e-6)
  with pytest.raises(UserError, match="continuous = True"):
    losses.get_native_loss_fn(sde, continuous=False, objective="edm")
  with pytest.raises(UserError, match="continuous = True"):
    losses.get_native_loss_fn(sde, likelihood_weighting=True, objective="edm")
  with pytest.raises(ValueError, match="loss"):
    losses.get_native_loss_fn(sde, objective="karras")
  with pytest.raises(UserError, match="P_std"):
    losses.get_edm_loss_fn(sde, p_std=0.0)


def _edm_beta(step, batch, halflife_kimg, ratio):
  """EDM's training_loop.py, as plain Python floats."""
  cur_nimg = step * batch
  h = halflife_kimg * 1000
  if ratio is not None:
    h = min(h, cur_nimg * ratio)
  return 0.5 ** (batch / max(h, 1e-8))


@pytest.mark.parametrize("ratio", [0.05, None])
def test_ema_halflife_decay_is_edms(ratio):
  steps = np.array([0, 1, 7, 100, 19531, 19532, 10**6])
  got = np.asarray(jax.jit(lambda s: state_lib.ema_halflife_decay(s, 512, 500.0, ratio))(
      jnp.asarray(steps)))
  want = np.array([_edm_beta(int(s), 512, 500.0, ratio) for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
  if ratio is not None:
    # The first update copies the parameters; then a half-life of 0.05 of the images seen:
    # 0.5 ** 20 after one batch; the full 500 kimg from step 10^7 / 512 = 19531.25 on.
    assert got[0] == 0.0 and abs(got[1] - 0.5**20) < 1e-12
    assert got[3] < got[4] <= got[5] == got[6]
  np.testing.assert_allclose(got[-1], 0.5 ** (512 / 5e5), rtol=1e-6)


def test_train_step_applies_the_halflife_ema():
  """Two updates of a toy model with EDM's EMA (B = 8, half-life 0.001 kimg = 1 image,
  ratio 0.05): the first copies the parameters (beta = 0), the second gives
  beta p_1 + (1 - beta) p_2, beta = 0.5 ** (8 / min(1, 0.05 * 8))."""
  from configs import default_toy
  from training import step as step_lib
  c = default_toy.get_config()
  c.model.nf, c.model.num_layers = 8, 1
  c.training.batch_size = 8
  c.model.ema_halflife_kimg = 0.001
  c.model.ema_rampup_ratio = 0.05
  train_step = step_lib.make_train_step(
      losses.get_loss_fn(sde_lib.get_sde(c), c), optim.get_optimizer(c), 0.999,
      ema_schedule=step_lib._ema_schedule(c),
      data_fn=lambda k: jax.random.normal(k, (8, 2)))
  train_step = jax.jit(train_step)
  s0 = state_lib.create_train_state(c)
  s1, _ = train_step(s0, None)
  s2, _ = train_step(s1, None)
  beta = 0.5 ** (8 / min(1.0, 0.05 * 8))
  for e1, p1 in zip(jax.tree.leaves(s1.ema_params), jax.tree.leaves(s1.params)):
    np.testing.assert_array_equal(e1, p1)
  for e2, p1, p2 in zip(*(jax.tree.leaves(t) for t in (s2.ema_params, s1.params,
                                                         s2.params))):
    np.testing.assert_allclose(e2, beta * p1 + (1 - beta) * p2, rtol=1e-6, atol=1e-7)


def test_lr_rampup_in_images_is_edms():
  """lr * min(cur_nimg / (1000 lr_rampup_kimg), 1), cur_nimg = c B before update c."""
  from configs import default_toy
  c = default_toy.get_config()
  c.optim.lr, c.optim.warmup, c.optim.lr_rampup_kimg = 1e-3, 0, 10000
  c.training.batch_size = 512
  sched = optim.get_lr_schedule(c)
  counts = np.array([0, 1, 1000, 19531, 19532, 10**5])
  want = [1e-3 * min(k * 512 / max(10000 * 1000, 1e-8), 1) for k in counts]
  np.testing.assert_allclose([float(sched(jnp.asarray(k))) for k in counts], want,
                             rtol=1e-6)
  c.optim.warmup = 100
  with pytest.raises(UserError, match="warmup"):
    optim.get_lr_schedule(c)


@pytest.mark.slow
def test_loss_with_edms_augmentation_feeds_the_augment_labels():
  """config.training.augment_p > 0: the loss augments image batches and the network gets
  9 augment labels; evaluation does not augment; bad settings are UserErrors."""
  import ml_collections
  from flax import nnx
  from models.edm_precond import EDMPrecond

  seen = []

  class Backbone(nnx.Module):
    """An EDM-signature network that records the augment labels' shape and returns 0
    (D = c_skip x)."""

    def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, *,
                 train=False, key=None):
      seen.append(None if augment_labels is None else augment_labels.shape)
      return jnp.zeros_like(x)

  c = ml_collections.ConfigDict({
      "training": {"continuous": True, "reduce_mean": True, "likelihood_weighting": False,
                   "loss": "edm", "P_mean": -1.2, "P_std": 1.2, "augment_p": 0.5},
      "model": {"sigma_data": 0.5, "augment_dim": 9}})
  sde = sde_lib.EDM()
  net = EDMPrecond(Backbone(), sigma_data=0.5)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3), minval=-1, maxval=1)
  key = jax.random.PRNGKey(1)
  with_aug = losses.get_loss_fn(sde, c)(net, x, key)
  assert seen[-1] == (4, 9)
  plain = losses.get_loss_fn(sde, c, train=False)(net, x, key)
  assert seen[-1] is None
  # D = c_skip (y + n): the augmented y changes the loss (p = 0.5 moves most images).
  assert np.isfinite(float(with_aug)) and abs(float(with_aug) - float(plain)) > 1e-3
  for field, value, match in [("augment_p", 1.5, "in \\[0, 1\\]"),
                              ("loss", "default", "loss = 'edm'")]:
    bad = c.copy_and_resolve_references()
    bad.training[field] = value
    with pytest.raises(UserError, match=match):
      losses.get_loss_fn(sde, bad)
  bad = c.copy_and_resolve_references()
  bad.model.augment_dim = 0
  with pytest.raises(UserError, match="augment_dim = 9"):
    losses.get_loss_fn(sde, bad)
  with pytest.raises(UserError, match="image batches"):
    losses.get_loss_fn(sde, c)(net, jnp.ones((4, 2)), key)
