"""The grain input pipeline (data/grain_pipeline.py) and the random-access sources
(data/sources.py, data/array_record.py) on small files the tests write.

Reference: data.iterator.BatchIterator, the in-memory iterator. The grain pipeline is
documented to give exactly its stream, so batches are compared for bitwise equality
(flips and dequantization noise included), with 0 and 2 worker processes.
"""
from __future__ import annotations

import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("grain")
pytest.importorskip("array_record")

from common.errors import MissingFileError, UserError  # noqa: E402
from data import (array_record, cifar10, fingerprint, grain_pipeline, image_folder,  # noqa: E402
                  images, iterator, mnist, npz, sources)

RNG = np.random.default_rng(2026)


def _data(n=40, shape=(6, 6, 3), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
          rng.integers(0, 10, n).astype(np.int32))


def _config(dataset, data_dir, image_size, channels, **data):
  return ml_collections.ConfigDict({
      "data": {"dataset": dataset, "data_dir": str(data_dir), "image_size": image_size,
               "num_channels": channels, "random_flip": True,
               "uniform_dequantization": True, "source": "grain", "num_workers": 0,
               "prefetch": 2, **data},
      "training": {"batch_size": 8}, "model": {"num_classes": 0}, "seed": 11})


def _write_shards(directory, images, labels, per_shard=7, split="train"):
  os.makedirs(directory, exist_ok=True)
  n = len(images)
  starts = list(range(0, n, per_shard))
  shards = []
  for k, a in enumerate(starts):
    name = array_record.shard_name(split, k, len(starts))
    path = os.path.join(directory, name)
    count = array_record.write_shard(path, zip(images[a:a + per_shard],
                                               labels[a:a + per_shard]))
    shards.append((name, count, os.path.getsize(path)))
  meta = array_record.Metadata(split=split, image_size=images.shape[1:3],
                               channels=images.shape[3], count=n, shards=tuple(shards),
                               source={"fingerprint": "test"})
  array_record.write_metadata(directory, meta)
  return meta


# --- the stream ---------------------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_batches_as_in_memory_iterator_and_exact_resume(tmp_path, num_workers):
  """Bitwise the BatchIterator's batches (flips, and noise without workers) for each of 2
  processes, over 3 epochs; state() after 7 batches restores to exactly the next ones,
  and a state saved with another worker count (or by BatchIterator) restores too."""
  x, y = _data(40)
  _write_shards(tmp_path, x, y)
  source = array_record.ArrayRecordImages(str(tmp_path))
  for shard in ((0, 1) if num_workers == 0 else (1,)):  # workers: slow to start
    # Workers without dequantization: their uint8 batches in shared memory, k / 255 in
    # this process (the slow kill -9 test runs workers with dequantization).
    kw = dict(random_flip=True, uniform_dequantization=num_workers == 0)
    ref = iterator.BatchIterator(x, 8, 5, process_index=shard, process_count=2, **kw)
    with grain_pipeline.GrainBatches(source, 8, 5, shard_index=shard, shard_count=2,
                                     num_workers=num_workers, with_labels=True, **kw) as it:
      for _ in range(15):  # 5 batches per epoch: 3 epochs
        idx = ref.indices(ref.epoch, ref.index)
        got = next(it)
        np.testing.assert_array_equal(got["image"], next(ref))
        np.testing.assert_array_equal(got["label"], y[idx])
      saved, ref_saved = it.state(), ref.state()
      assert {k: saved[k] for k in ref_saved} == ref_saved
      expect = [next(it)["image"] for _ in range(6)]
    for state in (saved, ref_saved, {**saved, "grain": {**saved["grain"], "num_workers": 9}}):
      with grain_pipeline.GrainBatches(source, 8, 5, shard_index=shard, shard_count=2,
                                       num_workers=num_workers, with_labels=True, **kw) as it:
        it.restore(state)
        for want in expect:
          np.testing.assert_array_equal(next(it)["image"], want)


