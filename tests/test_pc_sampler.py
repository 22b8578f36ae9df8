"""Predictor-corrector sampler against Gaussian data with the exact native function.

Data N(m, s^2 I) in 2-D, m = (0.5, -0.3), s = 0.3; the model is the exact score (or
velocity for rectified flow) from sde_lib's Gaussian oracle, so what remains is the
sampler's own error. Each sample has n = 4000 draws and N = 300 grid points. A sample
passes if, in every coordinate,

    |mean - m| < 4 s / sqrt(n) + 0.01      (= 0.029)
    |std  - s| < 4 s / sqrt(2 n) + 0.015   (= 0.028, about 9% of s)

4 standard errors of the estimators plus an allowance for the sampler's bias: N = 300
steps and, for the Langevin corrector at snr = 0.16, the stationary bias of unadjusted
Langevin (its variance is s^2 / (1 - h / (2 s^2)), about 1.3% in std here). A model whose
std is 1.5 s (or whose mean is off by 0.1) fails these bounds (test_wrong_model_fails).
"""
from __future__ import annotations

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from solvers.pc_sampler import get_pc_sampler

MEAN = np.array([0.5, -0.3], np.float32)
STD = 0.3
SHAPE = (4000, 2)
N = 300
MEAN_ALLOW, STD_ALLOW = 0.01, 0.015

PROCESSES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=N),
    "subvp": lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=N),
    # sigma_max = 50: the prior N(0, 50^2) differs from p_T = N(m, 50^2 + s^2) by little.
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=N),
    "rf": lambda: sde_lib.RectifiedFlow(N=N),
}
PREDICTORS = ["euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"]
CORRECTORS = ["langevin", "ald", "none"]
TRACES = [0]


class GaussianModel(eqx.Module):
  """The exact native function of N(mean, std^2 I) data, as a pytree: mean and std are
  traced leaves, so a model with other values reuses the compiled sampler."""

  mean: jax.Array
  std: jax.Array
  sde: sde_lib.AbstractSDE = eqx.field(static=True)

  def __call__(self, x, t):
    TRACES[0] += 1  # Runs at trace time only: counts compilations, not evaluations.
    return sde_lib.gaussian_model_fn(self.sde, self.mean, self.std)(x, t)


def gaussian_model(sde, mean=MEAN, std=STD) -> GaussianModel:
  return GaussianModel(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), sde)


def gaussian_errors(x, mean=MEAN, std=STD):
  """(mean error, std error, mean tolerance, std tolerance), errors maximal over coords."""
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  n = x.shape[0]
  mean_err = np.max(np.abs(x.mean(0) - mean))
  std_err = np.max(np.abs(x.std(0) - std))
  return (mean_err, std_err, 4 * std / np.sqrt(n) + MEAN_ALLOW,
          4 * std / np.sqrt(2 * n) + STD_ALLOW)


def assert_gaussian(x, mean=MEAN, std=STD):
  mean_err, std_err, mean_tol, std_tol = gaussian_errors(x, mean, std)
  assert np.all(np.isfinite(x))
  assert mean_err < mean_tol, f"mean error {mean_err:.4f} >= {mean_tol:.4f}"
  assert std_err < std_tol, f"std error {std_err:.4f} >= {std_tol:.4f}"


# Every defined (process, predictor, corrector) triple compiles its own sampler, seconds
# each on a CPU. By default the tests run a covering set, in which every process meets
# every predictor and every corrector defined for it (except Euler-Maruyama, generic
# code, on VE); SOLVERS_FULL_TESTS=1 runs all triples. Undefined triples are always
# checked to raise.
FULL = os.environ.get("SOLVERS_FULL_TESTS", "") == "1"
COVERING = {
    ("vp", "euler_maruyama", "langevin"), ("vp", "reverse_diffusion", "ald"),
    ("vp", "ancestral_sampling", "none"), ("vp", "none", "none"),
    ("subvp", "euler_maruyama", "ald"), ("subvp", "reverse_diffusion", "langevin"),
    ("ve", "reverse_diffusion", "langevin"), ("ve", "ancestral_sampling", "ald"),
    ("rf", "euler_maruyama", "langevin"), ("rf", "reverse_diffusion", "none"),
}

# Corrector-only sampling needs more Langevin steps per noise level than one.
CORRECTOR_ONLY = {"langevin": dict(n_steps=5, snr=0.16), "ald": dict(n_steps=10, snr=0.3)}


