"""EDM's process (sde_lib.EDM: sigma(t) = t, s(t) = 1, T = sigma_max) against closed forms:
the moments of a simulated forward SDE, scipy's prior density, the exact Gaussian score,
denoiser and posterior (float64), the probability-flow map derived by autodiff of the
marginals alone, and the exact likelihood of Gaussian data (sde_lib.gaussian)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

import sde_lib
from common.errors import UserError

# The times the checks use: from EDM's sigma_min-ish scale to sigma_max.
TIMES = jnp.array([0.01, 0.1, 0.5, 1.0, 5.0, 80.0])


def _sde(N=1000):
  return sde_lib.EDM(sigma_min=0.002, sigma_max=80.0, N=N)


def test_schedule_is_sigma_equals_t():
  sde = _sde()
  assert sde.T == 80.0 and sde.native == "denoiser" and sde.chain is None
  alpha, sigma = sde.alpha_sigma(TIMES)
  np.testing.assert_array_equal(alpha, 1.0)
  np.testing.assert_array_equal(sigma, TIMES)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  mean, std = sde.marginal_prob(x0, TIMES)
  np.testing.assert_array_equal(mean, x0)
  np.testing.assert_array_equal(std, TIMES)
  drift, g = sde.sde(x0, TIMES)
  np.testing.assert_array_equal(drift, 0.0)
  # g^2 = d sigma^2 / dt = 2 t (EDM eq. 6 with s = 1).
  np.testing.assert_allclose(g**2, 2 * TIMES, rtol=1e-6)
  # Likelihood weight g^2 / sigma^2 = 2 / t.
  np.testing.assert_allclose(sde.likelihood_weight(TIMES), 2 / TIMES, rtol=1e-6)
  assert sde.train_time_range(1e-3) == (1e-3, 80.0)
  np.testing.assert_array_equal(sde.langevin_alpha(TIMES), 1.0)


def test_marginal_prob_matches_simulated_moments():
  """Euler-Maruyama of dx = sqrt(2t) dw from a point x_0 to t = 2: mean x_0, std 2.
  n = 40000 paths, 1000 steps: 4 standard errors + 0.5% of std (EM's variance bias is
  t dt = 1e-3 relative)."""
  sde = _sde()
  n, t_end, n_steps = 40000, 2.0, 1000
  x0_point = jnp.array([1.0, -0.5])
  x0 = jnp.broadcast_to(x0_point, (n, 2))
  dt = t_end / n_steps

  def step(x, inp):
    i, k = inp
    drift, g = sde.sde(x, jnp.full((n,), i * dt))
    return x + drift * dt + g[:, None] * np.sqrt(dt) * jax.random.normal(k, x.shape), None

  keys = jax.random.split(jax.random.PRNGKey(1), n_steps)
  x = jax.jit(lambda x0: jax.lax.scan(step, x0, (jnp.arange(n_steps), keys))[0])(x0)
  mean, std = sde.marginal_prob(x0_point[None], jnp.array([t_end]))
  np.testing.assert_array_less(jnp.abs(x.mean(0) - mean[0]),
                               4 * std[0] / np.sqrt(n) + 5e-3 * std[0])
  np.testing.assert_array_less(jnp.abs(x.std(0) - std[0]),
                               4 * std[0] / np.sqrt(2 * n) + 5e-3 * std[0])


def test_prior_is_normal_with_std_sigma_max():
  sde = _sde()
  z = sde.prior_sampling(jax.random.PRNGKey(2), (5, 3, 2))
  ref = scipy.stats.multivariate_normal(np.zeros(6), 80.0**2 * np.eye(6)).logpdf(
      np.asarray(z, np.float64).reshape(5, 6))
  np.testing.assert_allclose(sde.prior_logp(z), ref, rtol=1e-5)
  big = sde.prior_sampling(jax.random.PRNGKey(3), (20000, 2))
  assert abs(float(big.std()) / 80.0 - 1) < 0.02  # 40000 values: SE 0.35%


def test_log_snr_and_its_inverse():
  """lambda = log(alpha / sigma) = -log t, decreasing; t_from_log_snr inverts it
  (50 times in [1e-3, 80], float32: rtol 1e-6)."""
  sde = _sde()
  t = jnp.geomspace(1e-3, 80.0, 50)
  lam = sde.log_snr(t)
  np.testing.assert_allclose(lam, -np.log(np.asarray(t, np.float64)), rtol=1e-6, atol=1e-6)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  np.testing.assert_allclose(sde.t_from_log_snr(lam), t, rtol=2e-6)


def _posterior(x, t, m, s):
  """E[x_0 | x_t = x] and E[z | x_t = x] for data N(m, s^2 I) under x_t = x_0 + t z,
  float64 numpy."""
  x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)[:, None]
  var = s**2 + t**2
  return m + s**2 / var * (x - m), t / var * (x - m)


def test_exact_denoiser_and_every_conversion():
  """The exact native quantity (sde_lib.gaussian_model_fn) is E[x_0|x] (EDM's ideal
  denoiser); score, eps and x_0 from it are the float64 closed forms
  score = -(x - m) / (s^2 + t^2), and each inverse maps back. float32, 6 times in
  [0.01, 80], d = 3. D itself to rtol 1e-5; score and eps come from x - D, which at
  t = 0.01 keeps only t^2 / (s^2 + t^2) = 1.1e-3 of D's digits (float32 ulp 6e-8 / 1.1e-3
  = 5e-5 relative): rtol 1e-3 there."""
  sde = _sde()
  m, s = 0.4, 0.3
  x = jax.random.normal(jax.random.PRNGKey(4), (6, 3)) * TIMES[:, None] + m
  q = sde_lib.gaussian_model_fn(sde, m, s)(x, TIMES)
  e_x0, e_z = _posterior(x, TIMES, m, s)
  score = -(np.asarray(x, np.float64) - m) / (s**2 + np.asarray(TIMES, np.float64)**2)[:, None]
  np.testing.assert_allclose(q, e_x0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sde_lib.gaussian_denoiser(sde, x, TIMES, m, s), e_x0,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sde.x0_from_native(q, x, TIMES), e_x0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sde.eps_from_native(q, x, TIMES), e_z, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(sde.score_from_native(q, x, TIMES), score, rtol=1e-3,
                             atol=1e-5)
  np.testing.assert_allclose(sde_lib.gaussian_score(sde, x, TIMES, m, s), score, rtol=1e-5,
                             atol=1e-6)
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sde.native_from_score(jnp.asarray(score, jnp.float32), x,
                                                   TIMES), e_x0, **tol)
  np.testing.assert_allclose(sde.native_from_eps(jnp.asarray(e_z, jnp.float32), x, TIMES),
                             e_x0, **tol)
  np.testing.assert_allclose(sde.native_from_x0(jnp.asarray(e_x0, jnp.float32), x, TIMES),
                             e_x0, **tol)


def test_probability_flow_is_exact_marginal_transport():
  """With the exact denoiser of N(m, s^2 I), the PF drift (x - D) / t equals the velocity
  of the marginal-preserving map x_t = m + sqrt(v_t / v_s)(x_s - m), v_t = s^2 + sigma_t^2,
  i.e. dx/dt = v'(t) / (2 v(t)) (x - m), v' by autodiff of marginal_prob alone; the reverse
  SDE's drift is f - g^2 score. rtol 1e-3: x - D cancels at t = 0.01 (see above)."""
  sde = _sde()
  m, s = jnp.array([0.7, -0.3]), 0.4
  x = jax.random.normal(jax.random.PRNGKey(5), (6, 2)) * TIMES[:, None]

  def var(ti):
    return s**2 + sde.marginal_prob(jnp.ones((1, 1)), ti[None])[1][0] ** 2

  v, dv = jax.vmap(jax.value_and_grad(var))(TIMES)
  expected = (dv / (2 * v))[:, None] * (x - m)
  fn = sde_lib.gaussian_model_fn(sde, m, s)
  drift, diffusion = sde.reverse(fn, probability_flow=True).sde(x, TIMES)
  np.testing.assert_allclose(drift, expected, rtol=1e-3, atol=1e-6)
  np.testing.assert_array_equal(diffusion, 0.0)
  drift, diffusion = sde.reverse(fn).sde(x, TIMES)
  score = sde_lib.gaussian_score(sde, x, TIMES, m, s)
  np.testing.assert_allclose(drift, -2 * TIMES[:, None] * score, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(diffusion**2, 2 * TIMES, rtol=1e-6)


def test_default_discretize_is_euler_maruyama_in_sigma():
  sde = _sde(N=100)
  x, t = jnp.ones((2, 2)), jnp.array([0.5, 40.0])
  f, G = sde.discretize(x, t)
  np.testing.assert_array_equal(f, 0.0)
  np.testing.assert_allclose(G, np.sqrt(2 * np.asarray(t) * 80.0 / 100), rtol=1e-6)


@pytest.mark.slow
def test_exact_likelihood_matches_the_gaussian_closed_form():
  """The probability-flow likelihood with the exact denoiser: logp - prior_logp(z) +
  log p_T(z) = log p_eps(x) (p_T = N(m, (s^2 + 80^2) I) is not quite the prior), 32 points
  of N(0.5, 0.3^2 I) in d = 4, eps = 1e-3, rtol = atol = 1e-5: within 1e-3 nats."""
  from solvers.likelihood import get_log_likelihood_fn
  sde, m, s, eps = _sde(), 0.5, 0.3, 1e-3
  fn = get_log_likelihood_fn(sde, trace="exact", rtol=1e-5, atol=1e-5, eps=eps)
  x = jnp.asarray(m + s * np.random.default_rng(0).standard_normal((32, 4)), jnp.float32)
  logp, z, nfe = fn(jax.random.PRNGKey(0), sde_lib.gaussian_model_fn(sde, m, s), x)
  true_T = sde_lib.gaussian_logp(sde, z, jnp.full((32,), sde.T), m, s)
  want = sde_lib.gaussian_logp(sde, x, jnp.full((32,), eps), m, s)
  err = np.abs(np.asarray(logp - sde.prior_logp(z) + true_T - want))
  assert err.max() < 1e-3, f"max error {err.max():.2e} nats"
  assert 10 < int(nfe) < 600


def _config(**model):
  c = ml_collections.ConfigDict()
  c.training = ml_collections.ConfigDict({"sde": "edm"})
  c.model = ml_collections.ConfigDict(
      dict({"sigma_min": 0.002, "sigma_max": 80.0, "num_scales": 18}, **model))
  return c


def test_get_sde_edm_and_bad_values():
  assert sde_lib.get_sde(_config()) == sde_lib.EDM(0.002, 80.0, 18)
  assert sde_lib.get_sde(_config()) != sde_lib.EDM(0.002, 50.0, 18)
  with pytest.raises(UserError, match="sigma_min < sigma_max"):
    sde_lib.get_sde(_config(sigma_min=100.0))
  c = _config()
  del c.model["sigma_max"]
  with pytest.raises(UserError, match="sigma_max"):
    sde_lib.get_sde(c)


def test_chain_predictors_and_discrete_losses_are_user_errors():
  from solvers.predictors import AncestralSamplingPredictor
  from training import losses
  sde = _sde()
  with pytest.raises(UserError, match="ancestral_sampling.*EDM has none"):
    AncestralSamplingPredictor(sde, lambda x, t: x)
  with pytest.raises(UserError, match="no discrete training objective"):
    losses.get_native_loss_fn(sde, continuous=False)
