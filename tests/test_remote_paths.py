"""Object-store workdirs (`gs://bucket/run`) in common.io, on a fake `gs://` backend: an
etils.epath backend that keeps each `gs://` object as a file under a temporary folder
(tests/fake_gcs.py; tests/test_gcs_workdir.py runs main.py on it)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import fake_gcs
from common import io as cio
from common.errors import UserError


@pytest.fixture
def fake_gs(tmp_path):
  with fake_gcs.epath_backend_for(str(tmp_path / "store")) as backend:
    yield backend


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
  assert cio.join("gs://bucket/run", "eval", "x.json") == "gs://bucket/run/eval/x.json"
  assert os.path.abspath("gs://bucket/run") != "gs://bucket/run"  # what join avoids
  monkeypatch.chdir(tmp_path)
  assert cio.join("run", "x") == str(tmp_path / "run" / "x")
  assert cio.is_remote("gs://b/r") and not cio.is_remote("run/gs:/b")


def test_json_npz_records_and_result_dirs_on_a_fake_gs_store(fake_gs):
  root = fake_gs.root
  path = cio.write_json("gs://bucket/run/a/b.json", {"x": 1})
  assert path == "gs://bucket/run/a/b.json"
  with open(os.path.join(root, "bucket/run/a/b.json")) as f:
    assert json.load(f) == {"x": 1}
  arrays = {"z": np.arange(6.0).reshape(2, 3)}
  cio.save_npz("gs://bucket/run/s.npz", **arrays)
  np.testing.assert_array_equal(np.load(os.path.join(root, "bucket/run/s.npz"))["z"],
                                arrays["z"])
  with open(os.path.join(root, "bucket/run/s.npz"), "rb") as f:
    assert cio.file_sha256("gs://bucket/run/s.npz") == hashlib.sha256(f.read()).hexdigest()
  # A block that raises writes nothing: the object never appears.
  with pytest.raises(RuntimeError):
    with cio.atomic_file("gs://bucket/run/never.json", "w") as f:
      f.write("{")
      raise RuntimeError("killed")
  assert not os.path.exists(os.path.join(root, "bucket/run/never.json"))
  # JSONL records: appended by rewriting the object; a torn last line is dropped.
  log = "gs://bucket/run/log.jsonl"
  for i in range(3):
    cio.append_record_to(log, {"batch": i, "v": i * i})
  with open(os.path.join(root, "bucket/run/log.jsonl"), "a") as f:
    f.write('{"batch": 3, "v"')
  assert cio.read_records(log, "batch") == {i: {"batch": i, "v": i * i} for i in range(3)}
  with open(os.path.join(root, "bucket/run/log.jsonl")) as f:
    assert f.read().endswith('"v": 4}\n')  # the torn line is cut from the object
  # Result directories: a URL under the workdir, its manifest compared on a rerun.
  where = cio.result_dir("gs://bucket/run", "eval", {"step": 3, "n": 8})
  assert where.startswith("gs://bucket/run/eval-")
  assert os.path.isfile(os.path.join(root, where[len("gs://"):], cio.MANIFEST_FILE))
  assert cio.result_dir("gs://bucket/run", "eval", {"step": 3, "n": 8}) == where
  assert cio.result_path("gs://bucket/run", "eval", {"step": 3, "n": 8}) == where
  with pytest.raises(UserError, match="other settings"):
    cio.result_dir("gs://bucket/run", "eval", {"step": 3, "n": 8},
                   manifest_extra={"changed": True})
  # Nothing went through os.path as './gs:/...'.
  assert not os.path.exists("gs:")
  assert all(p.startswith("gs://bucket/") for p in fake_gs.seen)


def test_checkpoint_checksums_on_a_fake_gs_store(fake_gs):
  from training import checkpoint
  workdir = "gs://bucket/run"
  directory = checkpoint.checkpoint_dir(workdir)
  assert directory == "gs://bucket/run/checkpoints"
  step = checkpoint.step_dir(directory, 3)
  local = os.path.join(fake_gs.root, "bucket/run/checkpoints/3")
  os.makedirs(os.path.join(local, "state"))
  payload = {"state/a.bin": bytes(range(256)) * 4, "data/pos.json": b'{"i": 7}'}
  for rel, data in payload.items():
    os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
    with open(os.path.join(local, rel), "wb") as f:
      f.write(data)
  # orbax's commit-time bookkeeping is left out of the manifest.
  with open(os.path.join(local, "_CHECKPOINT_METADATA"), "w") as f:
    f.write("{}")
  # On gs:// orbax writes the step in place and marks it committed with this file (no
  # rename); a step without it is not listed.
  assert checkpoint.all_steps(workdir) == []
  with open(os.path.join(local, "commit_success.txt"), "w") as f:
    f.write("committed")
  assert not checkpoint.is_verified(step)
  assert checkpoint.write_manifest(step) == step + "/" + checkpoint.MANIFEST_FILE
  with open(os.path.join(local, checkpoint.MANIFEST_FILE)) as f:
    manifest = json.load(f)
  assert sorted(manifest) == sorted(payload)
  assert manifest["state/a.bin"] == {"sha256": hashlib.sha256(payload["state/a.bin"])
                                     .hexdigest(), "size": 1024}
  assert checkpoint.is_verified(step) and checkpoint.verify_checksums(step) is None
  assert checkpoint.content_digest(workdir, 3) == cio.file_sha256(
      step + "/" + checkpoint.MANIFEST_FILE)
  assert checkpoint.all_steps(workdir) == [3]
  with open(os.path.join(local, "state/a.bin"), "r+b") as f:
    f.seek(100)
    f.write(b"\xff")
  assert checkpoint.verify_checksums(step) == (
      f"{step}/state/a.bin does not match its saved sha256 checksum")
  os.remove(os.path.join(local, "data/pos.json"))
  assert checkpoint.verify_checksums(step) == f"{step}/data/pos.json is missing"
  assert not os.path.exists("gs:")


def test_workdir_record_metrics_and_locks_on_a_fake_gs_store(fake_gs, tmp_path,
                                                            monkeypatch):
  import ml_collections

  from common import lock
  from training import loop, run_record
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  workdir = loop.check_workdir("gs://bucket/run")
  assert workdir == "gs://bucket/run"
  assert os.path.isdir(os.path.join(fake_gs.root, "bucket/run"))
  assert os.listdir(os.path.join(fake_gs.root, "bucket/run")) == []  # the probe is gone
  # No lock on an object store, and nothing written locally for one.
  with lock.hold(workdir, "a test") as where:
    assert where == "gs://bucket/run/.lock" and not lock.is_held(workdir)
  assert lock.acquire(workdir) == "gs://bucket/run/.lock" and lock.holder(workdir) is None
  config = ml_collections.ConfigDict({"data": {"dataset": "toy"}, "model": {"nf": 4}})
  run_record.write(config, workdir, fingerprint={"dataset": "toy"})
  assert run_record.read(workdir)["config"] == config.to_dict()
  assert os.path.isfile(os.path.join(fake_gs.root, "bucket/run", run_record.RECORD_FILE))
  with pytest.raises(UserError, match="object store"):
    run_record.move_aside(workdir)
  metrics = cio.join(workdir, "metrics.jsonl")
  for step in (1, 2, 3):
    cio.append_record_to(metrics, {"step": step, "loss": 1.0 / step})
  assert [r["step"] for r in loop.repair_metrics(metrics, 2)] == [1, 2]
  assert cio.read_records(metrics, "step").keys() == {1, 2}
  assert os.listdir(tmp_path / "cwd") == []  # no ./gs:/... where the run started


def test_damaged_step_set_aside_on_a_fake_gs_store(fake_gs):
  """An object store has no rename: the step's objects are copied, then deleted."""
  from training import checkpoint
  local = os.path.join(fake_gs.root, "bucket/run/checkpoints/30")
  files = {"state/d/abc": b"\x00\x01" * 50, "commit_success.txt": b"ok", "sha256.json": b"{}"}
  for rel, data in files.items():
    os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
    with open(os.path.join(local, rel), "wb") as f:
      f.write(data)
  checkpoint.move_step("gs://bucket/run/checkpoints/30", "gs://bucket/run/damaged/30")
  assert not os.path.exists(local)
  moved = os.path.join(fake_gs.root, "bucket/run/damaged/30")
  for rel, data in files.items():
    with open(os.path.join(moved, rel), "rb") as f:
      assert f.read() == data
  assert all(p.startswith("gs://bucket/run/") for p in fake_gs.seen)


