"""Fault injection on tiny toy runs: each fault a user can cause or suffer,
and the outcome the code promises.

* corrupt / truncated newest checkpoint: restore falls back to the newest intact one
  with a message naming the damaged path; a resumed run then ends BITWISE equal to an
  uninterrupted one; with no intact checkpoint: one CheckpointError (exit 2, one line);
  never NaN samples.
* a diverging run: no checkpoint with a non-finite leaf is ever saved.
* changed eval / sample settings: a new result directory, the old one byte-for-byte
  untouched; an empty evaluation set is an error and replaces nothing.
* metrics.jsonl after a kill: records past the restored step and a torn last line are
  dropped on resume.
* bad config values (items 5-6): one UserError naming the field, nothing saved changed;
  through main.py: one line on stderr, exit 2.
* a checkpoint written before the networks moved under `backbone` is migrated: restored
  values equal the fresh state of the same seed exactly.
* kill -9 during sampling and bits/dim evaluation: the rerun's results equal an
  uninterrupted run's exactly.

Exact equality (assert_array_equal) is used where the code promises determinism (same
keys, same CPU, same compiled programs); tiny networks (MLP nf=16, one hidden layer),
batches of 16-64 and runs of 20 steps keep the module at about a minute of CPU.
"""
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import sde_lib
from configs.default_toy import get_default_configs
from common.io import result_dir, write_json
from training.restore import restore_model
from training import checkpoint, loop
from training.state import create_train_state

from fault_config import get_config as _config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 20-step run with checkpoints at 5, 10, 15, 20, and its final state."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  state = loop.train(_config(), workdir)
  return workdir, state


def _copy(workdir, tmp_path, name="run"):
  dst = str(tmp_path / name)
  shutil.copytree(workdir, dst)
  return dst


