"""Training objectives against closed forms for Gaussian data.

For data N(m, s^2 I) and any process here, x_t = alpha x_0 + sigma z, the exact score is
-(x - alpha m) / V with V = alpha^2 s^2 + sigma^2, and per dimension

    E || s_exact sigma + z ||^2            = alpha^2 s^2 / V                       (DSM)
    E || s_exact + z / sigma ||^2 g^2     = alpha^2 s^2 g^2 / (V sigma^2)          (likelihood-weighted)
    E || v_exact - (z - x_0) ||^2         = s^2 / ((1 - t)^2 s^2 + t^2)            (rectified flow)

(the conditional variances of the regression targets), averaged over the loss's t. Adding
a constant c to the model raises the first by c^2 E[sigma^2] and the last by c^2 exactly
in expectation (the cross term vanishes because the exact model is the conditional mean).
Monte-Carlo tolerances: 5 standard errors of the batch-mean estimates.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from flax import nnx

import models
import sde_lib
from configs.default_toy import get_default_configs
from training import losses, optim
from training import step as step_lib
from training.state import create_train_state

MEAN, STD, DIM = 0.7, 0.5, 3
N_KEYS, BATCH = 16, 4096  # 65536 examples per estimate

PROCESSES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=1000),
}


def _data(key, n=BATCH):
  return MEAN + STD * jax.random.normal(key, (n, DIM))


def _estimate(loss_fn, *model_fns, seed=0):
  """Mean and standard error of loss_fn for each model_fn over N_KEYS independent
  batches, the same batches and keys for all (one compiled call)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), N_KEYS)

  def one(key):
    data_key, loss_key = jax.random.split(key)
    x0 = _data(data_key)
    return jnp.stack([loss_fn(f, x0, loss_key) for f in model_fns])

  vals = np.asarray(jax.jit(lambda k: jax.lax.map(one, k))(keys))  # (N_KEYS, n_models)
  results = [(v.mean(), v.std(ddof=1) / np.sqrt(N_KEYS)) for v in vals.T]
  return results[0] if len(results) == 1 else results


def _time_average(f, lo, hi, n=200_001):
  """(1 / (hi - lo)) int_lo^hi f(t) dt by Simpson's rule; f is vectorised over t."""
  t = np.linspace(lo, hi, n)
  return scipy.integrate.simpson(f(t), x=t) / (hi - lo)


def _alpha_sigma(sde, t):
  a, s = sde.alpha_sigma(jnp.asarray(t, jnp.float32))
  return np.asarray(a, np.float64), np.asarray(s, np.float64)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_dsm_loss_with_exact_score_is_the_closed_form(name):
  sde = PROCESSES[name]()
  eps = losses.DEFAULT_EPS
  exact = sde_lib.gaussian_model_fn(sde, MEAN, STD)
  loss_fn = losses.get_sde_loss_fn(sde, reduce_mean=True)

  def irreducible(t):
    a, s = _alpha_sigma(sde, t)
    return a**2 * STD**2 / (a**2 * STD**2 + s**2)

  expected = _time_average(irreducible, eps, sde.T)
  # A shifted score is worse by c^2 E_t[sigma^2] (same keys: common noise).
  c = 0.3
  shifted = lambda x, t: exact(x, t) + c
  extra = c**2 * _time_average(lambda t: _alpha_sigma(sde, t)[1] ** 2, eps, sde.T)
  (got, se), (got_shifted, se_shifted) = _estimate(loss_fn, exact, shifted)
  assert abs(got - expected) < 5 * se, (got, expected, se)
  assert got_shifted > got
  assert abs(got_shifted - (expected + extra)) < 5 * se_shifted

  # Half the sum over dimensions instead of the mean: DIM / 2 times larger, same keys.
  x0, key = _data(jax.random.PRNGKey(5), 64), jax.random.PRNGKey(6)
  np.testing.assert_allclose(
      losses.get_sde_loss_fn(sde, reduce_mean=False)(exact, x0, key),
      loss_fn(exact, x0, key) * DIM / 2, rtol=1e-5)


