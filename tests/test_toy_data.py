"""Toy distributions: exact sampling checked against their known moments and densities."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import data
from data import toy

N = 50000


@pytest.mark.parametrize("name", toy.TOY_DATASETS)
def test_shapes_dtype_and_determinism(name):
  k = jax.random.PRNGKey(0)
  x = jax.jit(toy.sample, static_argnums=(1, 2, 3))(k, name, 64, 2)
  assert x.shape == (64, 2) and x.dtype == jnp.float32
  # Same key, same samples (jit and eager differ only by float rounding).
  np.testing.assert_allclose(x, toy.sample(k, name, 64), rtol=1e-5, atol=1e-6)
  assert not np.array_equal(x, toy.sample(jax.random.PRNGKey(1), name, 64))


def test_gaussian_moments_any_dim():
  x = toy.sample(jax.random.PRNGKey(0), "gaussian", N, dim=5)
  # SE of the mean 0.5/sqrt(N) = 0.0022; of the std 0.5/sqrt(2N) = 0.0016.
  np.testing.assert_allclose(x.mean(0), toy.GAUSSIAN_MEAN, atol=0.01)
  np.testing.assert_allclose(x.std(0), toy.GAUSSIAN_STD, atol=0.008)


def test_checkerboard_is_uniform_on_dark_squares():
  x = np.asarray(toy.sample(jax.random.PRNGKey(1), "checkerboard", N))
  assert np.all(np.isfinite(toy.log_density("checkerboard", x)))
  counts = np.histogram2d(x[:, 0], x[:, 1], bins=4, range=[[-2, 2], [-2, 2]])[0]
  dark = counts[counts > 0]
  assert dark.size == 8 and (counts == 0).sum() == 8
  # Each dark square holds N/8 = 6250 points: binomial SD ~ 74, so 4 SD = 300.
  assert np.all(np.abs(dark - N / 8) < 300)


def test_eight_gaussians_density_integrates_to_one():
  g = np.linspace(-4, 4, 401)
  xx, yy = np.meshgrid(g, g)
  pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
  mass = float(jnp.exp(toy.log_density("eight_gaussians", pts)).sum()) * (g[1] - g[0]) ** 2
  assert abs(mass - 1) < 1e-3


def test_gaussian_log_density_matches_scipy():
  import scipy.stats
  x = np.random.default_rng(0).normal(size=(5, 3))
  ref = scipy.stats.multivariate_normal(
      np.full(3, toy.GAUSSIAN_MEAN), toy.GAUSSIAN_STD**2 * np.eye(3)).logpdf(x)
  np.testing.assert_allclose(toy.log_density("gaussian", jnp.asarray(x)), ref, rtol=1e-5)


def test_errors_name_value_and_choices():
  with pytest.raises(ValueError, match=r"unknown toy dataset 'checker'.*checkerboard"):
    toy.sample(jax.random.PRNGKey(0), "checker", 4)
  with pytest.raises(ValueError, match=r"'two_moons' is 2-D, but dim=3"):
    toy.sample(jax.random.PRNGKey(0), "two_moons", 4, dim=3)
  with pytest.raises(ValueError, match="no closed-form density"):
    toy.log_density("swiss_roll", jnp.zeros((1, 2)))


def test_scalers_roundtrip_and_shape():
  c = ml_collections.ConfigDict({"data": {"centered": True, "dataset": "gaussian",
                                          "dim": 3}})
  x = jnp.linspace(0, 1, 5)
  np.testing.assert_allclose(data.get_data_scaler(c)(x), 2 * x - 1)
  np.testing.assert_allclose(data.get_data_inverse_scaler(c)(data.get_data_scaler(c)(x)), x)
  assert data.get_data_shape(c) == (3,)
  c.data.centered = False
  np.testing.assert_allclose(data.get_data_scaler(c)(x), x)
