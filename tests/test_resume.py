"""Checkpoint and resume: a run that is stopped (or killed with SIGKILL) and rerun ends
BITWISE equal, on CPU, to an uninterrupted run: step, parameters, optimizer state, EMA,
PRNG key, and the host data iterator's position. A NaN stops training with an error
naming the step and leaves the last good checkpoint as the latest.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from configs.default_toy import get_default_configs
from training.restore import restore_model
from training import checkpoint, loop

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)


def _config(n_iters, **training):
  config = get_default_configs()
  config.data.dataset = "eight_gaussians"
  config.model.nf = 32
  config.model.num_layers = 2
  config.model.embedding_dim = 16
  config.model.ema_rate = 0.9
  config.training.update(dict(
      batch_size=64, n_iters=n_iters, n_jitted_steps=10, log_freq=20,
      snapshot_freq_for_preemption=20, snapshot_freq=40, keep_checkpoints=2))
  config.training.update(training)
  config.optim.warmup = 5
  return config


class _ArraySource:
  """A host iterator of (64, 2) batches in [0, 1]; batch i depends only on i, and batch
  `nan_at` is NaN."""

  def __init__(self, nan_at=None):
    self.position = 0
    self.nan_at = nan_at

  def __next__(self):
    batch = np.random.default_rng(self.position).uniform(size=(64, 2)).astype(np.float32)
    if self.position == self.nan_at:
      batch[3, 1] = np.nan
    self.position += 1
    return batch

  def state(self):
    return {"position": self.position}

  def restore(self, state):
    self.position = int(state["position"])


def _assert_bitwise_equal(a, b):
  assert int(a.step) == int(b.step)
  for name in ("params", "model_state", "opt_state", "ema_params", "key"):
    leaves_a = jax.tree.leaves(getattr(a, name))
    leaves_b = jax.tree.leaves(getattr(b, name))
    assert len(leaves_a) == len(leaves_b), name
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_stop_and_rerun_with_more_steps_is_bitwise_equal(tmp_path):
  # Host data: the iterator's position must come back with the state. 35 is off the
  # n_jitted_steps grid: the rerun first catches up to 40, as the reference did.
  source = _ArraySource()
  reference = loop.train(_config(60), str(tmp_path / "ref"), data_source=source)
  assert source.position == 60

  stopped = _ArraySource()
  first = loop.train(_config(35), str(tmp_path / "run"), data_source=stopped)
  assert int(first.step) == 35 and stopped.position == 35
  assert checkpoint.all_steps(str(tmp_path / "run")) == [20, 35]
  resumed_source = _ArraySource()  # a fresh process would start at position 0
  final = loop.train(_config(60), str(tmp_path / "run"), data_source=resumed_source)
  assert resumed_source.position == 60
  _assert_bitwise_equal(final, reference)
  # Kept: the last 2, and the multiples of snapshot_freq = 40.
  assert checkpoint.all_steps(str(tmp_path / "run")) == [40, 60]


_KILLED_RUN = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from test_resume import _config
    from training import loop
    loop.train(_config(10**7), {workdir!r})
""")


def test_sigkill_mid_run_then_rerun_is_bitwise_equal(tmp_path):
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILLED_RUN.format(repo=REPO, tests=TESTS_DIR,
                                                workdir=workdir)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 120
    # orbax renames a finished save into <step>/ in one move: its presence means the
    # checkpoint is complete.
    while not checkpoint.all_steps(workdir):
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      assert time.time() < deadline, "no checkpoint within 120 s"
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(checkpoint.all_steps(workdir))
  n_iters = killed_at + 20

  final = loop.train(_config(n_iters), workdir)
  reference = loop.train(_config(n_iters), str(tmp_path / "ref"))
  _assert_bitwise_equal(final, reference)
  model, step = restore_model(_config(n_iters), workdir)
  assert step == n_iters
  for x, y in zip(jax.tree.leaves(model), jax.tree.leaves(reference.ema_params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(loop.NonFiniteLossError, match=r"nan at step 47\b.*step 40"):
    loop.train(_config(100), workdir, data_source=_ArraySource(nan_at=47))
  assert checkpoint.all_steps(workdir) == [20, 40]
  state = checkpoint.restore_state(_config(100), workdir)
  assert int(state.step) == 40
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_divergence_with_a_huge_learning_rate_is_caught(tmp_path):
  config = _config(200)
  config.optim.lr = 1e30
  config.optim.warmup = 0
  config.optim.grad_clip = -1.0
  with pytest.raises(FloatingPointError, match=r"non-finite loss (nan|inf|-inf) at step \d+"):
    loop.train(config, str(tmp_path))
  for step in checkpoint.all_steps(str(tmp_path)):
    state = checkpoint.restore_state(config, str(tmp_path), step=step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