def test_likelihood_weighted_loss_with_exact_score_is_the_closed_form():
  sde = PROCESSES["vp"]()
  # The weighted integrand grows like 1/t near 0: a larger eps keeps the estimate's
  # variance small (the formula does not depend on it).
  eps = 1e-2
  exact = sde_lib.gaussian_model_fn(sde, MEAN, STD)
  loss_fn = losses.get_sde_loss_fn(sde, reduce_mean=True, likelihood_weighting=True,
                                   eps=eps)

  def irreducible(t):
    a, s = _alpha_sigma(sde, t)
    g2 = sde.beta_0 + t * (sde.beta_1 - sde.beta_0)
    return a**2 * STD**2 * g2 / ((a**2 * STD**2 + s**2) * s**2)

  expected = _time_average(irreducible, eps, sde.T)
  (got, se), (got_shifted, _) = _estimate(loss_fn, exact, lambda x, t: exact(x, t) + 0.3)
  assert abs(got - expected) < 5 * se, (got, expected, se)
  assert got_shifted > got + 10 * se


def test_rf_loss_with_exact_velocity_is_the_closed_form():
  sde = sde_lib.RectifiedFlow()
  eps = losses.DEFAULT_EPS
  exact = sde_lib.gaussian_model_fn(sde, MEAN, STD)
  loss_fn = losses.get_rf_loss_fn(sde, reduce_mean=True)
  expected = _time_average(lambda t: STD**2 / ((1 - t) ** 2 * STD**2 + t**2), eps, 1 - eps)
  c = 0.3
  (got, se), (got_shifted, se_shifted) = _estimate(loss_fn, exact,
                                                   lambda x, t: exact(x, t) + c)
  assert abs(got - expected) < 5 * se, (got, expected, se)
  assert got_shifted > got
  assert abs(got_shifted - (expected + c**2)) < 5 * se_shifted


def test_rf_loss_uses_given_coupled_pairs():
  sde = sde_lib.RectifiedFlow()
  loss_fn = losses.get_rf_loss_fn(sde)
  x0 = _data(jax.random.PRNGKey(1), 256)
  # A deterministic coupling z = x0 + 1: the straight paths all have velocity 1, so the
  # constant model 1 has zero loss on the pairs and a positive one on independent noise.
  one = lambda x, t: jnp.ones_like(x)
  key = jax.random.PRNGKey(2)
  assert float(loss_fn(one, {"x0": x0, "z": x0 + 1.0}, key)) < 1e-12  # float rounding
  assert float(loss_fn(one, x0, key)) > 0.5
  # And by hand, with t drawn as the loss draws it.
  z = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
  model = lambda x, t: 0.5 * x + t[:, None]
  t = jax.random.uniform(jax.random.split(key)[0], (256,), minval=losses.DEFAULT_EPS,
                         maxval=1 - losses.DEFAULT_EPS)
  xt = (1 - t)[:, None] * x0 + t[:, None] * z
  by_hand = jnp.mean(jnp.mean((model(xt, t) - (z - x0)) ** 2, axis=1))
  np.testing.assert_allclose(loss_fn(model, {"x0": x0, "z": z}, key), by_hand, rtol=1e-6)


def _discrete_oracle(alpha_of_t, sigma_of_t):
  """The exact score of N(alpha m, alpha^2 s^2 + sigma^2) for the discrete chain's own
  alpha_i, sigma_i, looked up from t = i / (N - 1)."""

  def model_fn(x, t):
    a, s = alpha_of_t(t), sigma_of_t(t)
    return -(x - a[:, None] * MEAN) / (a**2 * STD**2 + s**2)[:, None]

  return model_fn


def test_ddpm_loss_with_exact_score_is_the_closed_form():
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=100)
  abar = np.asarray(sde.alphas_cumprod)
  index = lambda t: jnp.round(t * (sde.N - 1)).astype(jnp.int32)
  oracle = _discrete_oracle(lambda t: jnp.sqrt(jnp.asarray(abar, jnp.float32))[index(t)],
                            lambda t: jnp.asarray(sde.sqrt_1m_alphas_cumprod,
                                                  jnp.float32)[index(t)])
  expected = np.mean(abar * STD**2 / (abar * STD**2 + 1 - abar))
  got, se = _estimate(losses.get_ddpm_loss_fn(sde), oracle)
  assert abs(got - expected) < 5 * se, (got, expected, se)


