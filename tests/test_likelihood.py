"""Probability-flow likelihoods against closed forms, scipy and theory.

Gaussian data N(m, s^2 I) have Gaussian marginals p_t under every process, so the exact
native model function and log p_t are closed forms (sde_lib.gaussian). The model's
logp = prior_logp(z) + int div f~ dt equals log p_eps(x) only when p_T is the prior; the
closed-form check therefore swaps the prior for the true p_T at the flow's endpoint z:

    logp - prior_logp(z) + log p_T(z) == log p_eps(x)   (exact for any process).

All in float32, as in production.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import sde_lib
from solvers.likelihood import (bits_per_dim, bpd_offset, get_likelihood_fn,
                                get_log_likelihood_fn, uniform_dequantize)
from solvers.trace_estimators import (sample_probes, value_and_exact_divergence,
                                      value_and_hutchinson_divergence)

MEAN, STD = 0.5, 0.3
EPS = 1e-5
PROCESSES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0),
    "rf": lambda: sde_lib.RectifiedFlow(),
}


@functools.lru_cache(maxsize=None)
def _exact_model_fn(name):
  """One model function object per process, so tests with equal static settings and
  shapes share one compiled solve (a new closure would recompile)."""
  return sde_lib.gaussian_model_fn(PROCESSES[name](), MEAN, STD)


def _gaussian_data(seed, batch, dim, mean=MEAN, std=STD):
  # numpy's generator: jax.random would compile threefry anew for every shape.
  rng = np.random.default_rng(seed)
  return jnp.asarray(mean + std * rng.standard_normal((batch, dim)), jnp.float32)


def _closed_form_error(sde, logp, z, x, mean=MEAN, std=STD):
  """|logp - prior_logp(z) + log p_T(z) - log p_eps(x)| per example, nats: (B,)."""
  b = x.shape[0]
  true_T = sde_lib.gaussian_logp(sde, z, jnp.full((b,), sde.T), mean, std)
  want = sde_lib.gaussian_logp(sde, x, jnp.full((b,), EPS), mean, std)
  return np.abs(np.asarray(logp - sde.prior_logp(z) + true_T - want))


# 64 points per case; tolerance 1e-3 nats per example at rtol = atol = 1e-5 (measured
# max errors 1.9e-5 .. 2.4e-4). D = 16 runs with the per-example error norm, D = 2 with the
# whole-batch one, so both norms meet the tolerance.
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_exact_trace_matches_closed_form(name, dim):
  sde = PROCESSES[name]()
  norm = "per_example" if dim == 16 else "batch"
  fn = get_log_likelihood_fn(sde, trace="exact", rtol=1e-5, atol=1e-5, eps=EPS,
                             error_norm=norm)
  x = _gaussian_data(dim, 64, dim)
  logp, z, nfe = fn(jax.random.PRNGKey(0), _exact_model_fn(name), x)
  assert logp.shape == (64,) and logp.dtype == jnp.float32 and z.shape == x.shape
  err = _closed_form_error(sde, logp, z, x)
  assert err.max() < 1e-3, f"{name} D={dim}: max error {err.max():.2e} nats"
  assert 10 < int(nfe) < 400
  if name == "rf":
    # x_1 = z exactly, so p_T is the prior: logp itself is log p_eps(x).
    want = sde_lib.gaussian_logp(sde, x, jnp.full((64,), EPS), MEAN, STD)
    assert np.max(np.abs(np.asarray(logp - want))) < 1e-3


def _tanh_layer(dim):
  """A per-example map with a dense, non-symmetric Jacobian: f(x) = tanh(x W + b)."""
  rng = np.random.default_rng(11)
  w = jnp.asarray(rng.standard_normal((dim, dim)) / np.sqrt(dim), jnp.float32)
  b = jnp.asarray(rng.standard_normal(dim), jnp.float32)
  return lambda x: jnp.tanh(x @ w + b) + 0.5 * x


def test_exact_divergence_is_jacobian_trace():
  f = _tanh_layer(5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
  y, div = jax.jit(value_and_exact_divergence, static_argnums=0)(f, x)
  np.testing.assert_allclose(y, f(x), rtol=1e-6)
  # Brute force: per-example Jacobians by jacfwd of the single-example function.
  jac = jax.jit(jax.vmap(jax.jacfwd(lambda u: f(u[None])[0])))(x)
  np.testing.assert_allclose(div, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
  # 2000 single-probe estimates at each of 4 points: their mean is within 4 standard
  # errors of the exact trace. The Jacobian is dense, so the variance is not zero and the
  # test can fail.
  f = _tanh_layer(8)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8)), jnp.float32)
  _, exact = jax.jit(value_and_exact_divergence, static_argnums=0)(f, x)
  probes = jax.jit(sample_probes, static_argnums=(1, 2, 3))(
      jax.random.PRNGKey(2), kind, 2000, x.shape)
  assert probes.shape == (2000, 4, 8)
  single = jax.jit(jax.vmap(lambda v: value_and_hutchinson_divergence(f, x, v[None])[1]))(
      probes)
  mean, se = np.mean(single, axis=0), np.std(single, axis=0, ddof=1) / np.sqrt(2000)
  assert np.all(se > 1e-3)
  np.testing.assert_array_less(np.abs(mean - np.asarray(exact)), 4 * se)
  # n_probes averages the same single-probe terms.
  _, multi = jax.jit(value_and_hutchinson_divergence, static_argnums=0)(f, x, probes)
  np.testing.assert_allclose(multi, mean, rtol=1e-4, atol=1e-5)
  if kind == "rademacher":
    assert set(np.unique(np.asarray(probes))) == {-1.0, 1.0}


def test_one_solve_one_compile_and_rademacher():
  """128 points are one state: the vector field sees the whole batch, nfe is one number,
  and a second call with a new key and new data does not retrace."""
  sde = sde_lib.VPSDE()
  exact_fn = sde_lib.gaussian_model_fn(sde, MEAN, STD)
  traced_shapes = []

  def model_fn(x, t):
    traced_shapes.append(x.shape)  # Runs at trace time only.
    return exact_fn(x, t)

  fn = get_log_likelihood_fn(sde, trace="rademacher", n_probes=2)
  x1 = _gaussian_data(1, 128, 2)
  logp1, z1, nfe1 = fn(jax.random.PRNGKey(0), model_fn, x1)
  n_traces = len(traced_shapes)
  assert n_traces > 0 and set(traced_shapes) == {(128, 2)}
  assert jnp.shape(nfe1) == () and logp1.shape == (128,)
  x2 = _gaussian_data(2, 128, 2)
  logp2, z2, nfe2 = fn(jax.random.PRNGKey(5), model_fn, x2)
  assert len(traced_shapes) == n_traces, "second call retraced"
  # The Gaussian drift's Jacobian is c(t) I, for which v^T J v = c(t) D exactly with
  # Rademacher probes: the estimate is exact, so the closed form holds at 1e-3 nats.
  for logp, z, x in ((logp1, z1, x1), (logp2, z2, x2)):
    assert _closed_form_error(sde, logp, z, x).max() < 1e-3


def test_nfe_counts_every_evaluation_with_rejections():
  """nfe equals a run-time count of model calls on a stiff problem with rejected steps.

  The model mimics an untrained VP noise predictor, score = -tanh(x W + 3t) / sigma(t):
  its drift ~ 1/sigma(t)^2 near eps makes the controller reject steps (seen as the
  evaluation times going backwards).
  """
  sde = sde_lib.VPSDE()
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((2, 2)), jnp.float32)
  times = []

  def model_fn(x, t):
    jax.debug.callback(lambda s: times.append(float(s[0])), t)
    std = sde.marginal_prob(x, t)[1]
    return -jnp.tanh(x @ w + 3.0 * t[:, None]) / std[:, None]

  x = jnp.asarray(rng.standard_normal((8, 2)), jnp.float32)
  _, _, nfe = get_log_likelihood_fn(sde, rtol=1e-5, atol=1e-5)(jax.random.PRNGKey(0),
                                                                 model_fn, x)
  assert int(nfe) == len(times)
  assert np.sum(np.diff(times) < 0) >= 3, "expected rejected steps"


def test_matches_scipy_rk45():
  """diffrax dopri5 (float32) vs scipy RK45 (float64) on the same augmented ODE.

  Both are the Dormand-Prince 5(4) pair with an I-controller on the RMS of the scaled
  error over the flattened batch state [x (B*D), delta_logp (B)], at rtol = atol = 1e-5,
  with a Hairer-style first step. The controllers differ in details (the likelihood keeps
  diffrax's PID rules, which never shrink an accepted step and may grow one right after a
  rejection; its first step uses exponent 1/6 against scipy's 1/5; dopri5's error weights
  are Shampine's), so the step counts agree only roughly. Both count
  2 (first-step selection) + 6 per step attempt (FSAL). Measured: logp max difference
  1.1e-5 nats, nfe 44 (7 steps, ours) vs 50 (8 steps, scipy).
  """
  b0, b1, batch, dim = 0.1, 20.0, 4, 2
  sde = sde_lib.VPSDE(beta_min=b0, beta_max=b1)
  x = np.asarray(_gaussian_data(3, batch, dim), np.float64)

  def rhs(t, state):  # VP drift with the exact Gaussian score, and its divergence.
    y = state[:batch * dim].reshape(batch, dim)
    beta = b0 + t * (b1 - b0)
    log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    alpha = np.exp(log_alpha)
    var = alpha**2 * STD**2 - np.expm1(2 * log_alpha)
    drift = -0.5 * beta * y + 0.5 * beta * (y - alpha * MEAN) / var
    div = np.full(batch, dim * 0.5 * beta * (1.0 / var - 1.0))
    return np.concatenate([drift.ravel(), div])

  ref = solve_ivp(rhs, (EPS, 1.0), np.concatenate([x.ravel(), np.zeros(batch)]),
                  method="RK45", rtol=1e-5, atol=1e-5)
  assert ref.success
  z_ref = ref.y[:batch * dim, -1].reshape(batch, dim)
  logp_ref = (-0.5 * dim * np.log(2 * np.pi) - 0.5 * np.sum(z_ref**2, axis=1)
              + ref.y[batch * dim:, -1])

  fn = get_log_likelihood_fn(sde, trace="exact", solver="dopri5", rtol=1e-5, atol=1e-5,
                             eps=EPS)
  logp, z, nfe = fn(jax.random.PRNGKey(0), sde_lib.gaussian_model_fn(sde, MEAN, STD),
                    jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(logp), logp_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(z), z_ref, atol=1e-4, rtol=0)
  assert abs(int(nfe) - ref.nfev) <= 0.3 * ref.nfev, (int(nfe), ref.nfev)



def test_small_drift_costs_what_scipy_rk45_costs():
  """A drift tiny against the state at eps: our NFE within 1.5x of scipy RK45's + 6.

  VE (sigma 0.01 .. 50, as score_sde's CIFAR-10 configs) with data N(0, 50^2 I), i.e. data
  already at the prior's scale: the exact PF-ODE drift sigma(t)^2 ln(sigma_max/sigma_min)
  x / (50^2 + sigma(t)^2) is ~1e-7 |x| at eps, as that of an untrained NCSN++ on [0, 1]
  data. Hairer's trial step 0.01 |y0| / |f0| is then ~1e4, far past T = 1, where sigma(t)
  overflows float32; left uncapped (scipy caps it at T - eps) it made the first step NaN
  and the solve ran to max_steps (2 + 6 * 4096 evaluations; scipy: a few steps).
  Both are dopri5 with the RMS error norm over the flattened batch and a Hairer first
  step, so only the controllers' details differ (error exponent, growth after a
  rejection): at most half as many steps again as scipy, plus one, i.e. 1.5 nfev + 6.
  Measured: nfe 56 (ours) vs 68 (scipy, float64; 8 accepted steps); before the cap,
  NonFiniteError after max_steps. logp against the closed form to 1e-3 nats.
  """
  smin, smax, std, batch, dim = 0.01, 50.0, 50.0, 4, 2
  sde = sde_lib.VESDE(sigma_min=smin, sigma_max=smax)
  log_r = np.log(smax / smin)
  x = np.asarray(_gaussian_data(4, batch, dim, mean=0.0, std=std), np.float64)

  def rhs(t, state):  # -1/2 g^2 score with g^2 = 2 sigma^2 log_r, score = -y / (s^2 + sigma^2)
    y = state[:batch * dim]
    var = smin**2 * (smax / smin) ** (2 * t)
    c = var * log_r / (std**2 + var)
    return np.concatenate([c * y, np.full(batch, dim * c)])

  ref = solve_ivp(rhs, (EPS, 1.0), np.concatenate([x.ravel(), np.zeros(batch)]),
                  method="RK45", rtol=1e-5, atol=1e-5)
  assert ref.success
  fn = get_log_likelihood_fn(sde, trace="exact", solver="dopri5", rtol=1e-5, atol=1e-5,
                             eps=EPS)
  x32 = jnp.asarray(x, jnp.float32)
  logp, z, nfe = fn(jax.random.PRNGKey(0), sde_lib.gaussian_model_fn(sde, 0.0, std), x32)
  assert int(nfe) <= 1.5 * ref.nfev + 6, (int(nfe), ref.nfev)
  assert _closed_form_error(sde, logp, z, x32, mean=0.0, std=std).max() < 1e-3



def test_stopped_solve_under_callers_jit_is_nan():
  """Under the caller's jit the max_steps stop cannot be raised: logp and z are NaN rather
  than the state short of T (whose logp, near prior_logp(x), looks plausible)."""
  sde = PROCESSES["vp"]()
  fn = get_log_likelihood_fn(sde, max_steps=2)
  logp, z, nfe = jax.jit(fn, static_argnums=1)(jax.random.PRNGKey(0), _exact_model_fn("vp"),
                                               _gaussian_data(5, 4, 2))
  assert np.all(np.isnan(np.asarray(logp))) and np.all(np.isnan(np.asarray(z)))
  assert int(nfe) == 2 + 6 * 2  # Hairer's two, then tsit5's six (FSAL) per attempt.


# --- bits/dim -----------------------------------------------------------------------

IDENTITY = lambda x: x
CENTERED_INVERSE = lambda x: (x + 1.0) / 2.0


def test_bpd_offset_convention():
  assert bpd_offset(IDENTITY) == 8.0  # Data in [0, 1]: 256 bins of width 1/256.
  assert bpd_offset(CENTERED_INVERSE) == 7.0  # [-1, 1]: density / 2^D, one bit less.
  logp = jnp.array([-10.0, 0.0, 10.0])
  np.testing.assert_allclose(bits_per_dim(logp, (3, 2, 5), IDENTITY),
                             8.0 - np.array([-10.0, 0.0, 10.0]) / (10 * np.log(2)),
                             rtol=1e-6)


def test_bpd_of_gaussian_data():
  """Rectified flow (p_T is the prior exactly) on data N(0.5, 0.3^2 I), D = 2, 64 points.

  At x = m the density is N(0; 0, s_eps^2)^D with s_eps^2 = ((1 - eps) 0.3)^2 + eps^2, so
  bpd = log2(2 pi s_eps^2) / 2 + 8 = 7.58877... for [0, 1] data and one less centered.
  (Same settings and shapes as test_exact_trace_matches_closed_form[rf-2]: no new compile.)
  """
  sde, dim = PROCESSES["rf"](), 2
  model_fn = _exact_model_fn("rf")
  x = _gaussian_data(dim, 64, dim).at[0].set(MEAN)
  s_eps2 = ((1 - EPS) * STD) ** 2 + EPS**2
  expected_at_mean = 0.5 * np.log2(2 * np.pi * s_eps2) + 8.0
  assert abs(expected_at_mean - 7.58877) < 1e-4

  key = jax.random.PRNGKey(0)
  bpd, z, nfe = get_likelihood_fn(sde, IDENTITY, trace="exact")(key, model_fn, x)
  want = (-np.asarray(sde_lib.gaussian_logp(sde, x, jnp.full((64,), EPS), MEAN, STD))
          / (dim * np.log(2)) + 8.0)
  # 1e-3 nats per example is 1e-3 / (D ln 2) bits/dim.
  np.testing.assert_allclose(np.asarray(bpd), want, atol=1e-3 / (dim * np.log(2)))
  assert abs(float(bpd[0]) - expected_at_mean) < 1e-3
  # Same model-space density read as centered data: one bit per dimension less.
  bpd_c, _, _ = get_likelihood_fn(sde, CENTERED_INVERSE, trace="exact")(key, model_fn, x)
  np.testing.assert_allclose(np.asarray(bpd_c), np.asarray(bpd) - 1.0, atol=1e-5)

  # Dequantization moves x (a new bpd), reproducibly for one key.
  deq = get_likelihood_fn(sde, IDENTITY, trace="exact", dequantize=True)
  bpd_d1, _, _ = deq(key, model_fn, x)
  bpd_d2, _, _ = deq(key, model_fn, x)
  np.testing.assert_array_equal(np.asarray(bpd_d1), np.asarray(bpd_d2))
  assert np.all(np.asarray(bpd_d1) != np.asarray(bpd))


@pytest.mark.parametrize("centered", [False, True])
def test_uniform_dequantization_fills_each_bin(centered):
  inverse = CENTERED_INVERSE if centered else IDENTITY
  scaler = (lambda y: 2.0 * y - 1.0) if centered else IDENTITY
  k = jnp.tile(jnp.arange(256.0), (40, 1))  # 40 x 256 values, every 8-bit level.
  x = scaler(k / 255.0)
  y = inverse(uniform_dequantize(jax.random.PRNGKey(0), x, scaler, inverse))
  bins = np.floor(np.asarray(y) * 256.0)
  # float32 rounding may put a value at a bin edge; allow 1e-5 of slack.
  assert np.all(np.asarray(y) >= np.asarray(k) / 256.0 - 1e-6)
  assert np.all(np.asarray(y) < (np.asarray(k) + 1) / 256.0 + 1e-6)
  assert np.mean(bins == np.asarray(k)) > 0.999
  # Uniform within the bin: the offset's mean is 1/2 +- 4 standard errors (n = 10240).
  frac = np.asarray(y) * 256.0 - np.asarray(k)
  assert abs(frac.mean() - 0.5) < 4 * np.sqrt(1 / 12 / frac.size)


def test_argument_errors():
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="trace"):
    get_log_likelihood_fn(sde, trace="hutch")
  with pytest.raises(ValueError, match="adaptive"):
    get_log_likelihood_fn(sde, solver="euler")
  with pytest.raises(ValueError, match="eps"):
    get_log_likelihood_fn(sde, eps=0.0)
  with pytest.raises(ValueError, match="error_norm"):
    get_log_likelihood_fn(sde, error_norm="max")
  with pytest.raises(ValueError, match="affine"):
    get_likelihood_fn(sde, lambda x: x**3, dequantize=True)
