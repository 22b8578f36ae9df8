"""main.py --mode rf_eval end to end: a briefly trained toy flow, the JSON table and plot."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from configs.toy.two_gaussians_rf import get_config
from modes.rf_eval import run as evaluate_rectified_flow
from training.loop import train


def _tiny_config():
  c = get_config()
  c.model.nf = 32
  c.model.num_layers = 2
  c.training.batch_size = 128
  c.training.n_iters = 200
  c.training.n_jitted_steps = 50
  c.training.snapshot_freq = 0
  c.training.snapshot_freq_for_preemption = 10**6
  c.optim.warmup = 20
  c.model.ema_rate = 0.9
  c.eval.batch_size = 250
  c.eval.num_samples = 500
  c.eval.sw_projections = 128
  # Loose tolerances keep the adaptive row cheap; its NFE is still measured.
  c.sampling.rtol = c.sampling.atol = 1e-3
  return c


def test_rf_eval_writes_table_and_plot(tmp_path):
  config = _tiny_config()
  workdir = str(tmp_path / "rf")
  train(config, workdir)
  result = evaluate_rectified_flow(config, workdir)

  (out,) = glob.glob(os.path.join(workdir, "rf_eval-*"))  # keyed: common.io.result_dir
  with open(os.path.join(out, "rf_eval.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk["step"] == 200 and on_disk["dataset"] == "two_gaussians"
  rows = on_disk["rows"]
  assert [(r["method"], r["steps"]) for r in rows] == (
      [("euler", n) for n in (1, 2, 4, 8, 16)] + [("dopri5", None)])
  assert [r["nfe"] for r in rows[:5]] == [1, 2, 4, 8, 16]
  # dopri5 (FSAL): 1 + 6 evaluations per step, at least one step.
  assert rows[-1]["nfe"] >= 7
  sw = np.array([r["sw"] for r in rows])
  assert np.all(np.isfinite(sw)) and np.all(sw > 0)
  assert np.isfinite(on_disk["straightness"]) and on_disk["straightness"] > 0
  floor = on_disk["sw_noise_floor"]
  # n = 500: not zero, and dominated by the binomial spread of the two modes' shares
  # (sd 0.022; a point in the wrong mode moves 4 units), 0.48 at these seeds.
  assert 0 < floor < 1.0, floor
  # One Euler step of a 1-RF lands near the data mean (v(z, 1) = z - E x_0); 16 steps
  # spread the samples over both modes, much closer to the data.
  assert sw[4] < 0.6 * sw[0], sw
  for name in ("nfe_vs_sw.png", "samples.png"):
    path = os.path.join(out, name)
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rf_eval_refuses_image_data_naming_the_dataset(tmp_path):
  config = _tiny_config()
  config.data.dataset = "cifar10"
  with pytest.raises(ValueError, match="'cifar10'"):
    evaluate_rectified_flow(config, str(tmp_path))