def test_tensorboard_events_and_bpd_records_on_a_fake_gs_store(fake_gs, tmp_path,
                                                                monkeypatch):
  """TensorBoard's writer (tensorboardX opens files by name) writes locally and copies
  its event files up at close; bits/dim records are appended to an object."""
  pytest.importorskip("tensorboardX")
  import jax

  from evaluation import bpd_eval
  from training import monitor
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  tb = monitor.tensorboard_writer("gs://bucket/run/tensorboard", sync_seconds=1e9)
  tb.add_scalar("loss", 1.5, 1)
  tb.flush()
  remote = os.path.join(fake_gs.root, "bucket/run/tensorboard")
  assert not os.path.exists(remote)  # not yet: at most every sync_seconds, and at close
  local = tb.local
  tb.close()
  (event,) = os.listdir(remote)
  assert event.startswith("events.out.tfevents") and not os.path.exists(local)
  with open(os.path.join(remote, event), "rb") as f:
    assert b"loss" in f.read()

  def likelihood_fn(key, model_fn, x):
    return x[:, 0], None, 10
  batches = [(i, np.full((3, 2), float(i))) for i in range(3)]
  summary = bpd_eval.run_bpd_eval(likelihood_fn, None, batches, "gs://bucket/run/bpd",
                                  jax.random.key(0), metric="bpd")
  assert summary["n"] == 9 and summary["mean_bpd"] == pytest.approx(1.0)
  with open(os.path.join(fake_gs.root, "bucket/run/bpd", bpd_eval.BATCHES_FILE)) as f:
    assert [json.loads(line)["batch"] for line in f] == [0, 1, 2]
  assert os.listdir(tmp_path / "cwd") == []


