"""Inpainting and colorization (solvers/controllable.py) on Gaussian data with exact scores.

Data x_0 ~ N(m, Sigma) in d = 4 with correlations up to 0.6; the first two coordinates are
observed, y = (0.9, 0.4). The exact posterior of the other two is
    N(m_U + S_UK S_KK^-1 (y - m_K),  S_UU - S_UK S_KK^-1 S_KU)
(mean (0.170, 0.168), stds (0.300, 0.364)). The model is the exact native function of
the marginals N(alpha m, alpha^2 Sigma + sigma^2 I) of each process.

score_sde's replacement rule is NOT posterior sampling: the unknown part is driven by
grad log p_t(x_U | x_K = alpha y + sigma z), not by grad log p_t(x_U | y). Two checks:

1. Without a corrector and with the Euler-Maruyama predictor, everything is linear-
   Gaussian, so the law of the rule's output is computed exactly by a float64 moment
   recursion (`replacement_law`, built from alpha_sigma alone). The sampler must match it
   (mean and covariance within 4 standard errors, n = 4000), and that law is measurably
   off the posterior: mean off by (0.05, -0.10) (0.16 and 0.27 posterior stds), stds
   12-15% too large (VP; the other processes alike), as the test asserts. A coarse grid (eps = 0.3, 5 steps), where the
   last step's noise is large (sub-VP), checks that `denoise` drops it (score_sde's
   x_mean bug would leave it in: variances 1.41, 1.31 instead of 0.52, 0.41).
2. With the Langevin corrector (snr 0.16, reverse-diffusion predictor, N = 200), the
   Langevin steps at each t pull x_U towards p_t(x_U | x_K) and the output is much closer
   to the posterior. Measured (n = 4000): mean errors <= 0.06, std ratios 0.99-1.06
   (VP is the farthest: its Langevin step is scaled by DDPM's alpha_i). Asserted:
   |mean error| < 0.08 and std ratio in [0.92, 1.10]; the corrector-free rule (mean error
   0.10-0.11) fails that bound.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from common.errors import UserError
from solvers import get_colorizer, get_inpainter, replace_known
from solvers.controllable import COLOR_BASIS
from solvers.diffrax_utils import stochastic_start_time

D = 4
MEAN = np.array([0.5, -0.3, 0.2, 0.0])
_L = np.array([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0.5, -0.4, 0.6, 0],
               [-0.3, 0.5, 0.2, 0.7]])
COV = 0.25 * _L @ _L.T
KNOWN, UNKNOWN = [0, 1], [2, 3]
Y = np.array([0.9, 0.4])
B = 4000

PROCESSES = {
    "vp": lambda n: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "subvp": lambda n: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "ve": lambda n: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=n),
    "rf": lambda n: sde_lib.RectifiedFlow(N=n),
}
# EDM's process (sigma(t) = t) checked through the replacement rule's exact law; its
# uniform time grid is too coarse near sigma = 0 for the 200-step Langevin test's
# posterior tolerance (mean error 0.10 against 0.08), which the other grids meet.
EDM = {"edm": lambda n: sde_lib.EDM(sigma_max=50.0, N=n)}


class ExactGaussian(eqx.Module):
  """The exact native function of N(mean, cov) data (any event shape, flattened)."""

  mean: jax.Array
  evals: jax.Array
  evecs: jax.Array
  sde: sde_lib.AbstractSDE = eqx.field(static=True)
  count: bool = eqx.field(static=True, default=False)

  def __call__(self, x, t):
    _TRACES[0] += 1  # At trace time only: counts compilations, not evaluations.
    if self.count:
      jax.debug.callback(_count_eval)
    alpha, sigma = self.sde.alpha_sigma(t)
    flat = x.reshape(x.shape[0], -1)
    centred = (flat - alpha[:, None] * self.mean) @ self.evecs
    # (alpha^2 Sigma + sigma^2 I)^-1 in Sigma's eigenbasis.
    score = -(centred / (alpha[:, None]**2 * self.evals + sigma[:, None]**2)) @ self.evecs.T
    return self.sde.native_from_score(score.reshape(x.shape), x, t)


_EVALS = [0]
_TRACES = [0]


def _count_eval():
  _EVALS[0] += 1


def exact_model(sde, mean=MEAN, cov=COV, count=False) -> ExactGaussian:
  lam, q = np.linalg.eigh(cov)
  return ExactGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(lam, jnp.float32),
                       jnp.asarray(q, jnp.float32), sde, count)


def posterior(mean, cov, known, unknown, y):
  """Mean and covariance of x_U | x_K = y for x ~ N(mean, cov), float64."""
  s_uk = cov[np.ix_(unknown, known)]
  gain = s_uk @ np.linalg.inv(cov[np.ix_(known, known)])
  return (mean[unknown] + gain @ (y - mean[known]),
          cov[np.ix_(unknown, unknown)] - gain @ s_uk.T)


def replacement_law(sde, n, eps, mean, cov, known, unknown, y, denoise=True):
  """Exact mean and covariance of x_U output by the inpainter with the Euler-Maruyama
  predictor and no corrector, float64.

  Per grid time t_i (linspace(t_start, eps, n), step dt): the known part is re-noised,
  x_K = alpha y + sigma xi, then x_U <- x_U - [f x_U - g^2 s_U(x_U, x_K)] dt + g sqrt(dt) z,
  with s_U = -P_UU (x_U - alpha m_U) - P_UK (x_K - alpha m_K), P = (alpha^2 S + sigma^2
  I)^-1, f = alpha'/alpha and g^2 = (sigma^2)' - 2 f sigma^2 (the SDE whose marginals are
  N(alpha x_0, sigma^2 I)), alpha' and sigma' by autodiff of sde.alpha_sigma. The last
  step omits z when denoising. x_U starts from the prior, whose variance is read off
  sde.prior_logp(0).
  """
  t_start = stochastic_start_time(sde, eps)
  grid = np.linspace(t_start, eps, n).astype(np.float32)
  dt = (t_start - eps) / (n - 1)
  (alpha, sigma), (dalpha, dsigma) = jax.jvp(
      sde.alpha_sigma, (jnp.asarray(grid),), (jnp.ones(n, jnp.float32),))
  alpha, sigma, dalpha, dsigma = (np.asarray(v, np.float64)
                                  for v in (alpha, sigma, dalpha, dsigma))
  f = dalpha / alpha
  g2 = 2 * sigma * dsigma - 2 * f * sigma**2
  logp0 = float(sde.prior_logp(jnp.zeros((1, len(mean))))[0])
  prior_var = np.exp(-2 * logp0 / len(mean)) / (2 * np.pi)
  k, u = len(unknown), np.ix_
  mu, c = np.zeros(k), prior_var * np.eye(k)
  for i in range(n):
    p = np.linalg.inv(alpha[i]**2 * cov + sigma[i]**2 * np.eye(len(mean)))
    p_uu, p_uk = p[u(unknown, unknown)], p[u(unknown, known)]
    h = g2[i] * dt
    a = (1 - f[i] * dt) * np.eye(k) - h * p_uu
    mu = ((1 - f[i] * dt) * mu
          - h * (p_uu @ (mu - alpha[i] * mean[unknown])
                 + p_uk @ (alpha[i] * (y - mean[known]))))
    c = a @ c @ a.T + (h * sigma[i])**2 * p_uk @ p_uk.T
    if i < n - 1 or not denoise:
      c = c + h * np.eye(k)
  return mu, c


def inpaint_problem():
  data = np.zeros((B, D), np.float32)
  data[:, KNOWN] = Y
  mask = np.zeros((B, D), np.float32)
  mask[:, KNOWN] = 1.0
  return data, mask


def assert_moments(samples, mean, cov, n_se=4.0):
  """Sample mean and covariance within n_se standard errors of (mean, cov)."""
  n = samples.shape[0]
  se_mean = np.sqrt(np.diag(cov) / n)
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), n_se * se_mean)
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(samples.T) - cov), n_se * se_cov)


@pytest.mark.parametrize("name,n,eps,denoise", [
    ("vp", 100, 1e-3, True), ("subvp", 100, 1e-3, True), ("ve", 100, 1e-3, True),
    ("rf", 100, 1e-3, True), ("edm", 100, 1e-3, True), ("subvp", 5, 0.3, True),
    ("subvp", 5, 0.3, False)])
def test_replacement_rule_matches_its_exact_gaussian_law(name, n, eps, denoise):
  sde = {**PROCESSES, **EDM}[name](n)
  data, mask = inpaint_problem()
  inpaint = get_inpainter(sde, data.shape, predictor="euler_maruyama", corrector="none",
                          eps=eps, denoise=denoise)
  x, nfe = inpaint(jax.random.PRNGKey(1), exact_model(sde), data, mask)
  x = np.asarray(x, np.float64)
  assert nfe == n
  np.testing.assert_array_equal(x[:, KNOWN], data[:, KNOWN])  # The observation, exactly.
  law_mean, law_cov = replacement_law(sde, n, eps, MEAN, COV, KNOWN, UNKNOWN, Y, denoise)
  assert_moments(x[:, UNKNOWN], law_mean, law_cov)
  if eps < 0.01 and name != "edm":
    # The rule's own bias: what the module docstring says replacement gets (on the four
    # processes whose 100-step grids resolve small noise; EDM's uniform grid in sigma
    # leaves the law 2-2.6 posterior standard deviations wide, which the exact-law check
    # above confirms).
    post_mean, post_cov = posterior(MEAN, COV, KNOWN, UNKNOWN, Y)
    post_std = np.sqrt(np.diag(post_cov))
    bias = (law_mean - post_mean) / post_std
    assert 0.1 < abs(bias[0]) < 0.3 and 0.2 < abs(bias[1]) < 0.4, bias
    ratio = np.sqrt(np.diag(law_cov)) / post_std
    assert np.all((1.05 < ratio) & (ratio < 1.3)), ratio


@pytest.mark.parametrize("name", list(PROCESSES))
def test_inpainting_with_langevin_corrector_is_near_the_posterior(name):
  sde = PROCESSES[name](200)
  data, mask = inpaint_problem()
  inpaint = get_inpainter(sde, data.shape, predictor="reverse_diffusion",
                          corrector="langevin", snr=0.16, n_steps=1)
  x, nfe = inpaint(jax.random.PRNGKey(2), exact_model(sde), data, mask)
  x = np.asarray(x, np.float64)
  assert nfe == 400
  np.testing.assert_array_equal(x[:, KNOWN], data[:, KNOWN])
  post_mean, post_cov = posterior(MEAN, COV, KNOWN, UNKNOWN, Y)
  err = x[:, UNKNOWN].mean(0) - post_mean
  ratio = x[:, UNKNOWN].std(0) / np.sqrt(np.diag(post_cov))
  assert np.all(np.abs(err) < 0.08), err
  assert np.all((0.92 < ratio) & (ratio < 1.10)), ratio


def test_colorizer_is_inpainting_in_the_color_basis():
  """RGB pixels (1 x 1 images) x ~ N(m, S); in the basis u = x M the gray channel u_0 is
  known and (u_1, u_2) follow the replacement law of N(M^T m, M^T S M) (check 1 of the
  module docstring, VP, N = 100). The output keeps the gray image's channel mean."""
  m3 = np.array([0.3, -0.1, 0.2])
  l3 = np.array([[1.0, 0, 0], [0.7, 0.6, 0], [0.5, 0.3, 0.6]])
  s3 = 0.2 * l3 @ l3.T
  basis = COLOR_BASIS
  np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
  # score_sde's float32 matrix, first column: the gray direction.
  np.testing.assert_allclose(basis[:, 0], 5.7735026e-01, atol=1e-7)
  sde = PROCESSES["vp"](100)
  gray_level = np.float32(0.25)
  gray = np.full((B, 1, 1, 3), gray_level, np.float32)
  colorize = get_colorizer(sde, gray.shape, predictor="euler_maruyama", corrector="none")
  x, nfe = colorize(jax.random.PRNGKey(3), exact_model(sde, m3, s3), gray)
  x = np.asarray(x, np.float64).reshape(B, 3)
  assert nfe == 100
  np.testing.assert_allclose(x.mean(1), gray_level, atol=1e-6)
  u = x @ basis
  law_mean, law_cov = replacement_law(sde, 100, 1e-3, basis.T @ m3, basis.T @ s3 @ basis,
                                      [0], [1, 2], np.array([np.sqrt(3.0) * gray_level]))
  assert_moments(u[:, 1:], law_mean, law_cov)


