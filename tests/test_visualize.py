"""evaluation/visualize.py against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
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