def test_two_processes_read_disjoint_shares_covering_each_epoch():
  """shard_index 0 and 1 of 2: per epoch, the index sets are disjoint and their union
  is every example (N = 48 is a multiple of B = 8, so no remainder is dropped); the
  epochs' orders differ."""
  x, y = _data(48, (2, 2, 1))
  src = sources.ArraySource(x, np.arange(48, dtype=np.int32), "f")
  its = [grain_pipeline.GrainBatches(src, 8, 3, shard_index=h, shard_count=2,
                                     with_labels=True) for h in (0, 1)]
  orders = []
  for _ in range(3):
    seen = [np.concatenate([next(it)["label"] for _ in range(6)]) for it in its]
    assert all(len(s) == 24 for s in seen)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(48))
    orders.append(np.concatenate(seen))
  assert not np.array_equal(orders[0], orders[1])
  for it in its:
    it.close()


def test_state_checks_and_bad_settings():
  x, y = _data(16)
  src = sources.ArraySource(x, y, "f")
  # Flips without dequantization (the configs' default) as well: the same batches.
  ref = iterator.BatchIterator(x, 8, 4, random_flip=True, process_index=0, process_count=1)
  with grain_pipeline.GrainBatches(src, 8, 4, random_flip=True, shard_index=0,
                                   shard_count=1) as it:
    for _ in range(6):
      np.testing.assert_array_equal(next(it), next(ref))
  it = grain_pipeline.GrainBatches(src, 8, 1, shard_index=0, shard_count=1)
  with pytest.raises(UserError, match="seed = 2"):
    it.restore({"epoch": 0, "index": 0, "seed": 2})
  with pytest.raises(UserError, match="exceeds the 16 examples"):
    grain_pipeline.GrainBatches(src, 32, 1, shard_index=0, shard_count=1)
  with pytest.raises(UserError, match="multiple of the number of hosts 3"):
    grain_pipeline.GrainBatches(src, 8, 1, shard_index=0, shard_count=3)


# --- sources --------------------------------------------------------------------------