def test_smld_loss_with_exact_score_is_the_closed_form():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=100)
  sigmas = np.asarray(sde.discrete_sigmas)
  index = lambda t: jnp.round(t * (sde.N - 1)).astype(jnp.int32)
  oracle = _discrete_oracle(lambda t: jnp.ones_like(t),
                            lambda t: jnp.asarray(sigmas, jnp.float32)[index(t)])
  expected = np.mean(STD**2 / (STD**2 + sigmas**2))
  got, se = _estimate(losses.get_smld_loss_fn(sde), oracle)
  assert abs(got - expected) < 5 * se, (got, expected, se)


class _LabelEcho(nnx.Module):
  """A stand-in network that returns its labels, to see what the discrete losses feed it."""

  def __call__(self, x, labels, *, train=False, key=None):
    return jnp.broadcast_to(labels[:, None], x.shape)


def test_smld_loss_feeds_ncsn_labels_of_its_noise_level():
  # score_sde's SMLD loss draws a label l and uses sigma = flip(discrete_sigmas)[l]: the
  # network must see l = N - 1 - i for the ascending level i the loss perturbs with.
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=50)
  seen = {}

  def model_fn(x, t):
    labels = models.get_score_fn(sde, _LabelEcho(), continuous=False)(x, t)[:, 0]
    seen["labels"], seen["t"] = labels, t
    return jnp.zeros_like(x)

  # Run eagerly, so `seen` holds concrete arrays.
  losses.get_smld_loss_fn(sde)(model_fn, jnp.zeros((64, 2)), jax.random.PRNGKey(0))
  i = np.round(np.asarray(seen["t"]) * (sde.N - 1)).astype(int)
  np.testing.assert_array_equal(np.asarray(seen["labels"]), sde.N - 1 - i)
  assert len(set(i.tolist())) > 20  # the levels are spread out


def _tiny_config(sde_name, continuous):
  config = get_default_configs()
  config.training.sde = sde_name
  config.training.continuous = continuous
  config.model.nf = 32
  config.model.num_layers = 2
  config.model.num_scales = 100
  config.data.dataset = "gaussian"
  config.optim.lr = 3e-3
  config.optim.warmup = 0
  return config


@pytest.mark.parametrize("sde_name", ["vpsde", "vesde"])
def test_discrete_losses_decrease_with_training(sde_name):
  config = _tiny_config(sde_name, continuous=False)
  sde = sde_lib.get_sde(config)
  loss_fn = losses.get_loss_fn(sde, config)
  optimizer = optim.get_optimizer(config)
  data_fn = lambda key: _data(key, 128)[:, :2]
  train_step = step_lib.make_train_step(loss_fn, optimizer, 0.99, data_fn=data_fn)
  state = create_train_state(config, optimizer)
  run = jax.jit(lambda s: step_lib.make_multi_step(train_step)(s, None, 150))
  _, metrics = run(state)
  loss = np.asarray(metrics["loss"])
  assert np.all(np.isfinite(loss))
  first, last = loss[:30].mean(), loss[-30:].mean()
  # The averages over 30 steps of 128 examples are within ~10% of their expectations;
  # training must cut the loss by at least a quarter.
  assert last < 0.75 * first, (first, last)


def test_get_loss_fn_rejects_unsupported_combinations():
  with pytest.raises(ValueError, match="sub-VP"):
    losses.get_native_loss_fn(PROCESSES["subvp"](), continuous=False)
  with pytest.raises(ValueError, match="likelihood_weighting"):
    losses.get_native_loss_fn(PROCESSES["vp"](), continuous=False,
                              likelihood_weighting=True)
  with pytest.raises(ValueError, match="rectified flow"):
    losses.get_native_loss_fn(sde_lib.RectifiedFlow(), likelihood_weighting=True)