def test_classifier_folder_and_settings_on_a_fake_gs_store(fake_gs, tmp_path, monkeypatch):
  from configs.classifier import toy_classifier, with_classifier
  from configs.default_toy import get_default_configs
  from training import classifier
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  cdir = classifier.classifier_workdir("gs://bucket/run")
  assert cdir == "gs://bucket/run/classifier"
  config = with_classifier(get_default_configs(), toy_classifier(num_classes=2))
  classifier.check_settings(config, cdir)  # records them
  assert os.path.isfile(os.path.join(fake_gs.root, "bucket/run/classifier",
                                     classifier.SETTINGS_FILE))
  classifier.check_settings(config, cdir)  # the same: accepted
  config.seed += 1
  with pytest.raises(UserError):
    classifier.check_settings(config, cdir)
  assert os.listdir(tmp_path / "cwd") == []


def test_quality_chunks_resume_from_a_fake_gs_store(fake_gs, tmp_path, monkeypatch):
  """evaluation.quality's chunk files and chunks.jsonl in a gs:// folder: a run killed
  after two of four chunks resumes computing only the other two, and gathers exactly the
  features an uninterrupted run gives (a stand-in feature function, no Inception)."""
  from evaluation import quality
  from evaluation import sample_quality as sq
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  rng = np.random.default_rng(0)
  pool = rng.normal(size=(4, 5, 3))  # 4 chunks of 5 feature vectors of dimension 3
  calls = []

  def compute(i):
    calls.append(i)
    if i == 2 and len(calls) == 3:
      raise RuntimeError("killed")
    return {"pool_3": pool[i], "logits": pool[i][:, :2]}, {"n": 5}

  out = "gs://bucket/run/eval-abc"
  args = (out, 4, compute, 20, lambda i: 5, "test")
  with pytest.raises(RuntimeError, match="killed"):
    quality.run_chunks(*args)
  local = os.path.join(fake_gs.root, "bucket/run/eval-abc")
  assert set(os.listdir(local)) == {quality.CHUNKS_FILE, "chunk_00000.npz",
                                    "chunk_00001.npz"}
  done = quality.run_chunks(*args)
  assert calls == [0, 1, 2, 2, 3] and sorted(done) == [0, 1, 2, 3]
  assert quality.read_chunk_records(cio.join(out, quality.CHUNKS_FILE)) == {
      i: {"chunk": i, "n": 5} for i in range(4)}
  moments, pools, logits = quality.gather(out, 4)
  np.testing.assert_array_equal(pools, pool.reshape(20, 3))
  np.testing.assert_array_equal(logits, pool.reshape(20, 3)[:, :2])
  assert moments.count == 20
  # Moments and reference statistics read back from the store.
  sq.save_moments(cio.join(out, "m.npz"), moments)
  back = sq.load_moments(cio.join(out, "m.npz"))
  assert back.count == 20 and np.array_equal(back.outer, moments.outer)
  np.savez(os.path.join(local, "ref.npz"), pool_3=pool.reshape(20, 3))
  stats, feats, about = quality.load_reference(cio.join(out, "ref.npz"))
  np.testing.assert_allclose(stats.mu, pool.reshape(20, 3).mean(0), rtol=1e-12)
  assert feats.shape == (20, 3) and about["kind"] == "score_sde"
  with pytest.raises(UserError, match="not found"):
    sq.load_reference_stats(cio.join(out, "absent.npz"))
  assert os.listdir(tmp_path / "cwd") == []


