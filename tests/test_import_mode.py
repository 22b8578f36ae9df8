"""`--mode import` (modes/import_checkpoint.py): a released-format checkpoint becomes this
library's checkpoint, and `--mode sample` / `--mode eval` run on it unchanged.

The files are written by the tests in each real format (flax msgpack of a score_sde train
state; the torch.save zip of score_sde_pytorch's {'model', 'ema', 'optimizer', 'step'},
via models/pth.py), from a tiny DDPM++ on 8x8 digits whose every variable holds a random
value (tests/random_params.py), so a misplaced or uninitialised tensor shows. The restored
network's output must equal the writer's to 1e-6 relative (same float32 values, same code). The
non-EMA weights in the files differ from the EMA ones: importing those fails the test.
"""
import collections
import glob
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

from models import pth, score_sde_import as ssi
from random_params import random_net
from sde_lib import UserError
from training.restore import restore_model
from training import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(nf=8):
  from configs.tiny import shrink
  from configs.vp.digits_ddpmpp_small import get_config
  config = shrink(get_config())
  config.model.nf = nf
  config.model.num_scales = 40  # PC steps (VP: beta_max / N < 1 keeps the chain defined)
  config.sampling.corrector = "none"
  config.eval.num_samples = 4
  config.eval.batch_size = 4
  config.eval.max_batches = 1
  config.eval.bpd_num_repeats = 1
  config.eval.enable_loss = False
  config.eval.rtol = 1e-2
  config.eval.atol = 1e-2
  return config


def _plus_one(tree):
  return jax.tree.map(lambda v: np.asarray(v) + np.float32(1.0), tree)


def write_msgpack(path, net):
  """score_sde's checkpoint_N: the whole train state, the network in params_ema."""
  ema = ssi.export_linen_params(net)
  state = {"step": 3, "optimizer": {"target": _plus_one(ema), "state": {"step": 3}},
           "lr": 2e-4, "model_state": {}, "ema_rate": 0.999, "params_ema": ema,
           "rng": np.zeros(2, np.uint32)}
  pathlib.Path(path).write_bytes(serialization.msgpack_serialize(state))


def write_pth(path, net, extra=None):
  """score_sde_pytorch's checkpoint_N.pth: raw weights in 'model', EMA in 'ema'."""
  sd, shadow = ssi.export_torch_state(net)
  model = collections.OrderedDict(("module." + k, v + np.float32(1.0)) for k, v in sd.items())
  obj = {"optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}, "model": model,
         "ema": {"decay": 0.999, "num_updates": 3, "shadow_params": shadow}, "step": 3}
  obj.update(extra or {})
  pth.save_pth(path, obj)


WRITERS = {"msgpack": ("checkpoint_3", write_msgpack),
           "pth": ("checkpoint_3.pth", write_pth)}


@pytest.fixture(scope="module")
def source():
  config = _config()
  return config, random_net(config)


def _inputs(config):
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1))
  return x, jnp.array([12.5, 700.0])


# One compiled forward for the writer's and the restored networks (eagerly, each
# operation of the first call compiles on its own).
_forward = nnx.jit(lambda net, x, labels: net(x, labels, train=False))


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
def test_import_then_sample_and_eval(tmp_path, source, fmt):
  """Import writes checkpoint step 3 * snapshot_freq (score_sde's checkpoint_3) whose EMA
  network reproduces the writer's output (rtol 1e-6); sample and eval then run on the
  workdir as on a trained one (finite samples of the configured shape; a finite bits/dim
  summary over the 4 test images)."""
  from modes.eval import evaluate
  from modes.import_checkpoint import IMPORT_FILE, import_checkpoint
  from modes.sample import run as sample
  config, net = source
  config = config.copy_and_resolve_references()
  name, write = WRITERS[fmt]
  path = tmp_path / name
  write(path, net)
  config.eval.import_path = str(path)
  workdir = str(tmp_path / "run")
  import_checkpoint(config, workdir)

  step = 3 * int(config.training.snapshot_freq)
  assert checkpoint.all_steps(workdir) == [step]
  with open(os.path.join(workdir, IMPORT_FILE)) as f:
    record = json.load(f)
  assert record["format"] == fmt and record["step"] == step
  x, labels = _inputs(config)
  want = np.asarray(_forward(net, x, labels))
  for ema in (True, False):  # params and EMA both hold the file's EMA weights
    model, restored_step = restore_model(config, workdir, ema=ema)
    assert restored_step == step
    np.testing.assert_allclose(np.asarray(_forward(model, x, labels)), want,
                               rtol=1e-6, atol=1e-6 * np.abs(want).max())

  npz = sample(config, workdir)
  with np.load(npz) as d:
    samples = d["samples"]
  assert samples.shape == (4, 8, 8, 1) and np.all(np.isfinite(samples))
  summary = evaluate(config, workdir)
  assert summary["step"] == step and summary["n"] == 4
  assert np.isfinite(summary["mean_bpd"])


