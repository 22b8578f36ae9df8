"""A `gs://` workdir end to end on a fake Google Cloud Storage (tests/fake_gcs.py): main.py
trains, resumes, evaluates and samples with --workdir gs://bucket/run, with etils.epath's
`gs://` backend and TensorStore's `gcs` driver (orbax's array data) both on one local
folder, and gives bit for bit what a local workdir gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fake_gcs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The 20-step toy run (tests/short_run_config.py), its evaluation shrunk: 200 points for
# the loss, the likelihood (rtol = atol = 1e-3) and the samples, 100 sampler steps.
CONFIG = ["--config", os.path.join(REPO, "tests", "short_run_config.py"),
          "--config.eval.batch_size=100", "--config.eval.num_eval_points=200",
          "--config.eval.num_samples=200", "--config.eval.rtol=1e-3",
          "--config.eval.atol=1e-3", "--config.model.num_scales=100"]
RUNS = [("train",), ("train", "--config.training.n_iters=30"), ("eval",), ("sample",)]


def test_tensorstore_kvstore_on_the_fake_server(tmp_path, monkeypatch):
  """The subset of the GCS JSON API that TensorStore's gcs driver uses: uploads, reads
  (whole, byte ranges, missing), generation preconditions, listing, deletion."""
  import tensorstore as ts
  with fake_gcs.serve(str(tmp_path)) as server:
    for name, value in fake_gcs.server_env(server.url).items():
      monkeypatch.setenv(name, value)
    kv = ts.KvStore.open({"driver": "gcs", "bucket": "bucket", "path": "run/"}).result()
    data = bytes(range(256)) * 3
    stamp = kv.write("a/x.bin", data).result()
    assert (tmp_path / "bucket/run/a/x.bin").read_bytes() == data
    assert kv.read("a/x.bin").result().value == data
    sub = kv.read("a/x.bin", byte_range=slice(10, 20)).result()
    assert sub.value == data[10:20]
    assert kv.read("a/missing").result().state == "missing"
    # A write conditioned on an old generation fails; on the current one it succeeds.
    kv.write("a/x.bin", b"new", if_equal=stamp.generation).result()
    stale = kv.write("a/x.bin", b"newer", if_equal=stamp.generation).result()
    assert stale.generation == b"" and kv.read("a/x.bin").result().value == b"new"
    # A file written behind the server's back (through epath) gets a new generation.
    before = kv.read("a/x.bin").result().stamp.generation
    (tmp_path / "bucket/run/a/x.bin").write_bytes(b"changed!")
    after = kv.read("a/x.bin").result()
    assert after.value == b"changed!" and after.stamp.generation != before
    kv.write("b/y", b"1").result()
    assert sorted(kv.list().result()) == [b"a/x.bin", b"b/y"]
    kv.delete_range(ts.KvStore.KeyRange("a/", "a0")).result()
    assert kv.list().result() == [b"b/y"]
    assert ("POST", "run/a/x.bin") in server.requests


def _run(script_args, *, store=None, server=None, cwd):
  # One compilation cache for all eight runs: the local runs compile nothing again.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(cwd), "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  argv = [sys.executable]
  if store is not None:  # the child's epath gs:// backend, then main.py
    argv += [os.path.join(REPO, "tests", "fake_gcs.py"), store]
    env.update(fake_gcs.server_env(server.url))
  argv += [os.path.join(REPO, "main.py"), *script_args]
  start = time.monotonic()
  r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-4000:]
  print(f"{time.monotonic() - start:5.1f} s: {' '.join(script_args[len(CONFIG):])}")
  return r


def _results(root: str) -> dict[str, str]:
  """{relative path: absolute path} of the files under root/eval and root/samples, the
  result folders without their key suffix (the key includes the checkpoint's digest, a
  hash of its files' checksums, and orbax names its data files at random), without the
  local folders' lock files (an object store has no locks)."""
  out = {}
  for sub in ("eval", "samples"):
    for folder, _, files in os.walk(os.path.join(root, sub)):
      for f in files:
        if f != ".lock":
          rel = os.path.relpath(os.path.join(folder, f), root).split("/")
          out["/".join(rel[:1] + [rel[1].rsplit("-", 1)[0]] + rel[2:])] = (
              os.path.join(folder, f))
  return out


@pytest.mark.slow
def test_gs_workdir_trains_resumes_evaluates_and_samples_like_a_local_one(tmp_path,
                                                                         monkeypatch):
  store, local, cwd = (str(tmp_path / d) for d in ("store", "local", "cwd"))
  for d in (store, os.path.join(store, "bucket"), cwd):
    os.makedirs(d)
  with fake_gcs.serve(store) as server:
    for mode, *extra in RUNS:
      _run([*CONFIG, *extra, "--workdir", "gs://bucket/run", "--mode", mode],
           store=store, server=server, cwd=cwd)
    # Nothing went to ./gs:/... where the runs started (os.path on a URL would).
    assert os.listdir(cwd) == []
    # orbax's array data went through TensorStore's gcs driver, i.e. the fake server.
    uploads = [n for m, n in server.requests if m == "POST"]
    assert any(n.startswith("run/checkpoints/30/state/") for n in uploads), uploads[:20]
    for mode, *extra in RUNS:
      _run([*CONFIG, *extra, "--workdir", local, "--mode", mode], cwd=cwd)
    remote = os.path.join(store, "bucket", "run")

    # Resumed: one checkpoint per 10 steps, the second run's metrics continue the first's.
    assert sorted(os.listdir(os.path.join(remote, "checkpoints"))) == ["10", "20", "30"]
    for name in ("metrics.jsonl", "loss_curve.png", "run_config.json"):
      assert os.path.isfile(os.path.join(remote, name)), name
    events = os.listdir(os.path.join(remote, "tensorboard"))
    assert len(events) == 2 and all(e.startswith("events.out.tfevents") for e in events)

    def metrics(root):  # without the timings
      with open(os.path.join(root, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items()
                 if k != "time" and "sec" not in k} for line in f]
    assert [r["step"] for r in metrics(remote) if "loss" in r] == [10, 20, 30]
    assert metrics(remote) == metrics(local)

    # The checkpoint restored from gs:// (through the fake server, in this process)
    # equals the local one, bit for bit: parameters, EMA, optimizer state and step.
    import jax
    from short_run_config import get_config
    config = get_config(n_iters=30)
    config.model.num_scales = 100
    for name, value in fake_gcs.server_env(server.url).items():
      monkeypatch.setenv(name, value)
    from training import checkpoint
    with fake_gcs.epath_backend_for(store):
      assert checkpoint.all_steps("gs://bucket/run") == [10, 20, 30]
      remote_state = checkpoint.restore_state(config, "gs://bucket/run")
    local_state = checkpoint.restore_state(config, local)
    remote_leaves = jax.tree.leaves(remote_state)
    local_leaves = jax.tree.leaves(local_state)
    assert len(remote_leaves) == len(local_leaves) > 0
    for a, b in zip(remote_leaves, local_leaves):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(remote_state.step) == 30

  # Evaluation and sampling: the same result folders (keyed by the same settings) with
  # the same numbers and samples.
  got, want = _results(remote), _results(local)
  assert sorted(got) == sorted(want)
  assert any(p.endswith("bpd_summary.json") for p in got)
  assert sum(p.endswith("samples.npz") for p in got) == 2
  for rel in want:
    if rel.endswith(".npz"):
      a, b = np.load(got[rel]), np.load(want[rel])
      assert sorted(a) == sorted(b)
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=rel)
    elif rel.endswith(".json"):
      with open(got[rel]) as f, open(want[rel]) as g:
        assert _without_digest(json.load(f)) == _without_digest(json.load(g)), rel
    else:  # bpd_batches.jsonl, samples.png
      with open(got[rel], "rb") as f, open(want[rel], "rb") as g:
        assert f.read() == g.read(), rel


def _without_digest(obj):
  """A result record without the checkpoint's digest (see `_results`)."""
  if isinstance(obj, dict):
    return {k: _without_digest(v) for k, v in obj.items() if k != "checkpoint_sha256"}
  return obj
