"""Classifier guidance from the command line: `--mode train`, `--mode
train_classifier`, then `--mode sample` with config.sampling.task = "class" and
config.sampling.classifier_scale > 0 (modes/controlled_sample.py), on the toy
config configs/toy/two_gaussians_vpsde_classifier.py (VP SDE; modes m_0 = (-2, 0),
m_1 = (+2, 0), std 0.3; the classifier's label 1 is the mode at x_1 > 0).

The modes run in-process through main.py's MODES table (as tests/test_controlled_sampling.py
does), once through `python main.py` itself. The score model (MLP, 300 steps) and the
classifier (MLP, 300 steps) are trained once for the module. Sampling: PC with reverse
diffusion, no corrector, 200 steps, 400 samples, labels 1, 0, 1, 0, ... (class_labels =
"1,0").

What is measured: the rate at which a sample lies in the half-plane of its requested
component (x_1 > 0 for label 1, x_1 < 0 for label 0). Without guidance the labels are
independent of the samples, so the rate is 1/2 whatever the model's balance between the
modes (binomial sd 0.025 at n = 400); measured 0.502 (plain `--mode sample`: an
unconditional model at classifier_scale = 0). With classifier_scale = 1 it was 0.998
in-process and 0.998 through main.py. The test asserts |rate - 0.5| < 0.1 unguided (4
sd) and > 0.9 guided (16 sd above 1/2: it cannot pass by chance).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs.toy.two_gaussians_vpsde_classifier import get_config
from common.errors import MissingFileError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = "configs/toy/two_gaussians_vpsde_classifier.py"
N_SAMPLES = 400
NUM_SCALES = 200  # sampler steps
# The settings of the sampling runs, as config fields (also passed to main.py).
SAMPLING = {"sampling.task": "class", "sampling.class_labels": "1,0",
            "sampling.corrector": "none", "model.num_scales": NUM_SCALES,
            "eval.num_samples": N_SAMPLES, "eval.batch_size": N_SAMPLES}


def _main_mode(mode: str):
  """The function main.py runs for --mode `mode` (its MODES table)."""
  import main
  return main.MODES[mode]


def _config(**sampling_overrides):
  """The config file with short training runs and the sampling settings above."""
  c = get_config()
  c.training.n_iters = 300
  c.training.n_jitted_steps = 100
  c.training.snapshot_freq = 300
  c.training.snapshot_freq_for_preemption = 300
  c.classifier.training.n_iters = 300
  c.classifier.training.batch_size = 256
  c.classifier.training.snapshot_freq = 300
  c.classifier.training.snapshot_freq_for_preemption = 300
  for field, value in {**SAMPLING, **sampling_overrides}.items():
    section, name = field.split(".")
    c[section][name] = value
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """Score model and classifier, each trained 300 steps by their modes."""
  path = str(tmp_path_factory.mktemp("tg_vp"))
  _main_mode("train")(_config(), path)
  _main_mode("train_classifier")(_config(), path)
  return path


def _requested_rate(path: str) -> float:
  """The share of samples on the side of their requested component (module docstring);
  the labels 1, 0, 1, 0, ... are also those of a plain run, which records none."""
  labels = np.resize([1, 0], N_SAMPLES)
  with np.load(path) as d:
    samples = d["samples"]
    if "class_labels" in d.files:
      assert np.array_equal(d["class_labels"], labels)
  assert samples.shape == (N_SAMPLES, 2) and np.all(np.isfinite(samples))
  return float(np.mean((samples[:, 0] > 0) == (labels == 1)))


def test_classifier_guidance_sends_samples_to_the_requested_component(workdir):
  """Unguided (plain `--mode sample`, task "sample": what classifier_scale = 0 means for
  this unconditional model, for which task "class" at scale 0 is refused): rate 1/2 +-
  0.1; guided (task "class", scale 1, in-process): rate > 0.9; the guided run writes its
  picture and records the classifier's step."""
  sample = _main_mode("sample")
  with pytest.raises(UserError, match="unconditional model"):
    sample(_config(**{"sampling.classifier_scale": 0.0}), workdir)
  rate0 = _requested_rate(sample(_config(**{"sampling.task": "sample"}), workdir))
  path = sample(_config(**{"sampling.classifier_scale": 1.0}), workdir)
  rate1 = _requested_rate(path)
  print(f"requested-component rate: unguided {rate0:.3f}, guided {rate1:.3f}")
  assert abs(rate0 - 0.5) < 0.1, rate0
  assert rate1 > 0.9, rate1
  assert os.path.basename(os.path.dirname(os.path.dirname(path))) == "class"
  assert os.path.getsize(path.replace(".npz", ".png")) > 1000
  with open(os.path.join(os.path.dirname(path), "manifest.json")) as f:
    assert json.load(f)["settings"]["controlled"]["classifier_step"] == 300


def test_classifier_guidance_through_main_py(workdir):
  """The same guided run as a user types it: `python main.py ... --mode sample` with the
  fields as --config overrides; exit 0 and rate > 0.9."""
  overrides = {**SAMPLING, "sampling.classifier_scale": 1.0}
  r = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--config", CONFIG_FILE,
       "--workdir", workdir, "--mode", "sample", "--compilation_cache_dir="]
      + [f"--config.{k}={v}" for k, v in overrides.items()],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  written = [line for line in r.stdout.splitlines() if line.startswith("wrote ")]
  assert len(written) == 1, r.stdout
  path = written[0].split()[1]
  rate = _requested_rate(path)
  print(f"requested-component rate through main.py: {rate:.3f}")
  assert rate > 0.9, rate


def test_classifier_guidance_without_a_trained_classifier(workdir, tmp_path):
  """classifier_scale > 0 with classifier_workdir holding no classifier: one
  MissingFileError (a UserError) naming the directory where the checkpoint was expected."""
  empty = str(tmp_path / "no_classifier_here")
  os.makedirs(empty)
  config = _config(**{"sampling.classifier_scale": 1.0,
                      "sampling.classifier_workdir": empty})
  with pytest.raises(MissingFileError, match="no classifier checkpoint in .*"
                     "no_classifier_here") as info:
    _main_mode("sample")(config, workdir)
  assert isinstance(info.value, UserError)
  assert "train_classifier" in str(info.value)
