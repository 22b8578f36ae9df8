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
# each on a CPU. The default run takes a covering set, in which every process meets
# every predictor and every corrector defined for it (except Euler-Maruyama, generic
# code, on VE); the other defined triples are marked slow (`pytest -m slow` runs them).
# Undefined triples are always checked to raise.
COVERING = {
    ("vp", "euler_maruyama", "langevin"), ("vp", "reverse_diffusion", "ald"),
    ("vp", "ancestral_sampling", "none"), ("vp", "none", "none"),
    ("subvp", "euler_maruyama", "ald"), ("subvp", "reverse_diffusion", "langevin"),
    ("ve", "reverse_diffusion", "langevin"), ("ve", "ancestral_sampling", "ald"),
    ("rf", "euler_maruyama", "langevin"), ("rf", "reverse_diffusion", "none"),
}

# Corrector-only sampling needs more Langevin steps per noise level than one.
CORRECTOR_ONLY = {"langevin": dict(n_steps=5, snr=0.16), "ald": dict(n_steps=10, snr=0.3)}


def _undefined(process, predictor, corrector) -> bool:
  return ((predictor == "ancestral_sampling" and process in ("subvp", "rf"))
          or (corrector == "ald" and process == "rf"))


def _triples():
  """Every triple, the defined ones outside COVERING marked slow."""
  for process in PROCESSES:
    for predictor in PREDICTORS:
      for corrector in CORRECTORS:
        slow = (not _undefined(process, predictor, corrector)
                and (process, predictor, corrector) not in COVERING)
        yield pytest.param(process, predictor, corrector,
                           id=f"{process}-{predictor}-{corrector}",
                           marks=(pytest.mark.slow,) if slow else ())


@pytest.mark.parametrize("process,predictor,corrector", list(_triples()))
def test_recovers_gaussian(process, predictor, corrector):
  sde = PROCESSES[process]()
  if _undefined(process, predictor, corrector):
    with pytest.raises(ValueError, match="ancestral_sampling|ald"):
      get_pc_sampler(sde, SHAPE, predictor, corrector)
    pytest.skip(f"{predictor}/{corrector} is undefined for {process} (raises)")
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


def _score_sde_chain_std(sde, eps, score_var, predictor):
  """The std of the sampler's output for 1-D data by brute force in float64: every step
  of the PC loop (no corrector, denoise=True) is linear in x, so its variance follows a
  recursion. Independent of the code under test: levels by score_sde's rule
  i = int(t (N - 1) / T) in float32, the steps from numpy tables (DDPM's betas for a
  VPSDE, SMLD's sigmas for a VESDE; Song et al. 2021, eqs. 46-48).
  score_var(t, i): the variance V of the model's score -x / V at grid time t, level i."""
  n = sde.N
  if isinstance(sde, sde_lib.VESDE):
    sig = np.exp(np.linspace(np.log(sde.sigma_min), np.log(sde.sigma_max), n))
    var = sde.sigma_max**2
  else:
    betas = np.linspace(sde.beta_0 / n, sde.beta_1 / n, n)
    var = 1.0
  for t in np.linspace(sde.T, eps, n):
    i = int(np.float32(t) * np.float32(n - 1))
    V = score_var(t, i)
    if isinstance(sde, sde_lib.VESDE):  # reverse diffusion: x_mean = x + G^2 score
      noise = sig[i] ** 2 - (sig[i - 1] ** 2 if i > 0 else 0.0)
      a = 1.0 - noise / V
    elif predictor == "reverse_diffusion":  # x_mean = x - f + G^2 score
      a, noise = 2.0 - np.sqrt(1 - betas[i]) - betas[i] / V, betas[i]
    else:  # ancestral: x_mean = (x + beta score) / sqrt(1 - beta)
      a, noise = (1.0 - betas[i] / V) / np.sqrt(1 - betas[i]), betas[i]
    mean_var = a**2 * var
    var = mean_var + noise
  return np.sqrt(mean_var)


def test_last_step_removes_the_lowest_noise_level_issue_12():
  """With score_sde's truncating index the grid's last point eps is chain
  level 0, so the denoised output of VE + reverse_diffusion is Tweedie's E[x_0 | x]:
  for 1-D data N(0, s^2) with s = sigma_0 = sigma_min = 0.01, std s^2 / sqrt(s^2 +
  sigma_0^2) = 0.00707, not the noisy sqrt(s^2 + sigma_0^2) = 0.0141 that rounding gave
  (eps = 1e-3, N = 1000: round(eps (N - 1)) = 1, the step of level 1). The float64 brute-
  force recursion of the same loop gives 0.00717 (sigma(eps) is 1.4% above sigma_0).
  n = 20000 draws: the sample std's relative standard error is 1 / sqrt(2 n) = 0.5%;
  tolerances: 3% of the recursion's value, 5% of Tweedie's.

  DDPM (VP, ancestral_sampling and reverse_diffusion, a model exact for the chain's own
  levels, score -x / (abar_i s^2 + 1 - abar_i)): the output std equals the float64
  recursion with truncation (0.0084) within 3%, while rounding's recursion gives 0.0127.
  """
  s, eps, n = 0.01, 1e-3, 20000
  key = jax.random.PRNGKey(21)
  ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=1.0, N=1000)
  model = gaussian_model(ve, np.zeros(1, np.float32), s)
  x, _ = get_pc_sampler(ve, (n, 1), "reverse_diffusion", "none", eps=eps)(key, model)
  got = float(np.std(np.asarray(x, np.float64)))
  tweedie = s**2 / np.sqrt(s**2 + 0.01**2)
  exact = _score_sde_chain_std(
      ve, eps, lambda t, i: s**2 + (0.01 * 100.0**t) ** 2, "reverse_diffusion")
  assert abs(exact / tweedie - 1) < 0.02, (exact, tweedie)
  assert abs(got / exact - 1) < 0.03, (got, exact)
  assert abs(got / tweedie - 1) < 0.05, (got, tweedie)

  vp = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  abar = jnp.asarray(vp.chain.alphas_cumprod, jnp.float32)

  def chain_model(x, t):  # exact score of the chain's level index(t)
    a = abar[vp.chain.index(t)]
    return -x / (a * s**2 + 1 - a)[:, None]

  for predictor in ("ancestral_sampling", "reverse_diffusion"):
    x, _ = get_pc_sampler(vp, (n, 1), predictor, "none", eps=eps)(key, chain_model)
    got = float(np.std(np.asarray(x, np.float64)))
    abar64 = np.cumprod(1 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
    exact = _score_sde_chain_std(
        vp, eps, lambda t, i, a=abar64: a[i] * s**2 + 1 - a[i], predictor)
    assert abs(got / exact - 1) < 0.03, (predictor, got, exact)
    assert exact < 0.0095, exact  # rounding's last step gives 0.0127