def test_sources_equal_the_existing_readers(tmp_path):
  """Each memory-mapped or lazy source returns what the existing reader decodes."""
  # CIFAR-10 binary folder (memory-mapped) and archive (in memory).
  hwc, labels = _data(5, (32, 32, 3), seed=1)
  buf = b"".join(bytes([int(l)]) + img.transpose(2, 0, 1).tobytes()
                 for img, l in zip(hwc, labels))
  folder = tmp_path / "cifar" / cifar10.FOLDER
  folder.mkdir(parents=True)
  for name in cifar10.SPLIT_FILES["train"] + cifar10.SPLIT_FILES["test"]:
    (folder / name).write_bytes(buf)
  src = sources.CifarBinarySource(str(tmp_path / "cifar"), "train")
  ref = cifar10.read_cifar10(str(tmp_path / "cifar"), "train")
  idx = [24, 0, 7, 13]
  for a, b in zip(src.read(idx), ref):
    np.testing.assert_array_equal(a, b[idx])
  assert len(src) == 25 and src._maps is not None  # memory-mapped, not decoded whole
  # MNIST idx, plain (memory-mapped) and gzipped (in memory).
  for gz in (False, True):
    d = tmp_path / f"mnist{gz}"
    d.mkdir()
    x = RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = RNG.integers(0, 10, 6).astype(np.uint8)
    for stem, arr, code in (("train-images-idx3-ubyte", x, 3), ("train-labels-idx1-ubyte", y, 1)):
      data = struct.pack(">HBB", 0, 8, code) + b"".join(struct.pack(">I", s) for s in arr.shape)
      data += arr.tobytes()
      with (gzip.open if gz else open)(d / (stem + (".gz" if gz else "")), "wb") as f:
        f.write(data)
    src = sources.MnistSource(str(d), "train")
    ref = mnist.read_mnist(str(d), "train")
    for a, b in zip(src.read([5, 1]), ref):
      np.testing.assert_array_equal(a, b[[5, 1]])
  # npz stored (memory-mapped) and compressed (in memory).
  x, y = _data(9, (4, 5, 3))
  for save, mapped in ((np.savez, True), (np.savez_compressed, False)):
    path = str(tmp_path / f"{save.__name__}.npz")
    save(path, images=x, labels=y)
    src = sources.NpzSource(path)
    assert (src.mapped is not None) == mapped
    for a, b in zip(src.read([8, 2, 2]), npz.read_npz(path)):
      np.testing.assert_array_equal(a, b[[8, 2, 2]])
  # An image folder: decoded per read, resized as data.images does.
  d = tmp_path / "folder"
  for c in ("a", "b"):
    (d / c).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(RNG.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(
          d / c / f"{i}.png")
  src = sources.ImageFolderSource(str(d), 3, 8)
  ref = image_folder.read_image_folder(str(d), 3, 8)
  for a, b in zip(src.read([4, 0]), ref):
    np.testing.assert_array_equal(a, b[[4, 0]])


def test_get_source_picks_shards_and_checks_the_size(tmp_path):
  x, y = _data(20, (6, 6, 3))
  _write_shards(tmp_path, x, y)
  src = images.get_source(_config("LSUN", tmp_path, 6, 3), "train")
  assert isinstance(src, array_record.ArrayRecordImages)
  np.testing.assert_array_equal(src.read([19, 3])[0], x[[19, 3]])
  with pytest.raises(UserError, match=r"train.json: images are 6x6x3 but the config wants "
                                      r"8x8x3.*convert again"):
    images.get_source(_config("LSUN", tmp_path, 8, 3), "train")


def test_fingerprints_stable_cached_and_sensitive(tmp_path, monkeypatch):
  monkeypatch.setenv(fingerprint.CACHE_ENV, str(tmp_path / "cache"))
  files = []
  for i in range(3):
    files.append(str(tmp_path / f"f{i}"))
    with open(files[-1], "wb") as f:
      f.write(bytes(RNG.integers(0, 256, 100, dtype=np.uint8)))
  first = fingerprint.files_fingerprint(files)
  monkeypatch.setattr(fingerprint, "file_hash", lambda p: pytest.fail("cache not used"))
  assert fingerprint.files_fingerprint(files) == first
  monkeypatch.undo()
  monkeypatch.setenv(fingerprint.CACHE_ENV, str(tmp_path / "cache2"))
  assert fingerprint.files_fingerprint(files) == first  # the cache does not enter it
  with open(files[1], "r+b") as f:
    f.seek(50)
    byte = f.read(1)
    f.seek(50)
    f.write(bytes([byte[0] ^ 1]))  # one bit, same size
  os.utime(files[1], ns=(1, 1))
  assert fingerprint.files_fingerprint(files) != first
  x, y = _data(10)
  _write_shards(tmp_path / "s", x, y)
  a = array_record.ArrayRecordImages(str(tmp_path / "s")).fingerprint()
  assert a == array_record.ArrayRecordImages(str(tmp_path / "s")).fingerprint()


# --- bad shards -------------------------------------------------------------------------

def test_bad_shards_are_one_line_naming_the_file(tmp_path):
  x, y = _data(21, (6, 6, 3))
  meta = _write_shards(tmp_path, x, y)
  shard1 = os.path.join(tmp_path, meta.shards[1][0])
  # Truncated: the byte size recorded at write time names the shard before any read.
  data = open(shard1, "rb").read()
  with open(shard1, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(UserError, match=rf"{meta.shards[1][0]}: \d+ bytes, but it was "
                                      r"written with \d+ \(truncated copy\)"):
    array_record.ArrayRecordImages(str(tmp_path))
  # Missing.
  os.remove(shard1)
  with pytest.raises(MissingFileError, match=rf"{meta.shards[1][0]}: shard listed in .* is "
                                             "missing"):
    array_record.ArrayRecordImages(str(tmp_path))
  # A corrupt record (same size, bytes flipped inside the record data): named when read.
  with open(shard1, "wb") as f:
    f.write(data)
  flipped = bytearray(data)
  start = data.index(x[7].tobytes()[:40])  # record 0 of shard 1 is example 7
  for k in range(start + 10, start + 20):
    flipped[k] ^= 0xFF
  with open(shard1, "wb") as f:
    f.write(bytes(flipped))
  src = array_record.ArrayRecordImages(str(tmp_path))
  np.testing.assert_array_equal(src.read([0, 20])[0], x[[0, 20]])  # other shards fine
  with pytest.raises(UserError, match=rf"{meta.shards[1][0]}: record 0 is corrupt"):
    src.read([8, 7, 9])  # examples 8, 7, 9: records 1, 0, 2 of shard 1
  # No metadata at all.
  with pytest.raises(MissingFileError, match="test.json does not exist.*--mode convert"):
    array_record.ArrayRecordImages(str(tmp_path), "test")
  # A record of another size (a shard from another conversion copied in).
  other = tmp_path / "other"
  _write_shards(other, *_data(7, (8, 8, 3)))
  os.replace(os.path.join(other, "train-00000-of-00001.array_record"),
             os.path.join(tmp_path, meta.shards[0][0]))
  meta_raw = meta.to_json()
  meta_raw["shards"][0]["bytes"] = os.path.getsize(os.path.join(tmp_path, meta.shards[0][0]))
  import json
  with open(array_record.metadata_path(str(tmp_path), "train"), "w") as f:
    json.dump(meta_raw, f)
  with pytest.raises(UserError, match=rf"{meta.shards[0][0]} record 0: record of 196 bytes, "
                                      "expected 112"):
    array_record.ArrayRecordImages(str(tmp_path)).read([0])


# --- training on the pipeline -------------------------------------------------------------

def _digits_config(n_iters, source, num_workers):
  from configs.vp.digits_ddpmpp_small import get_config
  config = get_config()
  # As small as tests/test_digits_end_to_end.py: compiling costs minutes on 2 cores.
  config.model.nf = 8
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  config.training.update(dict(n_iters=n_iters, batch_size=16, n_jitted_steps=5, log_freq=5,
                              snapshot_freq_for_preemption=5, snapshot_freq=0,
                              eval_freq=0, snapshot_sampling=False))
  config.data.update(dict(source=source, num_workers=num_workers, random_flip=True,
                          uniform_dequantization=True))
  return config


_KILLED_RUN = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from test_grain_pipeline import _digits_config
from modes.train import run
run(_digits_config(10**6, "grain", 2), {workdir!r})
"""


@pytest.mark.slow
def test_kill_9_with_two_workers_then_rerun_is_bitwise_equal(tmp_path):
  """Training on the grain pipeline with 2 worker processes, killed with SIGKILL after
  its first checkpoint, then rerun: the final parameters, EMA and optimizer state equal
  bitwise those of an uninterrupted run on the in-memory iterator (the same batches);
  the metrics carry the data-wait fraction."""
  import json
  import signal
  import subprocess
  import sys
  import time

  import jax
  from modes.train import run
  from training import checkpoint

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILLED_RUN.format(repo=repo, tests=os.path.join(repo, "tests"),
                                                workdir=workdir)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
  try:
    deadline = time.time() + 600
    while not checkpoint.all_steps(workdir):
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      assert time.time() < deadline, "no checkpoint within 600 s"
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)  # the orphaned grain workers of that run
    except ProcessLookupError:
      pass
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  n_iters = max(checkpoint.all_steps(workdir)) + 10
  reference = run(_digits_config(n_iters, "memory", 0), str(tmp_path / "ref"))
  final = run(_digits_config(n_iters, "grain", 2), workdir)
  assert int(final.step) == int(reference.step) == n_iters
  for name in ("params", "opt_state", "ema_params", "key"):
    for a, b in zip(jax.tree.leaves(getattr(final, name)),
                    jax.tree.leaves(getattr(reference, name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    fractions = [json.loads(line).get("data_wait_fraction") for line in f]
  assert fractions and all(f is not None and 0 <= f <= 1 for f in fractions)