def _largest_file(step_dir):
  """The largest array-data file of a step (orbax's OCDBT data files under .../d/)."""
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                recursive=True) if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _tree_hash(directory):
  h = hashlib.sha256()
  for f in sorted(glob.glob(os.path.join(directory, "**", "*"), recursive=True)):
    if os.path.isfile(f):
      h.update(f.encode())
      with open(f, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _assert_states_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------
# Checkpoint integrity (items 2-4).

def test_every_saved_step_has_checksums_that_verify(trained):
  workdir, _ = trained
  assert checkpoint.all_steps(workdir) == [5, 10, 15, 20]
  for step in checkpoint.all_steps(workdir):
    d = checkpoint.step_dir(checkpoint.checkpoint_dir(workdir), step)
    assert os.path.exists(os.path.join(d, checkpoint.MANIFEST_FILE))
    assert checkpoint.verify_checksums(d) is None


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(trained, tmp_path,
                                                                  damage, caplog):
  """2000 bytes overwritten in the newest checkpoint's largest file (size kept), or the
  file cut in half: sampling uses step 15 and says which path is damaged; training
  resumes from 15, sets the damaged step aside and ends bitwise equal to the
  uninterrupted run."""
  workdir, reference = trained
  run = _copy(workdir, tmp_path)
  target = _largest_file(checkpoint.step_dir(checkpoint.checkpoint_dir(run), 20))
  size = os.path.getsize(target)
  with open(target, "r+b") as f:
    if damage == "overwrite":
      f.seek(max(0, size // 2 - 1000))
      f.write(np.random.default_rng(0).bytes(min(2000, size)))
    else:
      f.truncate(size // 2)
  config = _config()
  _, step = restore_model(config, run)
  assert step == 15
  assert any(os.path.join(run, "checkpoints", "20") in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  final = loop.train(config, run)
  _assert_states_equal(final, reference)
  assert os.path.isdir(os.path.join(run, loop.DAMAGED_SUBDIR, "20"))
  assert checkpoint.all_steps(run) == [5, 10, 15, 20]


def test_no_intact_checkpoint_is_one_line_exit_2_and_no_samples(trained, tmp_path):
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  for step in checkpoint.all_steps(run):
    target = _largest_file(checkpoint.step_dir(checkpoint.checkpoint_dir(run), step))
    with open(target, "r+b") as f:
      f.seek(10)
      f.write(b"\xb8" * 64)
  with pytest.raises(checkpoint.CheckpointError, match=r"no intact checkpoint.*checkpoints/5\b"):
    restore_model(_config(), run)
  r = _main("--mode", "sample", workdir=run)
  assert r.returncode == 2, r.stderr
  # One error line naming every damaged path, and the problems are not also logged.
  errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 1 and errors[0].startswith("error: no intact checkpoint"), r.stderr
  assert errors[0].count("checkpoints/") == 4 and "Traceback" not in r.stderr
  assert r.stderr.count("checksum") == 4, r.stderr
  assert not os.path.exists(os.path.join(run, "samples"))


def test_non_finite_state_is_never_saved(tmp_path):
  """save() refuses NaN optimizer moments; a diverging run (lr = 1e8, a save every step)
  stops with an error, and every checkpoint it left restores finite."""
  config = _config(n_iters=30, n_jitted_steps=1, snapshot_freq_for_preemption=1)
  state = create_train_state(config)
  bad = state.replace(opt_state=jax.tree.map(lambda x: x * np.nan
                                             if np.issubdtype(x.dtype, np.floating) else x,
                                             state.opt_state))
  manager = checkpoint.make_manager(config, str(tmp_path / "direct"))
  with pytest.raises(FloatingPointError, match="optimizer state"):
    checkpoint.save(manager, bad)
  manager.close()
  assert checkpoint.all_steps(str(tmp_path / "direct")) == []

  config.optim.lr = 1e8
  config.optim.grad_clip = -1.0
  workdir = str(tmp_path / "diverge")
  with pytest.raises(FloatingPointError):
    loop.train(config, workdir)
  for step in checkpoint.all_steps(workdir):
    restored = checkpoint.restore_state(config, workdir, step=step)
    assert not checkpoint.non_finite_parts(restored), step


def test_changed_model_size_is_one_user_error_and_changes_nothing(trained, tmp_path):
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  before = _tree_hash(run)
  config = _config(n_iters=40)
  config.model.nf = 32
  # The workdir's record names the field (training/run_record.py).
  with pytest.raises(sde_lib.UserError, match=r"config.model.nf: trained with 16, given 32"):
    loop.train(config, run)
  assert _tree_hash(run) == before


def test_checkpoint_from_before_the_backbone_level_is_migrated(tmp_path):
  """tests/data/pre_backbone_checkpoint was saved by the code before models/precond.py
  (params without `backbone`): it restores, every leaf equal to the fresh state of the
  same config and seed (which it was)."""
  run = str(tmp_path / "old")
  shutil.copytree(os.path.join(TESTS_DIR, "data", "pre_backbone_checkpoint"), run,
                  ignore=shutil.ignore_patterns("README.md"))
  config = get_default_configs()
  config.model.nf = 16
  config.model.num_layers = 1
  # It predates checksum files: restored only when accepted explicitly.
  with pytest.raises(checkpoint.CheckpointError, match="--accept_unverified_checkpoint"):
    checkpoint.restore_state(config, run)
  checkpoint.accept_unverified(True)
  try:
    restored = checkpoint.restore_state(config, run)
  finally:
    checkpoint.accept_unverified(False)
  _assert_states_equal(restored, create_train_state(config))


# ---------------------------------------------------------------------------------------
# Settings-keyed results (item 1).

def test_changed_sample_settings_make_a_new_result(trained, tmp_path):
  from modes.sample import run as sample
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  config = _config()
  first = sample(config, run)
  with open(first, "rb") as f:
    first_bytes = f.read()
  assert sample(config, run) == first  # same settings, same place
  config.eval.num_samples = 24
  second = sample(config, run)
  assert os.path.dirname(second) != os.path.dirname(first)
  with np.load(second) as d:
    assert d["samples"].shape == (24, 2)
  with open(first, "rb") as f:
    assert f.read() == first_bytes
  with open(os.path.join(os.path.dirname(second), "manifest.json")) as f:
    assert json.load(f)["settings"]["num_samples"] == 24


def test_changed_bpd_settings_make_a_new_result_and_empty_replaces_nothing(trained,
                                                                           tmp_path):
  from modes.eval import evaluate
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  config = _config()
  config.eval.enable_sampling = False
  a = evaluate(config, run)
  assert a["n"] == 16
  (first,) = glob.glob(os.path.join(run, "eval", "bpd_step20-*"))
  before = _tree_hash(first)
  config.eval.num_eval_points = 32
  b = evaluate(config, run)
  assert b["n"] == 32
  assert len(glob.glob(os.path.join(run, "eval", "bpd_step20-*"))) == 2
  assert _tree_hash(first) == before
  config.eval.num_eval_points = 0
  with pytest.raises(sde_lib.UserError, match="config.eval.num_eval_points = 0"):
    evaluate(config, run)
  assert _tree_hash(first) == before


def test_result_dir_refuses_a_manifest_with_other_settings(tmp_path):
  d = result_dir(str(tmp_path), "samples/x", {"n": 1})
  assert result_dir(str(tmp_path), "samples/x", {"n": 1}) == d
  assert result_dir(str(tmp_path), "samples/x", {"n": 2}) != d
  write_json(os.path.join(d, "manifest.json"), {"kind": "samples/x", "settings": {"n": 3}})
  with pytest.raises(sde_lib.UserError, match="other settings"):
    result_dir(str(tmp_path), "samples/x", {"n": 1})


# ---------------------------------------------------------------------------------------
# metrics.jsonl (item 7) and TensorBoard (item 10).

def test_metrics_after_kill_drop_later_records_and_a_torn_line(trained, tmp_path):
  """A run killed after logging step 25 (its last checkpoint 20) and in the middle of a
  line: the resumed run to 30 logs each step once, in order."""
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  path = os.path.join(run, loop.METRICS_FILE)
  with open(path, "a") as f:
    f.write(json.dumps({"step": 25, "loss": 1.0}) + "\n")
    f.write('{"step": 30, "lo')
  loop.train(_config(n_iters=30), run)
  with open(path) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [5, 10, 15, 20, 25, 30]
  assert os.path.getsize(os.path.join(run, loop.LOSS_CURVE_FILE)) > 1000
  events = glob.glob(os.path.join(run, loop.TENSORBOARD_SUBDIR, "events.out.tfevents.*"))
  if _has_tensorboardx():
    assert events


def _has_tensorboardx():
  try:
    import tensorboardX  # noqa: F401
    return True
  except ImportError:
    return False


# ---------------------------------------------------------------------------------------
# Validation (items 5-6).

@pytest.mark.parametrize("field, value", [
    ("training.batch_size", 0), ("training.batch_size", -4), ("training.n_iters", -5),
    ("model.ema_rate", 2.0), ("model.ema_rate", 1.0), ("training.log_freq", 0)])
def test_bad_training_values_name_the_field_and_change_nothing(trained, tmp_path, field,
                                                               value):
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  before = _tree_hash(run)
  config = _config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(sde_lib.UserError, match=rf"config\.{field} = {value}"):
    loop.train(config, run)
  assert _tree_hash(run) == before


def test_bad_sample_and_eval_values_name_the_field(trained, tmp_path):
  from modes.eval import evaluate
  from modes.sample import run as sample
  workdir, _ = trained
  run = _copy(workdir, tmp_path)
  before = _tree_hash(run)
  config = _config()
  config.eval.num_samples = 0
  with pytest.raises(sde_lib.UserError, match=r"config\.eval\.num_samples = 0"):
    sample(config, run)
  with pytest.raises(sde_lib.UserError, match=r"config\.eval\.num_samples = 0"):
    evaluate(config, run)
  assert _tree_hash(run) == before


def _main(*args, workdir):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--config",
       os.path.join(TESTS_DIR, "fault_config.py"), "--workdir", workdir, *args],
      capture_output=True, text=True, cwd=REPO, timeout=300)


def test_bad_values_through_main_are_one_line_exit_2(tmp_path):
  for args, text in [(["--config.training.batch_size=0"], "config.training.batch_size = 0"),
                     (["--config.model.ema_rate=2.0"], "config.model.ema_rate = 2.0")]:
    r = _main(*args, workdir=str(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints", "0"))


# ---------------------------------------------------------------------------------------
# kill -9 during sampling and evaluation (item 8 of the tests).

_KILL_SCRIPT = """
import sys, os
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from fault_config import get_config
config = get_config()
config.eval.update({eval_update!r})
config.eval.enable_sampling = False
from modes.{module} import {fn}
{fn}(config, {workdir!r})
"""


@pytest.mark.parametrize("mode", ["eval", "sample"])
def test_kill_9_during_eval_or_sampling_then_rerun_equals_uninterrupted(trained,
                                                                        tmp_path, mode):
  """SIGKILL at a random time (seeded) during bits/dim over 8 batches or while sampling;
  the rerun's result files equal an uninterrupted run's exactly, and a summary or sample
  file exists only whole (a kill after the run's last write, which a fast machine
  reaches within the delay, leaves the finished file; measured once on 2 idle cores)."""
  workdir, _ = trained
  run, ref = _copy(workdir, tmp_path, "run"), _copy(workdir, tmp_path, "ref")
  eval_update = {"num_eval_points": 128, "num_samples": 64, "batch_size": 16}
  module, fn = (("eval", "run") if mode == "eval" else ("sample", "run"))
  script = _KILL_SCRIPT.format(repo=REPO, tests=TESTS_DIR, eval_update=eval_update,
                               module=module, fn=fn, workdir=run)
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  delay = np.random.default_rng(0).uniform(4.0, 8.0)
  try:
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  pattern = ("eval/bpd_step20-*/bpd_summary.json" if mode == "eval"
             else "samples/ode_step20-*/samples.npz")
  if proc.returncode == -signal.SIGKILL:
    # Nothing partial reported: a result file is either absent or whole (written to a
    # temporary name and renamed), the latter when the kill came after the run's work.
    for path in glob.glob(os.path.join(run, pattern)):
      if mode == "eval":
        with open(path) as f:
          json.load(f)
      else:
        with np.load(path) as d:
          assert d["samples"].shape[0] == eval_update["num_samples"]
  config = _config()
  config.eval.update(eval_update)
  config.eval.enable_sampling = False
  from modes.eval import evaluate
  from modes.sample import run as sample
  go = evaluate if mode == "eval" else sample
  go(config, run)
  go(config, ref)
  (a,) = glob.glob(os.path.join(run, pattern))
  (b,) = glob.glob(os.path.join(ref, pattern))
  if mode == "eval":
    with open(a) as fa, open(b) as fb:
      assert json.load(fa) == json.load(fb)
  else:
    with np.load(a) as da, np.load(b) as db:
      np.testing.assert_array_equal(da["samples"], db["samples"])


# ---------------------------------------------------------------------------------------
# Log noise (item 8): toy scatter axes.

def test_scatter_axes_fit_the_data_and_count_hidden_points(tmp_path):
  from evaluation import plots
  x = np.array([[0.0, 0.0], [5.0, -1.0], [-2.0, 7.0], [np.nan, 0.0]])
  lim = plots.scatter_limit({"a": x, "b": x[:2]})
  assert lim == pytest.approx(7.0 * 1.05)
  assert plots.outside(x, lim) == 1  # only the NaN row
  assert plots.outside(x, 3.0) == 3  # the two far points and the NaN row
  assert os.path.getsize(plots.scatter({"a": x}, str(tmp_path / "s.png"), lim=3.0)) > 1000


# ---------------------------------------------------------------------------------------
# Multi-host (item 9): what one host can test.

def test_unshared_workdir_is_a_clear_error(tmp_path):
  """Two simulated processes: on a shared directory both see both markers; on two
  private directories (the workdir is not shared) process 0 is told which process it
  cannot see."""
  shared = str(tmp_path / "shared")
  os.makedirs(os.path.join(shared, ".processes"))
  with open(os.path.join(shared, ".processes", "1"), "w") as f:  # process 1's marker
    f.write("1")
  loop.check_shared_workdir(shared, 0, 2, barrier=lambda name: None)
  with pytest.raises(loop.WorkdirError, match=r"not on a filesystem every process sees.*1"):
    loop.check_shared_workdir(str(tmp_path / "private"), 0, 2, barrier=lambda name: None)
