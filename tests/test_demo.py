"""modes/demo.py: the three samplers share their prior draws; a tiny end-to-end run."""
import json
import os

import jax
import numpy as np

import sde_lib
from configs.default_toy import get_config
from evaluation import visualize
from modes import demo


def _config():
  c = get_config()
  c.data.dataset = "eight_gaussians"
  c.model.num_scales = 100  # PC grid
  c.eval.batch_size = 100
  c.eval.num_samples = 200
  return c


def test_samplers_start_from_the_given_prior_draws():
  """Exact score of the eight-Gaussians mixture (VP SDE), 200 prior draws in 2 batches.

  The adaptive ODE (rtol = atol = 1e-5) and DPM-Solver++(2M) with 10 steps solve the same
  probability-flow ODE, so from the same x_T their samples agree per point (median gap
  below 0.2; measured 0.10: the 10-step solver's error on these narrow modes plus the ODE
  sampler's final denoising step); paired with another point's draw (the batch rolled by
  one) they are a mode apart (median gap above 0.5: neighbouring modes are 1.5 apart). PC adds noise, so its samples follow x_T
  only loosely, but a second run with the same key and x_T repeats it exactly.
  """
  config = _config()
  sde = sde_lib.get_sde(config)
  model_fn = visualize.gaussian_mixture_model_fn(sde, *visualize.toy_mixture("eight_gaussians"))
  x_T = np.asarray(sde.prior_sampling(jax.random.PRNGKey(0), (200, 2)))
  key = jax.random.PRNGKey(1)
  x_ode, nfe_ode = demo.sample_from_prior(config, sde, model_fn, key, x_T, "ode")
  x_fast, nfe_fast = demo.sample_from_prior(config, sde, model_fn, key, x_T, "fast")
  assert x_ode.shape == x_fast.shape == (200, 2) and nfe_fast == 10 and nfe_ode > 10
  gap = np.linalg.norm(x_ode - x_fast, axis=1)
  rolled = np.linalg.norm(x_ode - np.roll(x_fast, 1, axis=0), axis=1)
  assert np.median(gap) < 0.2, np.median(gap)
  assert np.median(rolled) > 0.5, (np.median(rolled), np.median(gap))
  x_pc, nfe_pc = demo.sample_from_prior(config, sde, model_fn, key, x_T, "pc")
  x_pc2, _ = demo.sample_from_prior(config, sde, model_fn, key, x_T, "pc")
  assert nfe_pc == 2 * 100
  np.testing.assert_array_equal(x_pc, x_pc2)


def test_demo_end_to_end_tiny(tmp_path, capsys):
  """20 training steps of a small MLP: the summary carries the three samplers' NFE and
  sliced Wasserstein distances (finite), the report names the fast sampler, and the
  samples plot is written. (Quality is tested in test_cli with a trained model.)"""
  c = _config()
  c.model.nf, c.model.num_layers = 32, 2
  c.training.n_iters = 20
  c.training.batch_size = 128
  c.training.n_jitted_steps = 10
  c.training.log_freq = 10
  c.training.snapshot_freq = 20
  c.training.snapshot_freq_for_preemption = 0
  c.optim.warmup = 5
  c.eval.num_eval_points = 50
  summary = demo.run_demo(c, str(tmp_path))
  assert summary["fast_nfe"] == 10 and summary["pc_nfe"] == 200 and summary["ode_nfe"] > 10
  assert summary["fast_sampler"] == "dpm_solver++ 10 steps"
  for m in demo.SAMPLERS:
    assert np.isfinite(summary[f"sw_{m}_vs_data"])
  out = os.path.dirname(summary["plot_samples"])
  assert os.path.dirname(out) == os.path.abspath(tmp_path)
  assert os.path.basename(out).startswith("demo-")  # keyed: common.io.result_dir
  with open(os.path.join(out, "demo_summary.json")) as f:
    assert json.load(f)["fast_nfe"] == 10
  with open(summary["plot_samples"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "dpm_solver++ 10 steps" in capsys.readouterr().out
