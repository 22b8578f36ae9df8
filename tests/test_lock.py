"""One writer per workdir (common/lock.py): a second writer stops at once with exit code
2 naming the holder; a holder killed with SIGKILL leaves no stale lock; two trainings
started together on one workdir leave exactly what one run alone leaves."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from common import lock

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)

_HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from common import lock
    with lock.hold({d!r}, "a test holder"):
      print("held", flush=True)
      time.sleep(120)
""")

_TRY = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from common import lock
    try:
      with lock.hold({d!r}, "a second writer"):
        print("took it")
    except lock.LockedError as e:
      print(e)
      sys.exit(2)
""")


def _start_holder(directory):
  p = subprocess.Popen([sys.executable, "-c", _HOLD.format(repo=REPO, d=str(directory))],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def _try(directory):
  return subprocess.run([sys.executable, "-c", _TRY.format(repo=REPO, d=str(directory))],
                        capture_output=True, text=True, timeout=60)


def test_second_writer_stops_naming_the_holder_and_kill_9_leaves_no_stale_lock(tmp_path):
  holder = _start_holder(tmp_path)
  try:
    r = _try(tmp_path)
    assert r.returncode == 2, r
    assert f"pid {holder.pid}" in r.stdout and "a test holder" in r.stdout, r.stdout
    assert "since 20" in r.stdout and "host " in r.stdout
    # In this process too: the lock is per open file, not per process tree.
    with pytest.raises(lock.LockedError, match=f"pid {holder.pid}"):
      with lock.hold(tmp_path):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  r = _try(tmp_path)
  assert r.returncode == 0 and r.stdout.strip() == "took it", r


def test_reentrant_within_a_process_and_scope_releases(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  with lock.hold(a, "outer"):
    with lock.hold(a, "inner"):  # the same process may nest (demo: train inside)
      assert lock.is_held(a)
    assert lock.is_held(a) and lock.holder(a)["what"] == "outer"
    assert _try(a).returncode == 2
  assert not lock.is_held(a) and lock.holder(a) is None
  with lock.scope():
    lock.acquire(b, "a result folder")
    assert _try(b).returncode == 2
  assert not lock.is_held(b)
  assert _try(b).returncode == 0


def test_unusable_directory_is_one_user_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(lock.UserError, match="cannot create the lock file"):
    with lock.hold(blocker / "sub"):
      pass


# ---------------------------------------------------------------------------------------
# Two trainings on one workdir, through main.py.

_TRAIN_ARGS = ["--config", "configs/default_toy.py", "--config.data.dataset=eight_gaussians",
               "--config.model.nf=16", "--config.model.num_layers=2",
               "--config.model.embedding_dim=16", "--config.training.batch_size=32",
               "--config.training.n_iters=600", "--config.training.n_jitted_steps=20",
               "--config.training.log_freq=100", "--config.training.snapshot_freq=300",
               "--config.training.snapshot_freq_for_preemption=300",
               "--config.training.eval_freq=0", "--config.training.snapshot_sampling=False",
               "--compilation_cache_dir="]


def _train_cmd(workdir):
  return [sys.executable, os.path.join(REPO, "main.py"), "--mode", "train",
          "--workdir", str(workdir), *_TRAIN_ARGS]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in records]


def _checkpoint_arrays(workdir):
  from configs.default_toy import get_default_configs
  from common.mesh import make_mesh, replicated
  from training import checkpoint
  from training.state import abstract_train_state
  import jax
  config = get_default_configs()
  config.data.dataset = "eight_gaussians"
  config.model.update(nf=16, num_layers=2, embedding_dim=16)
  config.training.batch_size = 32
  manager = checkpoint.make_manager(config, workdir, read_only=True)
  try:
    steps = list(manager.all_steps())
    out = {}
    for s in steps:
      state, _ = checkpoint.restore(manager, abstract_train_state(config), step=s,
                                    sharding=replicated(make_mesh()))
      out[s] = [np.asarray(x) for x in jax.tree.leaves(
          (state.params, state.ema_params, state.opt_state, state.key))]
  finally:
    manager.close()
  return out


def test_two_trainings_started_together_one_stops_the_other_equals_a_run_alone(tmp_path):
  shared, alone = tmp_path / "shared", tmp_path / "alone"
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  runs = [subprocess.Popen(_train_cmd(shared), cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in runs]
  codes = sorted(p.returncode for p in runs)
  assert codes == [0, 2], [(p.returncode, o[1][-2000:]) for p, o in zip(runs, outs)]
  loser = [i for i, p in enumerate(runs) if p.returncode == 2][0]
  winner = runs[1 - loser]
  err = outs[loser][1].strip().splitlines()
  assert len(err) == 1 and "Traceback" not in outs[loser][1], err
  assert f"pid {winner.pid}" in err[0] and "training on host" in err[0], err

  t0 = time.time()
  r = subprocess.run(_train_cmd(alone), cwd=REPO, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert time.time() - t0 < 600
  assert _losses(shared) == _losses(alone)
  assert [s for s, _, _ in _losses(alone)] == [100, 200, 300, 400, 500, 600]
  a, b = _checkpoint_arrays(str(shared)), _checkpoint_arrays(str(alone))
  assert sorted(a) == sorted(b) == [300, 600]
  for s in a:
    for x, y in zip(a[s], b[s]):
      np.testing.assert_array_equal(x, y)


_RESULT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from common import io
    from common.errors import UserError
    try:
      print(io.result_dir({d!r}, "eval/bpd_step{step}", {{"step": {step}}}))
    except UserError as e:
      print(e)
      sys.exit(2)
""")


def test_result_folders_one_writer_each_others_side_by_side(tmp_path):
  from common import io

  def other_process(step):
    return subprocess.run(
        [sys.executable, "-c", _RESULT.format(repo=REPO, d=str(tmp_path), step=step)],
        capture_output=True, text=True, timeout=120)

  with lock.scope():
    mine = io.result_dir(str(tmp_path), "eval/bpd_step200", {"step": 200})
    assert lock.is_held(mine)
    same = other_process(200)  # the same result: stopped, naming this process
    assert same.returncode == 2 and f"pid {os.getpid()}" in same.stdout, same
    assert "eval/bpd_step200 result" in same.stdout
    other = other_process(100)  # another checkpoint's result: side by side
    assert other.returncode == 0 and "bpd_step100-" in other.stdout, other
  assert not lock.is_held(mine)
  assert other_process(200).returncode == 0
