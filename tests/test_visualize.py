"""evaluation/visualize.py against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
import solvers
from data import toy
from evaluation import visualize
from sde_lib.gaussian import gaussian_model_fn

SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(0.01, 4.0), sde_lib.RectifiedFlow()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_one_component_mixture_is_the_gaussian_oracle(sde):
  fn = visualize.gaussian_mixture_model_fn(sde, *visualize.toy_mixture("gaussian"))
  ref = gaussian_model_fn(sde, toy.GAUSSIAN_MEAN, toy.GAUSSIAN_STD)
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  t = jnp.linspace(0.05, 0.95, 16)
  np.testing.assert_allclose(fn(x, t), ref(x, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["eight_gaussians", "two_gaussians"])
def test_mixture_logp_at_small_t_is_the_toy_density(name):
  sde = sde_lib.VPSDE()
  x = toy.sample(jax.random.PRNGKey(1), name, 64)
  t = jnp.full((64,), 1e-6)
  got = visualize.gaussian_mixture_logp(sde, x, t, *visualize.toy_mixture(name))
  np.testing.assert_allclose(got, toy.log_density(name, x), atol=1e-3)


def test_flow_paths_reach_the_exact_prior_image():
  # For Gaussian data the probability flow is linear: x_T = m_T + (x - m) s_T / s.
  sde = sde_lib.VPSDE()
  m, s = toy.GAUSSIAN_MEAN, toy.GAUSSIAN_STD
  fn = gaussian_model_fn(sde, m, s)
  x = m + s * jax.random.normal(jax.random.PRNGKey(2), (32, 2))
  ts, paths = visualize.flow_paths(sde, fn, x, 1e-5, 1.0, 400, spacing="power")
  assert paths.shape == (401, 32, 2) and ts[0] == pytest.approx(1e-5) and ts[-1] == 1.0
  t1 = jnp.ones((1,))
  alpha, sigma = sde.alpha_sigma(t1)
  s_t = jnp.sqrt(alpha**2 * s**2 + sigma**2)
  alpha0, sigma0 = sde.alpha_sigma(jnp.full((1,), 1e-5))
  s_0 = jnp.sqrt(alpha0**2 * s**2 + sigma0**2)
  exact = alpha * m + (x - alpha0 * m) * s_t / s_0
  np.testing.assert_allclose(paths[-1], exact, atol=2e-2)


def test_density_on_grid_orientation():
  # density_on_grid's (row, col) is (y, x): check with an asymmetric fake likelihood.
  fake = lambda key, fn, x: (x[:, 0] + 10 * x[:, 1], x, 0)
  lp = visualize.density_on_grid(fake, jax.random.PRNGKey(0), None, lim=1.0, n=5,
                                 batch_size=7)
  u = np.linspace(-1, 1, 5)
  np.testing.assert_allclose(lp, u[None, :] + 10 * u[:, None], atol=1e-6)


def _dpm_solver_pp_2m_reference(alpha, sigma, x_T, x0_fn, singular):
  """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2), float64 numpy loop:
  every state on the grid with coefficients alpha, sigma (n + 1,), x0_fn(x, i) the data
  prediction at grid point i. The first step, and with alpha_T = 0 (singular) the first
  two, are first order: x_i = (sigma_i / sigma_{i-1}) x + alpha_i (1 - e^{-h_i}) D with
  D = x0; later D = (1 + 1 / (2 r)) x0_{i-1} - 1 / (2 r) x0_{i-2}, r = h_{i-1} / h_i.
  With alpha_T = 0 the first step is x_1 = alpha_1 x0 + sigma_1 eps_hat (the limit), and
  the multistep run that follows has 9 < 10 steps, so its last step is first order too
  (the authors' "lower_order_final and steps < 10", counted on the multistep run)."""
  lam = np.log(alpha[1:] / sigma[1:]) if singular else np.log(alpha / sigma)
  xs = [np.asarray(x_T, np.float64)]
  x, hist, start = xs[0], [], 0
  if singular:
    x0 = x0_fn(x, 0)
    x = alpha[1] * x0 + sigma[1] * (x - alpha[0] * x0) / sigma[0]
    xs.append(x)
    alpha, sigma, start = alpha[1:], sigma[1:], 1
  for i in range(1, len(alpha)):
    hist.insert(0, x0_fn(x, i - 1 + start))
    h = lam[i] - lam[i - 1]
    d = hist[0]
    if len(hist) > 1 and not (singular and i == len(alpha) - 1):
      r = (lam[i - 1] - lam[i - 2]) / h
      d = (1 + 1 / (2 * r)) * hist[0] - 1 / (2 * r) * hist[1]
    x = sigma[i] / sigma[i - 1] * x + alpha[i] * (1 - np.exp(-h)) * d
    xs.append(x)
  return np.stack(xs)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.RectifiedFlow()],
                         ids=lambda s: type(s).__name__)