@pytest.mark.parametrize("corrector", CORRECTORS)
@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("process", list(PROCESSES))
def test_recovers_gaussian(process, predictor, corrector):
  sde = PROCESSES[process]()
  undefined = ((predictor == "ancestral_sampling" and process in ("subvp", "rf"))
               or (corrector == "ald" and process == "rf"))
  if undefined:
    with pytest.raises(ValueError, match="ancestral_sampling|ald"):
      get_pc_sampler(sde, SHAPE, predictor, corrector)
    pytest.skip(f"{predictor}/{corrector} is undefined for {process} (raises)")
  if not FULL and (process, predictor, corrector) not in COVERING:
    pytest.skip("outside the covering set; SOLVERS_FULL_TESTS=1 runs it")
  kwargs = CORRECTOR_ONLY[corrector] if predictor == "none" and corrector != "none" else {}
  sampler = get_pc_sampler(sde, SHAPE, predictor, corrector, **kwargs)
  x, nfe = sampler(jax.random.PRNGKey(0), gaussian_model(sde))
  n_steps = kwargs.get("n_steps", 1)
  assert nfe == N * ((predictor != "none") + n_steps * (corrector != "none"))
  assert x.shape == SHAPE
  if predictor == "none" and corrector == "none":
    # Nothing moves: the sample is the prior draw.
    prior_std = 50.0 if process == "ve" else 1.0
    assert_gaussian(x / prior_std, mean=0.0, std=1.0)
    return
  assert_gaussian(x)


@pytest.mark.parametrize("process", ["vp", "rf"])
def test_probability_flow_predictor(process):
  """Euler on the probability-flow ODE inside the PC loop (no corrector)."""
  sde = PROCESSES[process]()
  sampler = get_pc_sampler(sde, SHAPE, "euler_maruyama", "none", probability_flow=True)
  x, nfe = sampler(jax.random.PRNGKey(1), gaussian_model(sde))
  assert nfe == N
  assert_gaussian(x)


def test_wrong_model_fails():
  """The tolerances have teeth: a model of the wrong std or mean fails them."""
  sde = PROCESSES["vp"]()
  # The configuration of a covering test, so the compiled sampler is reused.
  sampler = get_pc_sampler(sde, SHAPE, "euler_maruyama", "langevin")
  key = jax.random.PRNGKey(0)
  x, _ = sampler(key, gaussian_model(sde, std=1.5 * STD))
  _, std_err, _, std_tol = gaussian_errors(x)
  assert std_err > std_tol, (std_err, std_tol)
  x, _ = sampler(key, gaussian_model(sde, mean=MEAN + 0.1))
  mean_err, _, mean_tol, _ = gaussian_errors(x)
  assert mean_err > mean_tol, (mean_err, mean_tol)


def test_compiles_once_per_shape():
  """New keys, new model parameters, a new snr and a fresh but equal sampler: one trace."""
  sde = sde_lib.VPSDE(N=50)
  shape = (64, 3)  # A shape no other test uses, so the first call must trace.
  sampler = get_pc_sampler(sde, shape, "reverse_diffusion", "langevin")
  TRACES[0] = 0
  x1, _ = sampler(jax.random.PRNGKey(0), gaussian_model(sde, mean=0.0))
  traces = TRACES[0]
  assert traces >= 1
  x2, _ = sampler(jax.random.PRNGKey(1), gaussian_model(sde, mean=1.0, std=0.5))
  again = get_pc_sampler(sde, shape, "reverse_diffusion", "langevin", snr=0.2)
  x3, _ = again(jax.random.PRNGKey(2), gaussian_model(sde, mean=0.5))
  assert TRACES[0] == traces
  assert not np.allclose(x1, x2) and not np.allclose(x2, x3)


def test_trajectory():
  """States at the grid points nearest the requested times, in the requested order."""
  sde = PROCESSES["vp"]()
  times = [0.5, sde.T, 1e-3]
  sampler = get_pc_sampler(sde, SHAPE, "reverse_diffusion", "none", denoise=False,
                           trajectory_times=times)
  x, nfe, trajectory = sampler(jax.random.PRNGKey(3), gaussian_model(sde))
  assert nfe == N and trajectory.shape == (3,) + SHAPE
  # The state at T is the prior draw; at eps, the data (one step before the end).
  mean_err, std_err, mean_tol, std_tol = gaussian_errors(trajectory[1], 0.0, 1.0)
  assert mean_err < mean_tol and std_err < std_tol
  assert_gaussian(trajectory[2])
  # At t = 0.5 the marginal is N(alpha m, alpha^2 s^2 + sigma^2).
  alpha, sigma = sde.alpha_sigma(jnp.array([0.5]))
  marg_std = float(jnp.sqrt(alpha**2 * STD**2 + sigma**2)[0])
  mean_err, std_err, mean_tol, std_tol = gaussian_errors(
      trajectory[0], float(alpha[0]) * MEAN, marg_std)
  assert mean_err < mean_tol and std_err < std_tol
  with pytest.raises(ValueError, match="trajectory_times"):
    get_pc_sampler(sde, SHAPE, trajectory_times=[1.5])


def test_unknown_names_and_undefined_combinations():
  sde = PROCESSES["vp"]()
  with pytest.raises(ValueError, match="'leapfrog'.*euler_maruyama"):
    get_pc_sampler(sde, SHAPE, predictor="leapfrog")
  with pytest.raises(ValueError, match="'hmc'.*langevin"):
    get_pc_sampler(sde, SHAPE, corrector="hmc")
  with pytest.raises(ValueError, match="probability"):
    get_pc_sampler(sde, SHAPE, "ancestral_sampling", probability_flow=True)
  with pytest.raises(ValueError, match="SubVPSDE"):
    get_pc_sampler(PROCESSES["subvp"](), SHAPE, "ancestral_sampling")
