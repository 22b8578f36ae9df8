"""Reverse-time SDE sampler (diffrax, forward-running time s = T - t) on Gaussian data.

Data N(m, s^2 I) in 2-D, m = (0.5, -0.3), s = 0.3, the exact score / velocity as model;
n = 2000 samples (the Brownian tree's cost grows with the batch), 200 steps. A sample
passes if in every coordinate
    |mean - m| < 4 s / sqrt(n) + 0.01,   |std - s| < 4 s / sqrt(2 n) + 0.015,
4 standard errors plus an allowance for 200 steps of a first-order (weak) scheme; a model
with std 1.5 s or mean m + 0.1 fails (test_wrong_model_fails).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from solvers.sde_sampler import get_sde_sampler

MEAN = np.array([0.5, -0.3], np.float32)
STD = 0.3
SHAPE = (2000, 2)
STEPS = 200
EPS = 1e-3
MEAN_ALLOW, STD_ALLOW = 0.01, 0.015

PROCESSES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
    "rf": lambda: sde_lib.RectifiedFlow(N=1000),
}
SOLVERS = ["euler", "heun", "euler_heun", "sea", "shark", "sra1"]
EVALS_PER_STEP = {"euler": 1, "heun": 2, "euler_heun": 1, "sea": 1, "shark": 2, "sra1": 2}
# Each pair compiles a diffrax solve with a Brownian tree, seconds each on a CPU. By
# default every solver but SRA1 and every process runs at least once (rectified flow,
# singular at T, twice); the other pairs are marked slow (`pytest -m slow` runs them).
# SRA1 differs from ShARK only in its tableau (same diffrax code path): slow only.
COVERING = {("vp", "euler"), ("rf", "euler"), ("vp", "shark"), ("subvp", "euler_heun"),
            ("ve", "heun"), ("rf", "sea")}
TRACES = [0]
EVALS = [0]


def _count_evaluation():
  EVALS[0] += 1


class GaussianModel(eqx.Module):
  """The exact native function of N(mean, std^2 I) data; mean and std are traced.

  TRACES counts traces (at trace time); EVALS counts evaluations on the host through an
  ordered debug callback (test-only instrumentation).
  """

  mean: jax.Array
  std: jax.Array
  sde: sde_lib.AbstractSDE = eqx.field(static=True)

  def __call__(self, x, t):
    TRACES[0] += 1
    jax.debug.callback(_count_evaluation, ordered=True)
    return sde_lib.gaussian_model_fn(self.sde, self.mean, self.std)(x, t)


def gaussian_model(sde, mean=MEAN, std=STD) -> GaussianModel:
  return GaussianModel(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), sde)


def gaussian_errors(x, mean=MEAN, std=STD):
  """(mean error, std error, mean tolerance, std tolerance), errors maximal over coords."""
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  n = x.shape[0]
  return (np.max(np.abs(x.mean(0) - mean)), np.max(np.abs(x.std(0) - std)),
          4 * std / np.sqrt(n) + MEAN_ALLOW, 4 * std / np.sqrt(2 * n) + STD_ALLOW)


def assert_gaussian(x, mean=MEAN, std=STD):
  mean_err, std_err, mean_tol, std_tol = gaussian_errors(x, mean, std)
  assert np.all(np.isfinite(x))
  assert mean_err < mean_tol, f"mean error {mean_err:.4f} >= {mean_tol:.4f}"
  assert std_err < std_tol, f"std error {std_err:.4f} >= {std_tol:.4f}"


def _sampler(process, solver):
  sde = PROCESSES[process]()
  # Trajectory out of order: at 0.5, at T (the prior draw; T - eps for rectified flow,
  # whose SDE is singular at T) and at eps.
  return sde, get_sde_sampler(sde, SHAPE, solver, num_steps=STEPS, eps=EPS,
                              trajectory_times=[0.5, sde.T, EPS])


@pytest.mark.parametrize("process,solver", [
    pytest.param(p, s, id=f"{p}-{s}",
                 marks=() if (p, s) in COVERING else (pytest.mark.slow,))
    for p in PROCESSES for s in SOLVERS])
def test_recovers_gaussian(process, solver):
  """Statistics of the samples and of the trajectory; nfe against the evaluations."""
  sde, sampler = _sampler(process, solver)
  EVALS[0] = 0
  x, nfe, trajectory = jax.block_until_ready(
      sampler(jax.random.PRNGKey(0), gaussian_model(sde)))
  jax.effects_barrier()
  assert nfe == EVALS[0] == STEPS * EVALS_PER_STEP[solver] + 1  # +1: the Tweedie step.
  assert x.shape == SHAPE and trajectory.shape == (3,) + SHAPE
  assert_gaussian(x)
  prior_std = 50.0 if process == "ve" else 1.0
  mean_err, std_err, mean_tol, std_tol = gaussian_errors(trajectory[1] / prior_std, 0.0,
                                                          1.0)
  assert mean_err < mean_tol and std_err < std_tol, (mean_err, std_err)
  # At t = 0.5 the marginal is N(alpha m, alpha^2 s^2 + sigma^2); at eps nearly the data.
  alpha, sigma = sde.alpha_sigma(jnp.array([0.5]))
  marg_std = float(jnp.sqrt(alpha**2 * STD**2 + sigma**2)[0])
  mean_err, std_err, mean_tol, std_tol = gaussian_errors(
      trajectory[0], float(alpha[0]) * MEAN, marg_std)
  assert mean_err < mean_tol and std_err < std_tol, (mean_err, std_err)
  assert_gaussian(trajectory[2])


def test_wrong_model_fails():
  """The tolerances have teeth: std 1.5 s, or mean m + 0.1, fail them."""
  sde, sampler = _sampler("vp", "euler")  # A covering configuration: no new compile.
  key = jax.random.PRNGKey(0)
  x, _, _ = sampler(key, gaussian_model(sde, std=1.5 * STD))
  _, std_err, _, std_tol = gaussian_errors(x)
  assert std_err > std_tol, (std_err, std_tol)
  x, _, _ = sampler(key, gaussian_model(sde, mean=MEAN + 0.1))
  mean_err, _, mean_tol, _ = gaussian_errors(x)
  assert mean_err > mean_tol, (mean_err, mean_tol)


def test_compiles_once_and_key_fixes_the_sample():
  sde = sde_lib.VPSDE(N=1000)
  shape = (64, 3)  # A shape no other test uses, so the first call must trace.
  sampler = get_sde_sampler(sde, shape, "euler", num_steps=20)
  TRACES[0] = 0
  x1, nfe = sampler(jax.random.PRNGKey(0), gaussian_model(sde, mean=0.5))
  traces = TRACES[0]
  assert traces >= 1 and nfe == 21
  x2, _ = sampler(jax.random.PRNGKey(1), gaussian_model(sde, mean=1.0, std=0.5))
  x3, _ = get_sde_sampler(sde, shape, "euler", num_steps=20)(
      jax.random.PRNGKey(0), gaussian_model(sde, mean=0.5))
  assert TRACES[0] == traces
  assert not np.allclose(x1, x2)
  np.testing.assert_array_equal(x1, x3)  # The key fixes the prior draw and the path.


def test_unknown_solver_and_bad_arguments():
  sde = PROCESSES["vp"]()
  with pytest.raises(ValueError, match="'milstein'.*euler_heun"):
    get_sde_sampler(sde, SHAPE, solver="milstein")
  with pytest.raises(ValueError, match="num_steps"):
    get_sde_sampler(sde, SHAPE, num_steps=0)
  with pytest.raises(ValueError, match="trajectory_times"):
    get_sde_sampler(sde, SHAPE, trajectory_times=[2.0])