def test_fast_sampler_path_is_the_samplers_path(sde):
  """DPM-Solver++(2M), 10 logSNR steps, exact model of N(m, s^2) data, 64 points.

  (a) xs[0] is x_T and xs[-1] the 10-step sampler's own output (to 1e-6);
  (b) the grid is uniform in lambda = log(alpha / sigma) (1e-4; for rectified flow from
      its second point, the first being T where lambda = -inf);
  (c) every state equals a float64 loop of the paper's Alg. 2 on the same grid with
      Tweedie's x0 = m + alpha s^2 / V (x - alpha m), V = alpha^2 s^2 + sigma^2
      (2e-4 absolute; float32 round-off on states of size ~3). The 10-step solver is
      0.05-0.12 away from the exact flow in mid-path, so the exact flow could not tell a
      shifted path from the right one; the reference can.
  """
  m, s = toy.GAUSSIAN_MEAN, toy.GAUSSIAN_STD
  fn = gaussian_model_fn(sde, m, s)
  key = jax.random.PRNGKey(3)
  x_T = sde.prior_sampling(jax.random.PRNGKey(4), (64, 2))
  ts, xs, nfe = visualize.fast_sampler_path(key, sde, fn, x_T, "dpm_solver++", steps=10,
                                            order=2, schedule="logSNR", eps=1e-3)
  assert ts.shape == (11,) and xs.shape == (11, 64, 2) and nfe == 10
  assert ts[0] == pytest.approx(sde.T) and ts[-1] == pytest.approx(1e-3)
  np.testing.assert_array_equal(xs[0], x_T)
  x_full, _ = solvers.get_fast_sampler(sde, (64, 2), "dpm_solver++", 10, order=2,
                                       schedule="logSNR", eps=1e-3)(key, fn, x_T=x_T)
  np.testing.assert_allclose(xs[-1], x_full, atol=1e-6, rtol=0)

  alpha, sigma = (np.asarray(v, np.float64) for v in sde.alpha_sigma(jnp.asarray(ts)))
  singular = alpha[0] == 0.0
  lam = np.log(alpha[int(singular):] / sigma[int(singular):])
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-4)

  def x0_fn(x, i):
    v = alpha[i] ** 2 * s**2 + sigma[i] ** 2
    return m + alpha[i] * s**2 / v * (x - alpha[i] * m)

  ref = _dpm_solver_pp_2m_reference(alpha, sigma, x_T, x0_fn, singular)
  np.testing.assert_allclose(xs, ref, atol=2e-4, rtol=0)


def test_fast_sampler_path_refuses_paths_it_cannot_rebuild():
  sde = sde_lib.VPSDE()
  x_T = jnp.zeros((4, 2))
  fn = gaussian_model_fn(sde, 0.0, 1.0)
  for kwargs in ({"method": "unipc"}, {"schedule": "edm"}, {"multistep": False},
                 {"denoise_to_zero": True}):
    with pytest.raises(sde_lib.UserError, match="fast_sampler_path"):
      visualize.fast_sampler_path(jax.random.PRNGKey(0), sde, fn, x_T, **kwargs)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_mixture_cond_model_fn_is_each_components_oracle(sde):
  """Label k: the exact native function of component k alone (sde_lib's Gaussian
  oracle); the null label K: the whole mixture's. A batch mixes the labels. 1e-4 rel."""
  means, stds, weights = visualize.toy_mixture("two_gaussians")
  cond = visualize.mixture_cond_model_fn(sde, means, stds, weights)
  mixture = visualize.gaussian_mixture_model_fn(sde, means, stds, weights)
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(5), (12, 2))
  t = jnp.linspace(0.05, 0.95, 12)
  labels = jnp.arange(12) % 3  # 0, 1, 2 (null), ...
  # Compiled, not eager: each of the mixture's many small ops would compile on its own.
  cond = jax.jit(cond)
  got = cond(x, t, labels)
  for k in range(3):
    ref = jax.jit(mixture if k == 2
                  else gaussian_model_fn(sde, jnp.asarray(means[k]), float(stds[k])))(x, t)
    np.testing.assert_allclose(got[labels == k], ref[labels == k], rtol=1e-4, atol=1e-5)
  # The components differ, so a wrong label would be caught.
  assert float(jnp.max(jnp.abs(got[0] - cond(x, t, jnp.ones(12, jnp.int32))[0]))) > 0.1


