"""Sample metrics against known values; plots write non-empty PNGs."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from evaluation import metrics, plots


def test_sliced_wasserstein_of_shifted_gaussians():
  # For y = x + c, each projection shifts by theta.c, so SW_2^2 = E(theta.c)^2 = |c|^2 / d.
  # The sorted projections of x + c are those of x shifted by theta.c exactly, so the
  # estimate's only error is the Monte Carlo over directions (sd ~0.004 at 4000 of them)
  # and 256 points test the same as 4000 (the cost is 4000 sorts of n points).
  x = jax.random.normal(jax.random.PRNGKey(0), (256, 2))
  c = jnp.array([1.0, 0.0])
  sw = metrics.sliced_wasserstein(jax.random.PRNGKey(1), x, x + c, n_projections=4000)
  assert abs(float(sw) - np.sqrt(0.5)) < 0.02  # Monte Carlo over 4000 directions
  assert float(metrics.sliced_wasserstein(jax.random.PRNGKey(1), x, x)) < 1e-6


def test_sliced_wasserstein_to_a_fixed_reference_equals_the_plain_one():
  """sliced_wasserstein_to (reference quantiles computed once) gives sliced_wasserstein's
  number, for a reference larger than the sets and for one of the same size (float32,
  rtol 1e-5)."""
  k = jax.random.split(jax.random.PRNGKey(3), 4)
  ref = jax.random.normal(k[0], (3000, 5))
  for n in (500, 3000):
    x = 1.3 * jax.random.normal(k[1], (n, 5)) + 0.2
    to_ref = metrics.sliced_wasserstein_to(k[2], ref, n)
    np.testing.assert_allclose(float(to_ref(x)),
                               float(metrics.sliced_wasserstein(k[2], x, ref)), rtol=1e-5)


def test_sliced_wasserstein_distinguishes_distributions():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(k1, (2000, 2))
  y_same = jax.random.normal(k2, (2000, 2))
  y_wide = 1.5 * jax.random.normal(k3, (2000, 2))
  same = metrics.sliced_wasserstein(k1, x, y_same)
  wide = metrics.sliced_wasserstein(k1, x, y_wide)
  # Two samples of one law differ by sampling noise (~0.05 at n = 2000); N(0, 1) vs
  # N(0, 1.5^2) differ by 0.5 in every direction.
  assert float(same) < 0.1
  assert abs(float(wide) - 0.5) < 0.1


def test_mmd_zero_for_same_distribution_positive_otherwise():
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  x = jax.random.normal(k1, (1000, 2))
  y = jax.random.normal(k2, (1000, 2))
  assert abs(float(metrics.mmd_rbf(x, y))) < 5e-3
  assert float(metrics.mmd_rbf(x, y + 1.0)) > 0.1


def test_plots_write_files(tmp_path):
  x = np.random.default_rng(0).normal(size=(200, 2))
  outs = [
      plots.scatter({"a": x, "b": x}, str(tmp_path / "s.png")),
      plots.image_grid(np.random.default_rng(0).uniform(size=(6, 8, 8, 1)),
                       str(tmp_path / "g.png")),
      plots.trajectories_2d({"ode": np.stack([x, x * 0.5])}, str(tmp_path / "t.png")),
      plots.marginals_over_time(np.stack([x, x]), [0.0, 1.0], str(tmp_path / "m.png")),
      plots.density_grid({"p": np.zeros((10, 10))}, 2.0, str(tmp_path / "d.png")),
      plots.image_trajectory_grid(np.zeros((3, 2, 8, 8, 3)), [1, .5, 0],
                                  str(tmp_path / "it.png")),
      plots.line_plot([1, 2, 4], {"sw": [3, 2, 1]}, str(tmp_path / "l.png"), "nfe", "sw"),
  ]
  for p in outs:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(p) > 300