def test_reflow_pairs_written_and_found_in_a_fake_gs_workdir(fake_gs, tmp_path,
                                                             monkeypatch):
  """training.reflow in a gs:// workdir: shards written to reflow_pairs-<key>, an
  interrupted run resumed to the same bytes as a local uninterrupted one, the folder found
  by the config's settings and the pairs loaded."""
  import jax

  import sde_lib
  from configs.toy.two_gaussians_rf import get_config
  from training.reflow import (PAIRS_SUBDIR, find_pairs_dir, generate_pairs, load_pairs,
                               reflow_settings)
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  cfg = get_config()
  sde = sde_lib.RectifiedFlow()
  fn = sde_lib.gaussian_model_fn(sde, 0.5, 0.3)
  kw = dict(num_pairs=6, shard_size=3, event_shape=(2,), solver="euler", num_steps=2)
  key = jax.random.PRNGKey(0)
  here = generate_pairs(sde, fn, key, str(tmp_path / "local"), **kw)
  remote = cio.result_dir("gs://bucket/run", PAIRS_SUBDIR, {
      "step": 5, "reflow": reflow_settings(cfg), "eps": float(cfg.sampling.eps)})
  assert remote.startswith("gs://bucket/run/reflow_pairs-")
  generate_pairs(sde, fn, key, remote, stop_after=1, **kw)
  with pytest.raises(UserError, match="1 of its 2 shards"):
    load_pairs("gs://bucket/run", cfg)
  there = generate_pairs(sde, fn, key, remote, **kw)
  assert [p.rsplit("/", 1)[1] for p in there] == ["pairs_00000.npz", "pairs_00001.npz"]
  for a, b in zip(here, there):
    with open(a, "rb") as fa, open(os.path.join(fake_gs.root, b[len("gs://"):]), "rb") as fb:
      assert fa.read() == fb.read()
  assert find_pairs_dir("gs://bucket/run", cfg) == remote
  z, x = load_pairs("gs://bucket/run", cfg)
  zl, xl = load_pairs(str(tmp_path / "local"))
  assert z.shape == (6, 2) and z.tobytes() == zl.tobytes() and x.tobytes() == xl.tobytes()
  with pytest.raises(UserError, match="other settings"):
    generate_pairs(sde, fn, key, remote, **{**kw, "shard_size": 2})
  assert os.listdir(tmp_path / "cwd") == []
