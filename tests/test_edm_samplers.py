"""Every sampler family on EDM's process (sde_lib.EDM) with the exact denoiser of Gaussian
data N(m, s^2 I), against closed forms: the probability-flow map
x_t = m + sqrt((s^2 + t^2) / (s^2 + T^2)) (x_T - m) for the deterministic samplers, the data's
moments for the stochastic ones, and NVlabs/edm's own `edm_sampler` on the same latents
(tests/data/make_edm_sampler_reference.py) for EDM's 18-step Heun. The full matrix is
marked slow."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
import solvers

M, S = 0.3, 0.5
EPS = 0.002
REFERENCE = os.path.join(os.path.dirname(__file__), "data", "edm_sampler_reference.npz")


def _sde(N=1000):
  return sde_lib.EDM(sigma_min=0.002, sigma_max=80.0, N=N)


def _flow_map(sde, x_T, t):
  """The exact probability-flow map from T to t for data N(M, S^2 I), float64."""
  scale = np.sqrt((S**2 + t**2) / (S**2 + sde.T**2))
  return M + scale * (np.asarray(x_T, np.float64) - M)


def test_edm_heun_equals_edms_edm_sampler():
  """get_fast_sampler('edm_heun', steps=18) on the EDM process = generate.py's edm_sampler
  (18 steps, rho 7, sigma in [0.002, 80], 35 evaluations) with the exact denoiser, on the
  same latents (x_T = 80 latents). Ours runs in float32, EDM's loop in float64 around a
  float32 denoiser: measured max difference 3.6e-7 on outputs of size <= 1.5; tolerance
  2e-6 absolute (a few float32 ulps; a wrong step or schedule moves it by > 1e-3). Both
  against the exact flow map to t = 0: Heun's 18-step discretization error, measured
  0.064 at most over 16 x 4 values of std 0.5."""
  ref = np.load(REFERENCE)
  sde = _sde()
  latents = jnp.asarray(ref["latents"])
  mean = jnp.asarray(ref["mean"], jnp.float32)
  sampler = solvers.get_fast_sampler(sde, latents.shape, "edm_heun", steps=18, eps=EPS,
                                     sigma_min=0.002, sigma_max=80.0, rho=7.0)
  x, nfe = sampler(jax.random.PRNGKey(0),
                   sde_lib.gaussian_model_fn(sde, mean, float(ref["std"])),
                   x_T=80.0 * latents)
  assert nfe == int(ref["nfe"]) == 35
  diff = np.abs(np.asarray(x, np.float64) - ref["output"]).max()
  assert diff < 2e-6, diff
  exact = np.asarray(ref["mean"]) + float(ref["std"]) / np.sqrt(float(ref["std"])**2 + 80**2) * (
      80.0 * ref["latents"].astype(np.float64) - np.asarray(ref["mean"]))
  assert np.abs(ref["output"] - exact).max() < 0.1


def test_ode_sampler_is_the_exact_flow_map():
  """diffrax tsit5 (rtol = atol = 1e-5) from T = 80 to eps = 0.002: the exact map within
  2e-3 absolute on |x_T| up to 250 (measured 3.1e-4: the adaptive tolerances x |x|)."""
  sde = _sde()
  x_T = sde.prior_sampling(jax.random.PRNGKey(0), (16, 2))
  x, nfe = solvers.get_ode_sampler(sde, (16, 2), solver="tsit5", rtol=1e-5, atol=1e-5,
                                   eps=EPS, denoise=False)(
      jax.random.PRNGKey(1), sde_lib.gaussian_model_fn(sde, M, S), x_T=x_T)
  err = np.abs(np.asarray(x, np.float64) - _flow_map(sde, x_T, EPS)).max()
  assert err < 2e-3, err
  assert 20 < nfe < 1000


# Fast samplers: measured order of convergence against the exact flow map (64 samples;
# logSNR grid; edm_heun on its edm grid, which ends at t = 0). Measured max errors at
# 10 / 20 / 40 steps: ddim .31/.16/.085, dpm_solver(3) .050/.0095/.0020, dpm_solver++(2)
# .052/.021/.0057, unipc(2) .32/.035/.0040, ipndm(4) .061/.018/.0041, edm_heun
# .29/.058/.013. Halving the step must divide the error by at least 0.75 * 2^p,
# p = min(order, 2) (the multistep warm-up and the sigma range 80 -> 0.002 keep the
# higher orders from showing at these step counts).
FAST = [("ddim", 1, "logSNR"), ("dpm_solver", 3, "logSNR"), ("dpm_solver++", 2, "logSNR"),
        ("unipc", 2, "logSNR"), ("ipndm", 4, "logSNR"), ("edm_heun", 2, "edm")]


@pytest.mark.slow
@pytest.mark.parametrize("method,order,schedule", FAST)
def test_fast_samplers_converge_to_the_flow_map(method, order, schedule):
  sde = _sde()
  x_T = sde.prior_sampling(jax.random.PRNGKey(0), (64, 2))
  fn = sde_lib.gaussian_model_fn(sde, M, S)
  t_end = 0.0 if schedule == "edm" else EPS
  errs = []
  for steps in (20, 40):
    sampler = solvers.get_fast_sampler(sde, (64, 2), method, steps=steps, order=order,
                                       schedule=schedule, eps=EPS)
    x, _ = sampler(jax.random.PRNGKey(1), fn, x_T=x_T)
    errs.append(np.abs(np.asarray(x, np.float64) - _flow_map(sde, x_T, t_end)).max())
  assert errs[1] < errs[0] / (0.75 * 2 ** min(order, 2)), errs
  assert errs[1] < 0.1, errs


def _assert_moments(x, bias):
  """Sample mean and std of the pooled values against M and S: 4 standard errors plus
  `bias` (the sampler's discretization) of S."""
  v = np.asarray(x, np.float64).ravel()
  n = v.size
  assert abs(v.mean() - M) < 4 * S / np.sqrt(n) + bias * S, v.mean()
  assert abs(v.std() - S) < 4 * S / np.sqrt(2 * n) + bias * S, v.std()


@pytest.mark.slow
@pytest.mark.parametrize("predictor,corrector", [("reverse_diffusion", "langevin"),
                                                 ("euler_maruyama", "none")])
def test_pc_sampler_gives_the_data_distribution(predictor, corrector):
  """score_sde's PC sampler, N = 1000 uniform steps in sigma from 80 to 0.002, 4000 x 2
  values: mean and std within 4 SE + 2% of S (measured std 0.499-0.502 pooled)."""
  sde = _sde(1000)
  x, nfe = solvers.get_pc_sampler(sde, (4000, 2), predictor=predictor, corrector=corrector,
                                  snr=0.16, eps=EPS)(
      jax.random.PRNGKey(1), sde_lib.gaussian_model_fn(sde, M, S))
  assert nfe == (2000 if corrector == "langevin" else 1000)
  _assert_moments(x, 0.02)


@pytest.mark.slow
def test_diffrax_sde_sampler_gives_the_data_distribution():
  """diffrax Euler-Maruyama on the reverse SDE, 1000 steps, 4000 x 2 values (measured
  std 0.497 pooled): within 4 SE + 2% of S."""
  sde = _sde()
  x, nfe = solvers.get_sde_sampler(sde, (4000, 2), solver="euler", num_steps=1000, eps=EPS)(
      jax.random.PRNGKey(1), sde_lib.gaussian_model_fn(sde, M, S))
  assert nfe == 1001
  _assert_moments(x, 0.02)
