"""End to end on toy data: train through main.py's functions, sample, evaluate; and the
command line's clear errors (exit code 2, one line, no traceback)."""
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import sde_lib
from configs.default_toy import get_config
from data import toy
from evaluation import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy_config():
  c = get_config()
  c.data.dataset = "eight_gaussians"
  c.model.nf = 64
  c.model.num_layers = 2
  c.training.batch_size = 256
  c.training.n_iters = 3000
  c.training.n_jitted_steps = 100
  c.training.log_freq = 500
  c.training.snapshot_freq = 3000
  c.training.snapshot_freq_for_preemption = 3000
  c.optim.warmup = 100
  c.model.ema_rate = 0.99  # 3000 steps: the EMA must forget the initial weights
  c.sampling.predictor = "reverse_diffusion"
  c.sampling.corrector = "langevin"
  c.model.num_scales = 500
  c.eval.batch_size = 2000
  c.eval.num_samples = 2000
  c.eval.num_eval_points = 400
  c.eval.batch_size = 2000
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from modes.train import run as train_from_config
  workdir = str(tmp_path_factory.mktemp("toy_vp"))
  config = _toy_config()
  train_from_config(config, workdir)
  return config, workdir


def test_trained_toy_samples_are_close_to_data(trained):
  """Sliced Wasserstein (256 directions) between 2000 samples and 2000 fresh data points.
  Two fresh data sets of that size differ by ~0.11 (the noise floor: the eight modes'
  shares vary), a model that ignores the data (the N(0, 1) prior) scores ~0.56. The
  threshold 0.2 sits between: both samplers must get most of the way to the data.
  Measured at 1500 steps: PC 0.177, ODE 0.151."""
  from evaluation.samples import draw_samples
  from training.restore import model_fn_for, restore_model
  config, workdir = trained
  model, step = restore_model(config, workdir)
  sde = sde_lib.get_sde(config)
  assert step == 3000
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  fresh = toy.sample(k[0], "eight_gaussians", 2000)
  floor = float(metrics.sliced_wasserstein(k[1], fresh, toy.sample(k[2], "eight_gaussians", 2000)))
  prior = float(metrics.sliced_wasserstein(k[1], fresh, jax.random.normal(k[3], (2000, 2))))
  results = {"floor": floor, "prior": prior}
  for method in ["pc", "ode"]:
    model_fn = model_fn_for(config, sde, model, purpose=method)
    x, nfe = draw_samples(config, sde, model_fn, k[4], 2000, method=method)
    results[method] = float(metrics.sliced_wasserstein(k[1], fresh, x))
    results[method + "_nfe"] = nfe
  print("sliced Wasserstein:", json.dumps(results))
  assert floor < 0.15 and prior > 0.4
  assert results["pc"] < 0.2, results
  assert results["ode"] < 0.2, results


def test_sample_and_eval_modes_write_their_files(trained):
  from modes.eval import evaluate
  from modes.sample import run as sample
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.num_samples = 500
  config.eval.batch_size = 250
  config.sampling.method = "ode"
  path = sample(config, workdir)
  with np.load(path) as d:
    assert d["samples"].shape == (500, 2) and np.all(np.isfinite(d["samples"]))
  assert os.path.getsize(path.replace(".npz", ".png")) > 1000
  config.eval.num_eval_points = 400
  config.eval.batch_size = 200
  summary = evaluate(config, workdir)
  (out,) = glob.glob(os.path.join(workdir, "eval", "bpd_step3000-*"))
  with open(os.path.join(out, "bpd_batches.jsonl")) as f:
    assert len(f.readlines()) == 2
  assert summary["n"] == 400 and np.isfinite(summary["mean_nll"])
  # Toy data: NLL in nats and nats/dim, no 8-bit offset; against the true density's
  # (0.35 nats/dim = 0.5 bits/dim, the tolerance this check had in bits).
  x = toy.sample(jax.random.PRNGKey(0), "eight_gaussians", 4000)
  true_nll = float(-np.mean(toy.log_density("eight_gaussians", x)))
  assert summary["mean_nll_per_dim"] == summary["mean_nll"] / 2
  assert abs(summary["mean_nll_per_dim"] - true_nll / 2) < 0.35, (summary, true_nll)


def _main(*args, workdir):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--workdir", workdir, *args],
      capture_output=True, text=True, cwd=REPO, timeout=300)


def test_unknown_sde_is_one_clear_line(tmp_path):
  r = _main("--config", "configs/default_toy.py", "--config.training.sde=vpsd",
            "--config.training.n_iters=1", workdir=str(tmp_path))
  assert r.returncode == 2
  assert "unknown SDE 'vpsd'" in r.stderr and "rectified_flow" in r.stderr
  assert "Traceback" not in r.stderr


def test_unwritable_workdir_and_missing_data_file(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  r = _main("--config", "configs/default_toy.py", workdir=str(blocker / "sub"))
  assert r.returncode == 2 and "not writable" in r.stderr and "Traceback" not in r.stderr
  r = _main("--config", "configs/vp/cifar10_ddpmpp_continuous.py",
            f"--config.data.data_dir={tmp_path / 'nowhere'}", workdir=str(tmp_path / "w"))
  assert r.returncode == 2 and "cifar-10" in r.stderr.lower(), r.stderr
  assert "Traceback" not in r.stderr


def test_misspelt_config_field_is_one_line_with_the_suggestion(tmp_path):
  r = _main("--config", "configs/default_toy.py", "--config.training.n_iter=3",
            workdir=str(tmp_path))
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert "--config.training.n_iter" in lines[0] and 'Did you mean "n_iters"' in lines[0]


def test_help_exits_zero_and_missing_checkpoint_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), "--help"],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert r.returncode == 0 and "--mode" in r.stdout
  r = _main("--config", "configs/default_toy.py", "--mode", "sample", workdir=str(tmp_path))
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert r.stderr.count("no checkpoint in") == 1, r.stderr


_FAKE_MODE = """
import sys
sys.path.insert(0, {repo!r})
import main
from absl import app
import modes.train as ds
def run(config, workdir):
  raise {exc}
ds.run = run
app.run(main.main, argv=["main.py", "--config", "configs/default_toy.py", "--workdir",
                         {workdir!r}], flags_parser=main.parse_flags)
"""


@pytest.mark.parametrize("exc, code", [("__import__('sde_lib').UserError('bad value x')", 2),
                                       ("ValueError('a bug')", 1),
                                       ("FileNotFoundError('a bug')", 1)])
def test_only_user_errors_lose_their_traceback(tmp_path, exc, code):
  """UserError: one line 'error: ...' printed once, exit 2. Any other exception (a plain
  ValueError or OSError included) keeps its traceback."""
  script = _FAKE_MODE.format(repo=REPO, exc=exc, workdir=str(tmp_path))
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     cwd=REPO, timeout=120)
  assert r.returncode == code, r.stderr
  if code == 2:
    assert r.stderr.strip().splitlines() == ["error: bad value x"]
  else:
    assert "Traceback" in r.stderr and "a bug" in r.stderr
