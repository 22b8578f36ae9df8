"""Evaluation data read from ArrayRecord shards (`--mode convert`) through the random-access
source, batch by batch, equal bitwise to the data set's own files read into memory.

Setting: an NPZ data set of 8x8x3 uint8 images (train 40, test 37, random pixels and
labels, np.savez so the grain source memory-maps it) and its shards (3 to 4 shards per
split). Three configs read it: the files in memory (config.data.source = "memory"), the
files through the memory-mapped source (source = "grain") and the shards (source =
"grain"). Checked: every evaluation batch (images, labels, mask; with and without
dequantization; 1 and 2 processes) is the same bitwise, each process reads exactly its
share and nothing loads the whole split; the held-out loss and the bits/dim batches of
evaluation/eval_protocol.py are the same numbers; `--mode stats` writes the same mu, sigma
and features (the Inception replaced by a fixed random projection, so no network runs).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.tiny import shrink
from configs.vp.digits_ddpmpp_small import get_config
from data import array_record, convert, images as images_lib, sources

RNG = np.random.default_rng(7)
SIZES = {"train": 40, "test": 37}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_source")
  files, shards = root / "npz", root / "shards"
  os.makedirs(files)
  arrays = {}
  for split, n in SIZES.items():
    x = RNG.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    y = RNG.integers(0, 10, n).astype(np.int32)
    np.savez(files / f"{split}.npz", images=x, labels=y)
    arrays[split] = (x, y)
  metas = convert.convert(_config(files, "memory"), str(shards), num_workers=1,
                          shard_examples=12, log=lambda line: None)
  assert [len(metas[s].shards) for s in ("train", "test")] == [4, 4]
  return {"files": files, "shards": shards, "arrays": arrays}


def _config(data_dir, source, dequantize=False):
  config = shrink(get_config())
  config.data.update(dict(dataset="NPZ", data_dir=str(data_dir), image_size=8,
                          num_channels=3, source=source, uniform_dequantization=dequantize,
                          random_flip=False))
  config.eval.batch_size = 8
  config.eval.bpd_dataset = "test"
  config.eval.max_batches = 0
  return config


def _three(data, dequantize=False):
  """memory from files, grain from files (memory-mapped), grain from shards."""
  return (_config(data["files"], "memory", dequantize),
          _config(data["files"], "grain", dequantize),
          _config(data["shards"], "grain", dequantize))


@pytest.fixture
def no_whole_split(monkeypatch):
  """Fails a test that loads a whole split into memory (the source path never should)."""
  def refuse(config, split):
    raise AssertionError(f"the whole {split} split was loaded from {config.data.data_dir}")
  monkeypatch.setattr(images_lib, "get_image_dataset", refuse)


def _batches(config, split, h, p, dequantize=None):
  return list(images_lib.get_eval_batches(config, split, process_index=h, process_count=p,
                                          uniform_dequantization=dequantize))


@pytest.mark.parametrize("dequantize", [False, True])
def test_eval_batches_from_shards_equal_the_files_bitwise(data, monkeypatch, dequantize):
  """For P = 1 and 2 processes, every batch of every process is the same bitwise from the
  three configs; from the shards each process reads only the real examples of its own
  slots (37 test images, B = 8: 5 batches, the last with 5 real), so the processes' reads
  are disjoint and cover the split once; no whole split is loaded."""
  memory, mapped, shards = _three(data, dequantize)
  x, y = data["arrays"]["test"]
  expected = {p: [_batches(memory, "test", h, p) for h in range(p)] for p in (1, 2)}
  reads = []
  real_read = array_record.ArrayRecordImages.read

  def read(self, indices):
    reads.append(np.asarray(indices).copy())
    return real_read(self, indices)

  monkeypatch.setattr(array_record.ArrayRecordImages, "read", read)
  monkeypatch.setattr(images_lib, "get_image_dataset", None)  # not called below
  for p in (1, 2):
    for h in range(p):
      for config in (mapped, shards):
        got = _batches(config, "test", h, p)
        assert len(got) == len(expected[p][h]) == 5
        for a, b in zip(got, expected[p][h]):
          for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The reads from the shards: for P = 2, process h's slots of batch i are
  # 8 i + 4 h + (0..3), real below 37.
  assert len(reads) == 5 + 10
  shares = [np.concatenate(reads[5 + 5 * h:10 + 5 * h]) for h in range(2)]
  for h in range(2):
    want = np.concatenate([8 * i + 4 * h + np.arange(4) for i in range(5)])
    np.testing.assert_array_equal(shares[h], want[want < 37])
  np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(37))
  # And the memory path really is the files: labels and pixels of the real slots.
  one = expected[1][0]
  labels = np.concatenate([b["label"][b["mask"]] for b in one])
  np.testing.assert_array_equal(labels, y)
  if not dequantize:
    pixels = np.concatenate([b["image"][b["mask"]] for b in one])
    np.testing.assert_array_equal(pixels, x / np.float32(255.0))


def test_held_out_loss_and_bpd_batches_are_the_same_numbers(data, monkeypatch):
  """evaluation/eval_protocol.py: the evaluation loss (its objective replaced by a
  function of every pixel and of the batch key, so no network compiles) is the same float
  from the shards as from the files, and so is every bits/dim batch of 2 passes (the
  undequantized k / 255 with their record indices)."""
  from evaluation import eval_protocol
  from training import losses

  def fake_loss_fn(sde, config, train):
    def fn(model, x, key):
      return jnp.mean(jnp.sin(x * 7.0)) + jax.random.uniform(key)
    return fn

  monkeypatch.setattr(losses, "get_loss_fn", fake_loss_fn)
  memory, _, shards = _three(data, dequantize=True)
  loss_memory = eval_protocol.eval_loss(memory, None, 0)
  bpd_memory = eval_protocol.bpd_batches(memory, 2)
  bpd_memory = (bpd_memory[0], [(i, np.asarray(x)) for i, x in bpd_memory[1]])
  monkeypatch.setattr(images_lib, "get_image_dataset", None)  # shards: never whole
  loss_shards = eval_protocol.eval_loss(shards, None, 0)
  assert loss_shards == loss_memory and loss_memory["num_batches"] == 5
  n, records = eval_protocol.bpd_batches(shards, 2)
  records = [(i, np.asarray(x)) for i, x in records]
  assert n == bpd_memory[0] == 10 and len(records) == 10
  for (i, a), (j, b) in zip(records, bpd_memory[1]):
    assert i == j
    np.testing.assert_array_equal(a, b)
  scaler = eval_protocol.data_lib.get_data_scaler(memory)
  x, _ = data["arrays"]["test"]
  np.testing.assert_array_equal(np.concatenate([b for _, b in records[:5]]),
                                np.asarray(scaler(x / np.float32(255.0))))


class _Projection:
  """Stands in for the FID Inception: pool3 = a fixed random projection of the pixels,
  logits = a second one (deterministic, every pixel counts)."""

  def __init__(self):
    rng = np.random.default_rng(0)
    self.w_pool = rng.standard_normal((8 * 8 * 3, 2048)).astype(np.float32)
    self.w_logits = rng.standard_normal((8 * 8 * 3, 1008)).astype(np.float32)

  def __call__(self, images):
    flat = jnp.asarray(images, jnp.float32).reshape(images.shape[0], -1) / 255.0
    return flat @ self.w_pool, flat @ self.w_logits


def test_stats_mode_from_shards_equals_the_files(data, tmp_path, monkeypatch):
  """`--mode stats` over the test split (37 images in chunks of 8; the last partial)
  writes the same pool_3, logits, mu and sigma from the shards as from the files, without
  loading the split."""
  from evaluation import inception
  from modes import stats as stats_mode
  weights = tmp_path / "weights.npz"
  weights.write_bytes(b"stand-in; inception.load is replaced")
  monkeypatch.setattr(inception, "load", lambda path: _Projection())
  out = {}
  for name, data_dir in (("files", data["files"]), ("shards", data["shards"])):
    config = _config(data_dir, "grain" if name == "shards" else "memory")
    config.eval.stats_split = "test"
    config.eval.inception_path = str(weights)
    if name == "shards":
      monkeypatch.setattr(images_lib, "get_image_dataset", None)
    with np.load(stats_mode.run(config, str(tmp_path / name))) as f:
      out[name] = {k: f[k] for k in ("pool_3", "logits", "mu", "sigma", "count")}
  assert int(out["files"]["count"]) == SIZES["test"]
  for key, value in out["files"].items():
    np.testing.assert_array_equal(out["shards"][key], value, err_msg=key)
  x, _ = data["arrays"]["test"]
  np.testing.assert_allclose(out["files"]["pool_3"],
                             (x.reshape(len(x), -1) / np.float32(255)) @ _Projection().w_pool,
                             rtol=1e-4, atol=1e-3)


def test_split_images_view_slices_like_the_array(data, no_whole_split):
  shards = _config(data["shards"], "memory")  # the shards alone select the source path
  assert images_lib.reads_from_source(shards, "test")
  assert not images_lib.reads_from_source(_config(data["files"], "memory"), "test")
  view = images_lib.split_images(shards, "test")
  x, _ = data["arrays"]["test"]
  assert isinstance(view, sources.SourceImages)
  assert len(view) == 37 and view.shape == x.shape and view.dtype == np.uint8
  for key in (slice(0, 8), slice(32, 40), slice(None), slice(3, 20, 5), -1, 5,
              np.array([36, 0, -2])):
    np.testing.assert_array_equal(view[key], x[key])
  with pytest.raises(TypeError):
    view[x[:, 0, 0, 0] > 3]