def test_nfe_counts_model_evaluations_and_one_compile():
  """nfe equals the evaluations counted at run time (a host callback per call), and new
  data, mask, key and snr reuse one compilation."""
  sde = PROCESSES["ve"](7)
  data, mask = inpaint_problem()
  data, mask = data[:8], mask[:8]
  inpaint = get_inpainter(sde, data.shape, corrector="langevin", n_steps=2)
  model = exact_model(sde, count=True)
  _EVALS[0] = 0
  x, nfe = inpaint(jax.random.PRNGKey(0), model, data, mask)
  jax.block_until_ready(x)
  jax.effects_barrier()
  assert nfe == 7 * 3 == _EVALS[0]
  traces = _TRACES[0]
  inpaint2 = get_inpainter(sde, data.shape, corrector="langevin", n_steps=2, snr=0.3)
  inpaint2(jax.random.PRNGKey(5), exact_model(sde, MEAN + 1, count=True), data + 1.0,
           1.0 - mask)
  assert _TRACES[0] == traces


def test_replace_known_is_a_forward_transition_draw():
  """replace_known keeps the unknown part and puts alpha(t) y + sigma(t) z on the known
  part: its mean and std over n = 20000 draws within 4 standard errors; key=None gives
  the mean exactly."""
  sde = PROCESSES["vp"](1000)
  n = 20000
  t = jnp.full((n,), 0.4)
  x = jnp.full((n, 2), 7.0)
  data = jnp.full((n, 2), 0.5)
  mask = jnp.asarray([[1.0, 0.0]])
  out = np.asarray(replace_known(jax.random.PRNGKey(0), sde, x, t, data, mask))
  alpha, sigma = (float(v[0]) for v in sde.alpha_sigma(t[:1]))
  np.testing.assert_array_equal(out[:, 1], 7.0)
  assert abs(out[:, 0].mean() - 0.5 * alpha) < 4 * sigma / np.sqrt(n)
  assert abs(out[:, 0].std() - sigma) < 4 * sigma / np.sqrt(2 * n)
  mean_only = np.asarray(replace_known(None, sde, x, t, data, mask))
  np.testing.assert_allclose(mean_only[:, 0], 0.5 * alpha, rtol=1e-6)


def test_bad_input_raises_user_error():
  sde = PROCESSES["vp"](50)
  data, mask = inpaint_problem()
  inpaint = get_inpainter(sde, data.shape)
  with pytest.raises(UserError, match="mask has shape"):
    inpaint(jax.random.PRNGKey(0), exact_model(sde), data, mask[:, :2])
  with pytest.raises(UserError, match="data has shape"):
    inpaint(jax.random.PRNGKey(0), exact_model(sde), data[:10], mask[:10])
  with pytest.raises(UserError, match="RGB"):
    get_colorizer(sde, (4, 8, 8, 1))
  colorize = get_colorizer(sde, (4, 8, 8, 3))
  with pytest.raises(UserError, match="gray has shape"):
    colorize(jax.random.PRNGKey(0), exact_model(sde), np.zeros((4, 8, 8, 1), np.float32))