def test_fast_vs_adaptive_paths_share_x_T():
  """VP SDE, exact model of N(m, s^2) data, 32 points: the adaptive path (tsit5, rtol =
  atol = 1e-5) starts at x_T and lies on the exact linear flow map at each of its 21 times
  (2e-3, test_ode_sampler's tolerance); the 10-step path ends within 0.1 of the adaptive
  end (DPM-Solver++(2M)'s 10-step error here is 0.05) and both carry their NFE in the name."""
  sde = sde_lib.VPSDE()
  m, s = toy.GAUSSIAN_MEAN, toy.GAUSSIAN_STD
  fn = gaussian_model_fn(sde, m, s)
  x_T = sde.prior_sampling(jax.random.PRNGKey(6), (32, 2))
  paths = visualize.fast_vs_adaptive_paths(jax.random.PRNGKey(7), sde, fn, x_T,
                                           num_times=20)
  (name_ad, ad), (name_fast, fast) = paths.items()
  assert name_ad.startswith("adaptive tsit5 (NFE ") and name_fast == (
      "dpm_solver++ 10 steps (NFE 10)")
  assert ad.shape == (21, 32, 2) and fast.shape == (11, 32, 2)
  np.testing.assert_allclose(ad[0], x_T, atol=1e-6)
  for k, t in enumerate(np.linspace(1.0, 1e-3, 21)):
    a_t, s_t = (float(v[0]) for v in sde.alpha_sigma(jnp.full((1,), t)))
    a_T, s_T = (float(v[0]) for v in sde.alpha_sigma(jnp.ones((1,))))
    ratio = np.sqrt((a_t**2 * s**2 + s_t**2) / (a_T**2 * s**2 + s_T**2))
    np.testing.assert_allclose(ad[k], a_t * m + ratio * (x_T - a_T * m), atol=2e-3)
  assert float(np.max(np.abs(fast[-1] - ad[-1]))) < 0.1


def test_guided_mixture_samples_against_the_mixture():
  """two_gaussians (centres (+-2, 0), std 0.3), VP SDE, exact conditional model, 2000
  samples from DPM-Solver++(2M) with 20 steps. Tolerances: 4 standard errors plus 0.02
  for the sampler's bias. w = 0 is the component N((2, 0), 0.09 I); the unconditional
  samples split evenly between the modes; with w = 3 the x coordinate moves away from the
  other class and narrows (measured: mean 2.35, std 0.20), while y, in which both
  components agree so that conditional and unconditional scores are equal, keeps std 0.3.
  """
  n = 2000
  out = visualize.guided_mixture_samples(jax.random.PRNGKey(0), sde_lib.VPSDE(),
                                         "two_gaussians", 0, [0, 3], n)
  assert list(out) == ["unconditional", "class 0, w = 0", "class 0, w = 3"]
  s = toy.TWO_GAUSSIANS_STD
  x0 = out["class 0, w = 0"]
  np.testing.assert_allclose(x0.mean(0), [toy.TWO_GAUSSIANS_CENTRE, 0.0],
                             atol=4 * s / np.sqrt(n) + 0.02)
  np.testing.assert_allclose(x0.std(0), [s, s], atol=4 * s / np.sqrt(2 * n) + 0.02)
  share = float(np.mean(out["unconditional"][:, 0] > 0))
  assert abs(share - 0.5) < 4 * np.sqrt(0.25 / n), share
  x3 = out["class 0, w = 3"]
  assert x3[:, 0].mean() > toy.TWO_GAUSSIANS_CENTRE + 0.2 and x3[:, 0].std() < 0.8 * s
  assert abs(x3[:, 1].std() - s) < 4 * s / np.sqrt(2 * n) + 0.02


def test_inpainting_helpers():
  mask = visualize.center_square_mask((2, 8, 8, 1), 4)
  assert mask.shape == (2, 8, 8, 1) and mask.sum() == 2 * (64 - 16)
  assert np.all(mask[:, 2:6, 2:6] == 0) and mask[0, 1, 1, 0] == 1 and mask[0, 6, 6, 0] == 1
  data = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
  cols = visualize.inpainting_columns(data, mask, [data + 1, data + 2])
  assert cols.shape == (5, 2, 8, 8, 1)
  np.testing.assert_array_equal(cols[0], data)
  np.testing.assert_array_equal(cols[1][mask == 0], 0.5)
  np.testing.assert_array_equal(cols[1][mask == 1], data[mask == 1])
  np.testing.assert_array_equal(cols[2], mask)
  np.testing.assert_array_equal(cols[4], data + 2)
  with pytest.raises(sde_lib.UserError, match="mask size 9"):
    visualize.center_square_mask((1, 8, 8, 1), 9)
