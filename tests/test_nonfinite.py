"""A model whose output is not finite below (or above) some time stops every sampler and the
likelihood with one solvers.NonFiniteError line naming that time, in the library and
through main.py (a UserError: one line on stderr, exit code 2); an adaptive solve that
runs out of steps names the tolerances and the limit to change.

The model is VP's exact score for N(0.5, 0.3^2) data, NaN for t < 0.5 (samplers, which run
from T down) or t > 0.5 (the likelihood, from eps up). The named t must be the first
evaluation past 0.5 in the direction of integration: within one step of 0.5.
"""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import sde_lib
import solvers
from common.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SDE = sde_lib.VPSDE()
EXACT = sde_lib.gaussian_model_fn(SDE, 0.5, 0.3)


def nan_below(x, t):
  return jnp.where((t < 0.5)[:, None], jnp.nan, EXACT(x, t))


def nan_above(x, t):
  return jnp.where((t > 0.5)[:, None], jnp.inf, EXACT(x, t))


def named_time(err: Exception) -> float:
  msg = str(err)
  assert "\n" not in msg
  assert "not finite" in msg and "score" in msg
  return float(re.search(r"t = ([0-9.e-]+)", msg).group(1))


@pytest.mark.parametrize("name,make,step", [
    ("fast", lambda: solvers.get_fast_sampler(SDE, (4, 2), "dpm_solver++", 10), 0.1),
    ("ode_adaptive", lambda: solvers.get_ode_sampler(SDE, (4, 2)), 0.1),
    ("ode_euler", lambda: solvers.get_ode_sampler(SDE, (4, 2), solver="euler",
                                                  num_steps=20), 0.05),
    ("sde", lambda: solvers.get_sde_sampler(SDE, (4, 2), num_steps=20), 0.05),
    ("pc", lambda: solvers.get_pc_sampler(sde_lib.VPSDE(N=20), (4, 2)), 0.0526),
])
def test_samplers_name_the_time(name, make, step):
  sampler = make()
  x, _ = sampler(jax.random.PRNGKey(0), EXACT)[:2]
  assert bool(jnp.all(jnp.isfinite(x)))
  with pytest.raises(solvers.NonFiniteError) as info:
    sampler(jax.random.PRNGKey(0), nan_below)
  assert isinstance(info.value, UserError) and isinstance(info.value, FloatingPointError)
  assert 0.5 - step <= named_time(info.value) <= 0.5


@pytest.mark.parametrize("make", [
    lambda: solvers.get_inpainter(sde_lib.VPSDE(N=20), (4, 2)),
    lambda: solvers.get_fast_inpainter(SDE, (4, 2), "dpm_solver++", 10),
])
def test_inpainters_name_the_time(make):
  """PC with 20 grid points (spacing 0.0526), DPM-Solver++ with 10 steps (0.1)."""
  data, mask = jnp.ones((4, 2)), jnp.asarray([[1.0, 0.0]] * 4)
  with pytest.raises(solvers.NonFiniteError) as info:
    make()(jax.random.PRNGKey(0), nan_below, data, mask)
  assert 0.4 <= named_time(info.value) <= 0.5


def test_likelihood_names_the_time():
  fn = solvers.get_log_likelihood_fn(SDE, rtol=1e-3, atol=1e-3)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
  with pytest.raises(solvers.NonFiniteError) as info:
    fn(jax.random.PRNGKey(1), nan_above, x)
  assert 0.5 <= named_time(info.value) <= 0.6


def test_max_steps_names_the_settings():
  sampler = solvers.get_ode_sampler(SDE, (4, 2), max_steps=5)
  with pytest.raises(UserError, match=r"max_steps = 5.*config\.sampling\.rtol.*max_steps"):
    sampler(jax.random.PRNGKey(0), EXACT)
  fn = solvers.get_log_likelihood_fn(SDE, max_steps=3)
  with pytest.raises(UserError, match=r"config\.eval\.rtol"):
    fn(jax.random.PRNGKey(1), EXACT, jnp.ones((4, 2)))


_CLI = """
import runpy, sys
import jax.numpy as jnp
import training.restore as restore
_orig = restore.model_fn_for
def _nan_below_half(config, sde, model, purpose=None):
  fn = _orig(config, sde, model, purpose)
  return lambda x, t: jnp.where((t < 0.5).reshape((-1,) + (1,) * (x.ndim - 1)), jnp.nan,
                                fn(x, t))
restore.model_fn_for = _nan_below_half
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


@pytest.mark.slow
def test_through_main_one_line_exit_2(tmp_path):
  """A 5-step toy run, then --mode sample (adaptive ODE) with the restored model made
  NaN below t = 0.5: one line on stderr naming t, exit code 2, no samples written."""
  config = ["--config", os.path.join(TESTS_DIR, "fault_config.py"),
            "--workdir", str(tmp_path), "--config.training.n_iters=5"]
  train = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *config,
                          "--mode", "train"], capture_output=True, text=True, cwd=REPO,
                         timeout=600)
  assert train.returncode == 0, train.stderr[-2000:]
  proc = subprocess.run([sys.executable, "-c", _CLI, *config, "--mode", "sample"],
                        capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert "not finite at t = 0.4" in lines[0]


def test_a_solve_stopping_inside_the_sharded_program_is_one_line(monkeypatch):
  """sample_batches runs the sampler under common.mesh.shard_outputs' jit, where the
  sampler's own diagnosis cannot run: a stopped adaptive solve there must still end as
  the sampler's one-line error, not as a runtime error from the compiled program. On one
  device shard_outputs returns the sampler unjitted, so the test wraps it in jax.jit as
  shard_outputs does on several devices."""
  from configs.default_toy import get_config
  from evaluation import samples
  from evaluation.samples import sample_batches
  # The model function here is a plain (hashable) function: static under jit.
  monkeypatch.setattr(samples, "shard_outputs",
                      lambda fn, **kwargs: jax.jit(fn, static_argnums=1))
  sampler = solvers.get_ode_sampler(SDE, (4, 2), max_steps=5)
  with pytest.raises(UserError, match=r"max_steps = 5"):
    sample_batches(get_config(), sampler, EXACT, jax.random.PRNGKey(0), 4, 4)