def _listing(directory):
  return sorted(os.path.relpath(p, directory)
                for p in glob.glob(os.path.join(directory, "**"), recursive=True))


def _assert_refused(config, path, workdir, match):
  from modes.import_checkpoint import import_checkpoint
  config = config.copy_and_resolve_references()
  config.eval.import_path = str(path)
  os.makedirs(workdir, exist_ok=True)
  before = _listing(workdir)
  with pytest.raises(UserError, match=match):
    import_checkpoint(config, str(workdir))
  assert _listing(workdir) == before  # nothing written


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
def test_truncated_file_is_refused(tmp_path, source, fmt):
  config, net = source
  name, write = WRITERS[fmt]
  full = tmp_path / "full"
  write(full, net)
  bad = tmp_path / name
  bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
  _assert_refused(config, bad, tmp_path / "run", name)


def test_disallowed_pickle_class_is_refused(tmp_path, source):
  config, net = source
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "checkpoint_3.pth"
  write_pth(path, net, extra={"optimizer": {"state": Evil()}})
  _assert_refused(config, path, tmp_path / "run", r"refusing to unpickle posix\.system")
  assert not marker.exists()


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
def test_other_architecture_is_refused(tmp_path, source, fmt):
  """A checkpoint of a 1-channel network imported with a 3-channel config: the first
  conv's shape differs. (Another nf, every shape differing, is refused through main.py
  in test_cli_import_error_is_one_line; here the config builds the fixture's shapes
  but two, so it compiles few new initialisers.)"""
  config, net = source
  name, write = WRITERS[fmt]
  path = tmp_path / name
  write(path, net)
  other = _config()
  other.data.num_channels = 3
  _assert_refused(other, path, tmp_path / "run", "shape")


def test_missing_path_and_occupied_workdir(tmp_path, source):
  config, net = source
  _assert_refused(config, "", tmp_path / "run", "import_path")
  _assert_refused(config, tmp_path / "checkpoint_404", tmp_path / "run", "checkpoint_404")
  path = tmp_path / "checkpoint_3"
  write_msgpack(path, net)
  from modes.import_checkpoint import import_checkpoint
  config = config.copy_and_resolve_references()
  config.eval.import_path = str(path)
  import_checkpoint(config, str(tmp_path / "run"))
  _assert_refused(config, path, tmp_path / "run", "already holds checkpoints")


def test_cli_import_error_is_one_line(tmp_path, source):
  """Through main.py: an architecture mismatch is one line on stderr, exit code 2, and
  the workdir stays empty."""
  config, net = source
  path = tmp_path / "checkpoint_3"
  write_msgpack(path, net)
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--mode", "import",
       "--config", os.path.join(REPO, "configs", "tiny.py") + ":"
       + os.path.join(REPO, "configs", "vp", "digits_ddpmpp_small.py"),
       "--workdir", str(workdir), "--config.model.nf=16",
       f"--config.eval.import_path={path}", "--compilation_cache_dir="],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "shape" in lines[0] and "checkpoint_3" in lines[0]
  assert not workdir.exists() or _listing(workdir) == ["."]
