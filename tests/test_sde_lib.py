"""sde_lib against closed forms and independent references.

Every process: marginal_prob vs the moments of a fine-step Euler-Maruyama simulation of
sde.sde; prior_logp vs scipy; discretize vs DDPM's betas / SMLD's sigmas; the
probability-flow drift (with the exact Gaussian score) vs the velocity of the exact
marginal-preserving transport, derived by autodiff from marginal_prob alone.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

import sde_lib

PROCESSES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=1000),
    "rf": lambda: sde_lib.RectifiedFlow(N=1000),
}


def _simulate_em(sde, x0, t_end, n_steps, key):
  """Euler-Maruyama from t=0 to t_end of dx = f dt + g dw; x0: (n, d)."""
  dt = t_end / n_steps

  def step(x, inp):
    i, k = inp
    t = jnp.full((x.shape[0],), i * dt)
    drift, diffusion = sde.sde(x, t)
    noise = jax.random.normal(k, x.shape)
    return x + drift * dt + diffusion[:, None] * np.sqrt(dt) * noise, None

  keys = jax.random.split(key, n_steps)
  x, _ = jax.lax.scan(step, x0, (jnp.arange(n_steps), keys))
  return x


@pytest.mark.parametrize("name,t_end", [("vp", 0.5), ("subvp", 0.5), ("ve", 0.6),
                                        ("rf", 0.8)])
def test_marginal_prob_matches_simulated_moments(name, t_end):
  sde = PROCESSES[name]()
  n, d, n_steps = 40000, 2, 1000
  x0_point = jnp.array([1.0, -0.5])
  key0, key1 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jnp.broadcast_to(x0_point, (n, d))
  if name == "ve":
    # The VE marginal's std at t = 0 is sigma_min (score_sde's convention): start there.
    x0 = x0 + sde.sigma_min * jax.random.normal(key0, (n, d))
  x = jax.jit(_simulate_em, static_argnums=(0, 2, 3))(sde, x0, t_end, n_steps, key1)
  mean, std = sde.marginal_prob(x0_point[None], jnp.array([t_end]))
  emp_mean, emp_std = x.mean(0), x.std(0)
  # Sampling error: 4 standard errors (n = 40000); EM bias with 1000 steps is O(1e-3)
  # relative, so the allowance is 4 SE + 0.5% of std.
  se_mean = std[0] / np.sqrt(n)
  np.testing.assert_array_less(jnp.abs(emp_mean - mean[0]), 4 * se_mean + 5e-3 * std[0])
  se_std = std[0] / np.sqrt(2 * n)
  np.testing.assert_array_less(jnp.abs(emp_std - std[0]), 4 * se_std + 5e-3 * std[0])


@pytest.mark.parametrize("name", list(PROCESSES))
def test_prior_logp_matches_scipy(name):
  sde = PROCESSES[name]()
  z = sde.prior_sampling(jax.random.PRNGKey(1), (5, 3, 2))
  scale = sde.sigma_max if name == "ve" else 1.0
  ref = scipy.stats.multivariate_normal(np.zeros(6), scale**2 * np.eye(6)).logpdf(
      np.asarray(z, np.float64).reshape(5, 6))
  np.testing.assert_allclose(sde.prior_logp(z), ref, rtol=1e-5)
  assert sde.prior_logp(z).shape == (5,)


def test_prior_sampling_has_prior_std():
  for name, scale in [("vp", 1.0), ("ve", 10.0), ("rf", 1.0)]:
    z = PROCESSES[name]().prior_sampling(jax.random.PRNGKey(2), (20000, 2))
    assert abs(float(z.std()) / scale - 1) < 0.02  # n = 40000 values: SE 0.35%


def test_subvp_std_is_one_minus_exp_integral_beta():
  sde = PROCESSES["subvp"]()
  for t in [0.01, 0.1, 0.5, 1.0]:
    integral, _ = scipy.integrate.quad(lambda s: 0.1 + s * (20.0 - 0.1), 0, t)
    _, std = sde.marginal_prob(jnp.zeros((1, 2)), jnp.array([t]))
    np.testing.assert_allclose(std[0], 1 - np.exp(-integral), rtol=1e-5)


def test_vp_discretize_is_ddpm():
  sde = PROCESSES["vp"]()
  # Ho et al. (2020): beta_i = linspace(1e-4, 0.02, 1000); x_{i+1} = sqrt(1-beta_i) x_i + ...
  betas = np.linspace(1e-4, 0.02, 1000)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 3))
  idx = np.array([0, 1, 500, 999])
  t = jnp.asarray(idx / 999.0, jnp.float32)
  f, G = sde.discretize(x, t)
  np.testing.assert_allclose(f + x, np.sqrt(1 - betas[idx])[:, None] * x, rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(G, np.sqrt(betas[idx]), rtol=1e-6)


def test_ve_discretize_is_smld():
  sde = PROCESSES["ve"]()
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(10.0), 1000))  # SMLD geometric levels
  idx = np.array([0, 1, 10, 999])
  x = jnp.ones((4, 2))
  f, G = sde.discretize(x, jnp.asarray(idx / 999.0, jnp.float32))
  prev = np.where(idx == 0, 0.0, sigmas[np.maximum(idx - 1, 0)])
  np.testing.assert_allclose(f, 0.0)
  np.testing.assert_allclose(G, np.sqrt(sigmas[idx] ** 2 - prev**2), rtol=1e-4)


def test_default_discretize_is_euler_maruyama():
  sde = PROCESSES["subvp"]()
  x = jnp.ones((2, 2))
  t = jnp.array([0.3, 0.7])
  f, G = sde.discretize(x, t)
  drift, diffusion = sde.sde(x, t)
  np.testing.assert_allclose(f, drift / 1000, rtol=1e-6)
  np.testing.assert_allclose(G, diffusion * np.sqrt(1 / 1000), rtol=1e-6)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_probability_flow_is_exact_marginal_transport(name):
  """With the exact score of N(m, s^2 I) data, the PF drift equals the velocity of the map
  x_t = alpha_t m + sqrt(v_t / v_s)(x_s - alpha_s m), v_t = alpha_t^2 s^2 + sigma_t^2,
  i.e. dx/dt = alpha'(t) m + v'(t) / (2 v(t)) (x - alpha(t) m), with alpha' and v' from
  autodiff of marginal_prob (independent of sde.sde)."""
  sde = PROCESSES[name]()
  m, s = jnp.array([0.7, -0.3]), 0.4
  x = jax.random.normal(jax.random.PRNGKey(4), (6, 2))
  t = jnp.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])

  def alpha(ti):
    return sde.marginal_prob(jnp.ones((1, 1)), ti[None])[0][0, 0]

  def var(ti):
    return alpha(ti) ** 2 * s**2 + sde.marginal_prob(jnp.ones((1, 1)), ti[None])[1][0] ** 2

  a, da = jax.vmap(jax.value_and_grad(alpha))(t)
  v, dv = jax.vmap(jax.value_and_grad(var))(t)
  expected = da[:, None] * m + (dv / (2 * v))[:, None] * (x - a[:, None] * m)
  rsde = sde.reverse(sde_lib.gaussian_model_fn(sde, m, s), probability_flow=True)
  drift, diffusion = rsde.sde(x, t)
  np.testing.assert_allclose(drift, expected, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(diffusion, 0.0)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_reverse_sde_drift_formula(name):
  sde = PROCESSES[name]()
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 2))
  t = jnp.array([0.1, 0.5, 0.9])
  fn = sde_lib.gaussian_model_fn(sde, 0.5, 0.3)
  drift, diffusion = sde.reverse(fn).sde(x, t)
  f, g = sde.sde(x, t)
  score = sde_lib.gaussian_score(sde, x, t, 0.5, 0.3)
  np.testing.assert_allclose(drift, f - g[:, None] ** 2 * score, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(diffusion, g)
  rev_f, rev_G = sde.reverse(fn, probability_flow=True).discretize(x, t)
  f_d, G_d = sde.discretize(x, t)
  np.testing.assert_allclose(rev_f, f_d - 0.5 * G_d[:, None] ** 2 * score, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(rev_G, 0.0)


def test_rectified_flow_velocity_score_roundtrip():
  sde = PROCESSES["rf"]()
  x = jax.random.normal(jax.random.PRNGKey(6), (4, 2))
  t = jnp.array([0.1, 0.3, 0.6, 0.9])
  v = jax.random.normal(jax.random.PRNGKey(7), (4, 2))
  np.testing.assert_allclose(
      sde.native_from_score(sde.score_from_native(v, x, t), x, t), v, rtol=1e-4, atol=1e-5)
  # For a point mass at x0: x_t = (1-t) x0 + t z, velocity z - x0, score -z / t.
  x0, z = jnp.ones((4, 2)), v
  xt = (1 - t)[:, None] * x0 + t[:, None] * z
  np.testing.assert_allclose(sde.score_from_native(z - x0, xt, t), -z / t[:, None],
                             rtol=1e-5, atol=1e-5)


def test_bad_t_shape_is_a_clear_error():
  with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
    PROCESSES["vp"]().sde(jnp.ones((3, 2)), jnp.ones((2,)))


def _config(sde_name):
  c = ml_collections.ConfigDict()
  c.training = ml_collections.ConfigDict({"sde": sde_name})
  c.model = ml_collections.ConfigDict(
      {"beta_min": 0.1, "beta_max": 20.0, "sigma_min": 0.01, "sigma_max": 50.0,
       "num_scales": 100})
  return c


def test_get_sde_by_name():
  assert sde_lib.get_sde(_config("vpsde")) == sde_lib.VPSDE(0.1, 20.0, 100)
  assert sde_lib.get_sde(_config("subvpsde")) == sde_lib.SubVPSDE(0.1, 20.0, 100)
  assert sde_lib.get_sde(_config("vesde")) == sde_lib.VESDE(0.01, 50.0, 100)
  assert sde_lib.get_sde(_config("rectified_flow")) == sde_lib.RectifiedFlow(100)


def test_get_sde_errors_name_value_and_choices():
  with pytest.raises(ValueError, match=r"unknown SDE 'vpsd'.*choices: .*rectified_flow"):
    sde_lib.get_sde(_config("vpsd"))
  c = _config("vesde")
  del c.model["sigma_max"]
  with pytest.raises(ValueError, match="sigma_max"):
    sde_lib.get_sde(c)
  with pytest.raises(ValueError, match="beta_min <= beta_max"):
    sde_lib.VPSDE(beta_min=5.0, beta_max=1.0)


def test_gaussian_velocity_agrees_with_score_conversion_and_is_finite_at_T():
  sde = PROCESSES["rf"]()
  x = jax.random.normal(jax.random.PRNGKey(8), (3, 2))
  t = jnp.array([0.2, 0.5, 0.8])
  v = sde_lib.gaussian_velocity(sde, x, t, 0.4, 0.3)
  via_score = sde.native_from_score(sde_lib.gaussian_score(sde, x, t, 0.4, 0.3), x, t)
  np.testing.assert_allclose(v, via_score, rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(sde_lib.gaussian_velocity(sde, x, jnp.ones(3), 0.4, 0.3)))


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_log_snr_and_its_inverse(name):
  """log_snr = log(alpha / sigma) from alpha_sigma, and t_from_log_snr inverts it.

  50 times in [1e-3, 0.999] (float32): lambda within 1e-4 absolute of log(alpha/sigma)
  computed from marginal_prob, and t recovered within 2e-5 absolute.
  """
  sde = PROCESSES[name]()
  t = jnp.linspace(1e-3, 0.999, 50)
  alpha, sigma = sde.alpha_sigma(t)
  lam = sde.log_snr(t)
  np.testing.assert_allclose(lam, np.log(np.asarray(alpha, np.float64))
                             - np.log(np.asarray(sigma, np.float64)), atol=1e-4, rtol=1e-5)
  assert np.all(np.diff(np.asarray(lam)) < 0), "log-SNR must decrease in t"
  np.testing.assert_allclose(sde.t_from_log_snr(lam), t, atol=2e-5)


# ---- The process owns its differences: conversions, parameterization, chain ----------


def _posterior(sde, x, t, m, s):
  """E[x_0 | x_t = x] and E[z | x_t = x] for data N(m, s^2 I), in float64 numpy."""
  alpha, sigma = (np.asarray(a, np.float64) for a in sde.alpha_sigma(t))
  x = np.asarray(x, np.float64)
  var = alpha**2 * s**2 + sigma**2
  centred = x - alpha[:, None] * m
  return (m + (alpha * s**2 / var)[:, None] * centred,
          (sigma / var)[:, None] * centred)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_conversions_agree_with_the_exact_gaussian_posterior(name):
  """For data N(0.4, 0.3^2 I) and the exact native quantity (sde_lib.gaussian_model_fn):
  score_from_native = the closed-form score, x0_from_native = E[x_0|x], eps_from_native =
  E[z|x] (float64 closed forms), and every inverse maps back to the native quantity.
  6 times in [0.05, 0.95], d = 3, float32: rtol 2e-4, atol 2e-4 (the score is O(10))."""
  sde = PROCESSES[name]()
  m, s = 0.4, 0.3
  t = jnp.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95]) * sde.T
  x = jax.random.normal(jax.random.PRNGKey(11), (6, 3))
  q = sde_lib.gaussian_model_fn(sde, m, s)(x, t)
  e_x0, e_z = _posterior(sde, x, t, m, s)
  tol = dict(rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(sde.score_from_native(q, x, t),
                             sde_lib.gaussian_score(sde, x, t, m, s), **tol)
  np.testing.assert_allclose(sde.x0_from_native(q, x, t), e_x0, **tol)
  np.testing.assert_allclose(sde.eps_from_native(q, x, t), e_z, **tol)
  np.testing.assert_allclose(sde.native_from_score(sde.score_from_native(q, x, t), x, t),
                             q, **tol)
  np.testing.assert_allclose(sde.native_from_eps(jnp.asarray(e_z, jnp.float32), x, t), q,
                             **tol)
  np.testing.assert_allclose(sde.native_from_x0(jnp.asarray(e_x0, jnp.float32), x, t), q,
                             **tol)


def test_rectified_flow_conversions_are_finite_at_the_ends():
  """RF's x_0 = x - t v is finite at t = 1 and eps = x + (1 - t) v at t = 0 (through the
  score both would divide by zero); at t = 1, x = z exactly, so eps_from_native = x."""
  sde = PROCESSES["rf"]()
  x = jax.random.normal(jax.random.PRNGKey(12), (2, 3))
  v = jax.random.normal(jax.random.PRNGKey(13), (2, 3))
  one, zero = jnp.ones(2), jnp.zeros(2)
  np.testing.assert_allclose(sde.x0_from_native(v, x, one), x - v, rtol=1e-6)
  np.testing.assert_allclose(sde.eps_from_native(v, x, zero), x + v, rtol=1e-6)
  np.testing.assert_allclose(sde.eps_from_native(v, x, one), x, rtol=1e-6)


def test_network_parameterization_follows_score_sde():
  """score_sde's get_score_fn table: labels and output -> native quantity, per process.
  VP: 999 t / t (N - 1) and score = -out / std with std the marginal std (continuous) or
  sqrt(1 - abar) at the TRUNCATED index (discrete); sub-VP: 999 t and its own std either
  way; VE: sigma(t) / round((T - t)(N - 1)) and the output itself; RF: 999 t, the output."""
  vp, subvp, ve, rf = (PROCESSES[k]() for k in ("vp", "subvp", "ve", "rf"))
  # t (N - 1) = 299.7 and 699.3: truncation picks 299 and 699 (rounding would pick 300).
  t = jnp.array([0.3, 0.7])
  x, out = jnp.ones((2, 2)), jnp.full((2, 2), 2.0)
  np.testing.assert_allclose(vp.network_labels(t, True), 999 * t, rtol=1e-6)
  np.testing.assert_allclose(vp.network_labels(t, False), 999 * t, rtol=1e-6)
  std_c = np.sqrt(1 - np.exp(-0.5 * np.asarray(t) ** 2 * 19.9 - np.asarray(t) * 0.1))
  np.testing.assert_allclose(vp.native_from_network(out, x, t, True)[:, 0], -2 / std_c,
                             rtol=1e-5)
  np.testing.assert_allclose(vp.native_from_network(out, x, t, False)[:, 0],
                             -2 / vp.sqrt_1m_alphas_cumprod[[299, 699]], rtol=1e-5)
  for continuous in (True, False):
    np.testing.assert_allclose(subvp.network_labels(t, continuous), 999 * t, rtol=1e-6)
    np.testing.assert_allclose(
        subvp.native_from_network(out, x, t, continuous)[:, 0],
        -2 / (1 - np.exp(-0.5 * np.asarray(t) ** 2 * 19.9 - np.asarray(t) * 0.1)),
        rtol=1e-5)
  np.testing.assert_allclose(ve.network_labels(t, True), 0.01 * 1000.0 ** np.asarray(t),
                             rtol=1e-5)
  np.testing.assert_array_equal(ve.network_labels(t, False), [699, 300])
  np.testing.assert_array_equal(ve.native_from_network(out, x, t, False), out)
  np.testing.assert_allclose(rf.network_labels(t), 999 * t, rtol=1e-6)
  np.testing.assert_array_equal(rf.native_from_network(out, x, t), out)


def test_chain_index_truncates_as_score_sde():
  """The chain index is int(t (N - 1) / T) (score_sde), not a rounding.
  t = (i + 0.7) / (N - 1) must map to i; chain.time(i) maps back to i for every level
  although i / (N - 1) * (N - 1) truncates to i - 1 for some i in float32."""
  for name in ("vp", "ve"):
    chain = PROCESSES[name]().chain
    i = np.arange(0, 999, 37)
    t = jnp.asarray((i + 0.7) / 999, jnp.float32)
    np.testing.assert_array_equal(chain.index(t), i)
    levels = jnp.arange(chain.N)
    np.testing.assert_array_equal(chain.index(chain.time(levels)), levels)
    naive = (levels.astype(jnp.float32) / (chain.N - 1) * (chain.N - 1)).astype(jnp.int32)
    assert np.any(np.asarray(naive) != np.asarray(levels)), "guard has nothing to guard"
  assert PROCESSES["subvp"]().chain is None and PROCESSES["rf"]().chain is None


def test_chain_tables_and_steps_are_ddpm_and_smld():
  """DDPM's and SMLD's tables and ancestral steps (Song et al. 2021, eqs. 47-48), against
  float64 numpy by hand at t with index 299 (t (N - 1) = 299.7); rtol 1e-5."""
  vp, ve = PROCESSES["vp"](), PROCESSES["ve"]()
  t = jnp.full((2,), 0.3)
  x = jax.random.normal(jax.random.PRNGKey(14), (2, 3))
  score = jax.random.normal(jax.random.PRNGKey(15), (2, 3))
  betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
  np.testing.assert_allclose(vp.chain.betas, betas)
  np.testing.assert_allclose(vp.chain.alphas_cumprod, np.cumprod(1 - betas))
  b = betas[299]
  x_mean, std = vp.chain.ancestral_step(x, score, t)
  np.testing.assert_allclose(x_mean, (np.asarray(x) + b * np.asarray(score)) / np.sqrt(1 - b),
                             rtol=1e-5)
  np.testing.assert_allclose(std, np.sqrt(b), rtol=1e-5)
  np.testing.assert_allclose(vp.langevin_alpha(t), 1 - b, rtol=1e-6)
  np.testing.assert_allclose(PROCESSES["subvp"]().langevin_alpha(t), 1 - b, rtol=1e-6)
  sig = np.exp(np.linspace(np.log(0.01), np.log(10.0), 1000))
  np.testing.assert_allclose(ve.discrete_sigmas, sig)
  s1, s0 = sig[299], sig[298]
  x_mean, std = ve.chain.ancestral_step(x, score, t)
  np.testing.assert_allclose(x_mean, np.asarray(x) + (s1**2 - s0**2) * np.asarray(score),
                             rtol=1e-5)
  np.testing.assert_allclose(std, np.sqrt(s0**2 * (s1**2 - s0**2) / s1**2), rtol=1e-5)
  np.testing.assert_allclose(ve.langevin_alpha(t), 1.0)
  assert PROCESSES["rf"]().langevin_alpha(t) is None
  # The lowest level: SMLD's sigma_{-1} = 0, so the step removes sigma_0^2 of noise.
  _, G = ve.discretize(x, jnp.full((2,), 1e-3))
  np.testing.assert_allclose(G, 0.01, rtol=1e-5)


def test_subvp_is_not_a_vp_and_both_hash_by_hyperparameters():
  vp, subvp = sde_lib.VPSDE(0.1, 20.0, 10), sde_lib.SubVPSDE(0.1, 20.0, 10)
  assert not isinstance(subvp, sde_lib.VPSDE)
  assert vp != subvp and vp == sde_lib.VPSDE(0.1, 20.0, 10)
  assert hash(subvp) == hash(sde_lib.SubVPSDE(0.1, 20.0, 10))
  with pytest.raises(sde_lib.UserError, match="beta_min <= beta_max"):
    sde_lib.SubVPSDE(beta_min=2.0, beta_max=1.0)


def test_ddpm_chain_with_betas_above_one_is_a_user_error():
  """beta_max / N > 1 (here 20 / 8) has no DDPM chain: stepping it must raise, not return NaN;
  the continuous process with the same N stays usable."""
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=8)
  x, t = jnp.ones((2, 3)), jnp.full((2,), 0.9)
  with pytest.raises(sde_lib.UserError, match="beta_i <= 1"):
    sde.chain.discretize(x, t)
  with pytest.raises(sde_lib.UserError, match="beta_i < 1"):
    sde.chain.ancestral_step(x, x, t)
  assert np.all(np.isfinite(sde.marginal_prob(x, t)[1]))
  # beta_max / N = 1 exactly: the forward step is defined, the ancestral one is not.
  edge = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=20)
  assert np.all(np.isfinite(edge.chain.discretize(x, t)[0]))
  with pytest.raises(sde_lib.UserError, match="beta_i < 1"):
    edge.chain.ancestral_step(x, x, t)


@pytest.mark.parametrize("lo,hi,n", [(0.01, 50.0, 1000), (0.01, 348.0, 2000), (0.002, 80.0, 18)])
def test_smld_ladder_is_one_formula_with_both_tables_bitwise(lo, hi, n):
  """sde_lib.smld_sigmas is the one SMLD ladder: the process's table (ascending, float64)
  and the networks' table (models.get_sigmas: score_sde's models/utils.get_sigmas,
  descending, float32) equal their formulas bit for bit. A reversed float64 table cast to
  float32 differs from score_sde's in hundreds of entries at n = 1000, so computing the
  two orders from one reversed array would fail here."""
  from models.precond import get_sigmas
  want_process = np.exp(np.linspace(np.log(lo), np.log(hi), n))
  want_network = np.asarray(jnp.exp(jnp.linspace(jnp.log(hi), jnp.log(lo), n)))
  np.testing.assert_array_equal(sde_lib.VESDE(lo, hi, n).discrete_sigmas, want_process)
  np.testing.assert_array_equal(sde_lib.smld_sigmas(lo, hi, n), want_process)
  np.testing.assert_array_equal(np.asarray(get_sigmas(lo, hi, n)), want_network)
  assert np.asarray(get_sigmas(lo, hi, n)).dtype == np.float32


def test_reference_time_direction_is_the_processs():
  """Only rectified flow's original code runs time the other way (the checkpoint importer
  asks this instead of the config's name)."""
  assert sde_lib.RectifiedFlow(10).reference_time_reversed
  for sde in (sde_lib.VPSDE(N=10), sde_lib.SubVPSDE(N=10), sde_lib.VESDE(N=10)):
    assert not sde.reference_time_reversed
