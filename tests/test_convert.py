"""Conversion to ArrayRecord shards (data/convert.py) from small files the tests write:
an image folder and a CIFAR-10 binary archive give shards whose grain batches equal the
in-memory iterator's on the source, with the same seed; resumption keeps finished shards;
each bad input is one line naming the file."""
from __future__ import annotations

import io
import json
import os
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("grain")
pytest.importorskip("array_record")

from common.errors import MissingFileError, UserError  # noqa: E402
from data import array_record, cifar10, convert, fingerprint, grain_pipeline, images  # noqa: E402
from data import sources  # noqa: E402

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv(fingerprint.CACHE_ENV, str(tmp_path / "fingerprint_cache"))


def _config(dataset, data_dir, image_size, channels=3):
  return ml_collections.ConfigDict({
      "data": {"dataset": dataset, "data_dir": str(data_dir), "image_size": image_size,
               "num_channels": channels, "random_flip": True,
               "uniform_dequantization": True, "centered": False},
      "training": {"batch_size": 4}, "model": {"num_classes": 0}, "seed": 3})


def _folder(root, n_per_class=5, sizes=((12, 10), (9, 14), (10, 10))):
  for c in ("cats", "dogs"):
    os.makedirs(root / c, exist_ok=True)
    for i in range(n_per_class):
      h, w = sizes[i % len(sizes)]
      Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
          root / c / f"{i:03d}.png")


def _same_batches(config, shards_dir, steps=8):
  """The grain pipeline on the shards against BatchIterator on the source itself."""
  ref = images.get_image_dataset(config, "train")
  it_ref = ref.train_iterator(4, 3, process_index=0, process_count=1)
  src = images.get_source(_config(config.data.dataset, shards_dir, config.data.image_size,
                                   config.data.num_channels), "train")
  assert isinstance(src, array_record.ArrayRecordImages)
  np.testing.assert_array_equal(src.read(np.arange(len(src)))[0], ref.images)
  np.testing.assert_array_equal(src.read(np.arange(len(src)))[1], ref.labels)
  with grain_pipeline.GrainBatches(src, 4, 3, random_flip=True, uniform_dequantization=True,
                                   shard_index=0, shard_count=1) as it:
    for _ in range(steps):
      np.testing.assert_array_equal(next(it), next(it_ref))


def test_image_folder_to_shards_same_batches_and_resume(tmp_path):
  """IMAGE_FOLDER (mixed sizes, resized to 8 px, two classes): shards of 3 records; the
  pipeline on them gives the in-memory iterator's batches. Then one shard is truncated,
  one sidecar deleted and a stray temporary left, as a kill would: a rerun rewrites
  exactly those two shards and keeps the others (same inode and mtime)."""
  src_dir = tmp_path / "folder"
  _folder(src_dir)
  out = tmp_path / "shards"
  config = _config("IMAGE_FOLDER", src_dir, 8)
  lines = []
  meta = convert.convert_split(config, "train", str(out), num_workers=1, shard_examples=3,
                               log=lines.append)
  assert meta.count == 10 and len(meta.shards) == 4 and meta.class_names == ("cats", "dogs")
  assert meta.source["fingerprint"] == sources.ImageFolderSource(str(src_dir)).fingerprint()
  assert "10 images in 4 shard(s) at 8x8x3" in lines[-1] and "images/s" in lines[-1]
  _same_batches(config, out)
  paths = [os.path.join(out, s[0]) for s in meta.shards]
  stat = {p: os.stat(p) for p in paths}
  with open(paths[1], "r+b") as f:
    f.truncate(os.path.getsize(paths[1]) // 2)
  os.remove(paths[2] + ".json")
  open(paths[3] + ".tmp", "wb").close()
  lines = []
  meta2 = convert.convert_split(config, "train", str(out), num_workers=1, shard_examples=3,
                                log=lines.append)
  assert lines[0].startswith("train: keeping 2 finished shard(s) of 4")
  assert f"{meta.shards[1][1] + meta.shards[2][1]} converted now" in lines[-1]
  for k in (0, 3):
    assert os.stat(paths[k]).st_mtime_ns == stat[paths[k]].st_mtime_ns
  assert os.stat(paths[1]).st_mtime_ns != stat[paths[1]].st_mtime_ns
  assert meta2 == meta
  _same_batches(config, out, steps=3)


def _cifar_archive(root, n=3):
  expect = {}
  with tarfile.open(root / cifar10.ARCHIVE, "w:gz") as tar:
    for name in cifar10.SPLIT_FILES["train"] + cifar10.SPLIT_FILES["test"]:
      hwc = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
      labels = RNG.integers(0, 10, n)
      buf = b"".join(bytes([int(l)]) + img.transpose(2, 0, 1).tobytes()
                     for img, l in zip(hwc, labels))
      info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
      info.size = len(buf)
      tar.addfile(info, io.BytesIO(buf))
      expect[name] = (hwc, labels)
  return expect


def test_cifar10_archive_to_shards_with_two_workers(tmp_path):
  """CIFAR-10's binary archive (15 train, 3 test records) converted by 2 worker
  processes: both splits, labels and class names kept, the archive's fingerprint
  recorded, and the grain batches equal the in-memory iterator's."""
  _cifar_archive(tmp_path)
  out = tmp_path / "shards"
  config = _config("CIFAR10", tmp_path, 32)
  metas = convert.convert(config, str(out), num_workers=2, shard_examples=4, log=print)
  assert metas["train"].count == 15 and metas["test"].count == 3
  assert len(metas["train"].shards) == 4
  assert metas["train"].class_names == cifar10.CLASS_NAMES
  assert metas["train"].source["fingerprint"] == fingerprint.files_fingerprint(
      [str(tmp_path / cifar10.ARCHIVE)])
  _same_batches(config, out)
  test = images.get_source(_config("CIFAR10", out, 32), "test")
  np.testing.assert_array_equal(test.read([0, 1, 2])[0],
                                cifar10.read_cifar10(str(tmp_path), "test")[0])


def test_unreadable_files_are_skipped_one_line_each(tmp_path):
  src_dir = tmp_path / "folder"
  _folder(src_dir, n_per_class=3)
  (src_dir / "cats" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
  lines = []
  meta = convert.convert_split(_config("LSUN", src_dir, 8), "train", str(tmp_path / "o"),
                               num_workers=1, log=lines.append)
  assert meta.count == 5 and meta.source["skipped"] == 1
  bad = [l for l in lines if "unreadable" in l and "skipped (" in l]
  assert len(bad) == 1 and bad[0].startswith(str(src_dir / "cats" / "001.png") + ": ")
  assert "1 unreadable file(s) skipped" in lines[-1]


def test_bad_inputs_one_line_naming_the_file(tmp_path):
  # An empty folder.
  (tmp_path / "empty").mkdir()
  with pytest.raises(MissingFileError, match="no image files .* under .*empty"):
    convert.convert_split(_config("LSUN", tmp_path / "empty", 8), "train",
                          str(tmp_path / "o1"), num_workers=1)
  # Mixed modes: one grey-scale file among RGB ones.
  d = tmp_path / "modes"
  _folder(d, n_per_class=2)
  Image.fromarray(RNG.integers(0, 256, (10, 10), dtype=np.uint8)).save(d / "dogs" / "001.png")
  with pytest.raises(UserError, match=r"dogs/001.png: image mode L but the others are RGB"):
    convert.convert_split(_config("LSUN", d, 8), "train", str(tmp_path / "o2"),
                          num_workers=1)
  # Mixed sizes where the data set has one size (FFHQ is stored at one resolution).
  d = tmp_path / "ffhq"
  _folder(d, n_per_class=2, sizes=((16, 16), (16, 16)))
  Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "dogs" / "001.png")
  with pytest.raises(UserError, match=r"dogs/001.png: 32x32 but FFHQ images are all 16x16"):
    convert.convert_split(_config("FFHQ", d, 8), "train", str(tmp_path / "o3"),
                          num_workers=1)
  os.remove(d / "dogs" / "001.png")
  meta = convert.convert_split(_config("FFHQ", d, 8), "train", str(tmp_path / "o3"),
                               num_workers=1)
  assert meta.count == 3
  # Shards written for another image size.
  with pytest.raises(UserError, match=r"train.json: images are 8x8x3 but the config wants "
                                      "16x16x3"):
    images.get_source(_config("FFHQ", tmp_path / "o3", 16), "train")


def test_geometry_follows_score_sde():
  """LSUN at 256: central square crop, then resize; at 128: shorter side, then crop;
  CelebA: 140 px central crop first; FFHQ: square only."""
  x = np.zeros((300, 400, 3), np.uint8)
  x[:, :40] = 255  # a bar that both crops remove entirely (with the filter's support)
  assert convert._lsun(x, 256).shape == (256, 256, 3)
  assert convert._lsun(x, 256).max() == 0
  assert convert._lsun(x, 128).max() == 0  # 128: 300x400 -> 128x171, crop 21 px each side
  y = np.zeros((218, 178, 3), np.uint8)
  y[:39] = 255  # outside the central 140 rows (39 above, 39 below)
  assert convert._celeba(y, 64).max() == 0
  with pytest.raises(UserError, match="not square"):
    convert._fixed(y, 64)
  z = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  box = z.reshape(8, 2, 8, 2, 3).mean((1, 3))  # ProGAN's 2x2 averages, before rounding
  assert np.abs(convert._fixed(z, 8) - box).max() <= 1  # Pillow's fixed-point rounding


def test_sidecar_is_json_with_the_documented_fields(tmp_path):
  src_dir = tmp_path / "folder"
  _folder(src_dir, n_per_class=2)
  convert.convert_split(_config("CELEBA", src_dir, 8), "train", str(tmp_path / "o"),
                        num_workers=1)
  raw = json.load(open(tmp_path / "o" / "train.json"))
  assert raw["format"] == array_record.FORMAT and raw["image_size"] == [8, 8]
  assert raw["channels"] == 3 and raw["count"] == 4
  assert raw["source"]["dataset"] == "CELEBA" and len(raw["source"]["fingerprint"]) == 16


def test_cli_convert_bad_input_exits_2_with_one_line(tmp_path):
  """main.py --mode convert on an empty folder: exit code 2, one line naming it."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "empty").mkdir()
  proc = subprocess.run(
      [sys.executable, os.path.join(repo, "main.py"), "--mode", "convert",
       "--config", os.path.join(repo, "configs/ve/bedroom_ncsnpp_continuous.py"),
       f"--config.data.data_dir={tmp_path / 'empty'}", "--workdir", str(tmp_path / "out"),
       "--compilation_cache_dir="],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "no image files" in lines[0] and "empty" in lines[0]


_KILLED_CONVERT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from test_convert import _config
from data import convert
convert.convert_split(_config("LSUN", {src!r}, 8), "train", {out!r}, num_workers=1,
                      shard_examples=4, log=lambda line: None)
"""


def test_kill_9_during_convert_then_rerun_gives_the_same_shards(tmp_path):
  """convert killed with SIGKILL once its first shard is finished, then rerun: the
  finished shards are kept, and every shard and the sidecar equal byte for byte those
  of an uninterrupted conversion."""
  import signal
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src_dir = tmp_path / "folder"
  _folder(src_dir, n_per_class=40, sizes=((64, 80), (72, 64)))
  out = tmp_path / "killed"
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILLED_CONVERT.format(
          repo=repo, tests=os.path.join(repo, "tests"), src=str(src_dir), out=str(out))],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 300
    while not (out.is_dir() and any(n.endswith(".array_record.json") for n in os.listdir(out))):
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      assert time.time() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (out / "train.json").exists()  # killed before the end
  lines = []
  convert.convert_split(_config("LSUN", src_dir, 8), "train", str(out), num_workers=1,
                        shard_examples=4, log=lines.append)
  assert lines[0].startswith("train: keeping ")
  ref = tmp_path / "ref"
  convert.convert_split(_config("LSUN", src_dir, 8), "train", str(ref), num_workers=1,
                        shard_examples=4, log=lambda line: None)
  names = sorted(n for n in os.listdir(ref) if not n.endswith(".json"))
  assert len(names) == 20 and sorted(n for n in os.listdir(out)
                                     if not n.endswith(".json")) == names
  for name in names + ["train.json"]:
    assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_cli_train_on_shards_of_another_size_exits_2_before_training(tmp_path):
  """Shards converted at 8 px, a training config at 64 px (the smallest size the bedroom
  network's seven resolutions accept, so the network check passes): main.py --mode train
  stops with exit code 2 and one line naming the sidecar and both sizes, before any
  checkpoint."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  _folder(tmp_path / "folder", n_per_class=2)
  convert.convert_split(_config("LSUN", tmp_path / "folder", 8), "train",
                        str(tmp_path / "shards"), num_workers=1, log=lambda line: None)
  proc = subprocess.run(
      [sys.executable, os.path.join(repo, "main.py"), "--mode", "train",
       "--config", os.path.join(repo, "configs/ve/bedroom_ncsnpp_continuous.py"),
       f"--config.data.data_dir={tmp_path / 'shards'}", "--config.data.source=grain",
       "--config.data.image_size=64", "--workdir", str(tmp_path / "run"),
       "--compilation_cache_dir="],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "train.json: images are 8x8x3" in lines[0], lines
  assert "64x64x3" in lines[0]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_mnist_idx_and_npz_to_shards(tmp_path):
  """MNIST idx files (plain) and an .npz convert to shards holding exactly the arrays the
  existing readers decode (native sizes: no resize)."""
  import struct
  from data import mnist, npz
  d = tmp_path / "mnist"
  d.mkdir()
  for prefix, n in (("train", 7), ("t10k", 3)):
    x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = RNG.integers(0, 10, n).astype(np.uint8)
    for stem, arr, code in ((f"{prefix}-images-idx3-ubyte", x, 3),
                            (f"{prefix}-labels-idx1-ubyte", y, 1)):
      (d / stem).write_bytes(struct.pack(">HBB", 0, 8, code)
                             + b"".join(struct.pack(">I", s) for s in arr.shape)
                             + arr.tobytes())
  metas = convert.convert(_config("MNIST", d, 28, 1), str(tmp_path / "m"), num_workers=1,
                          shard_examples=3, log=lambda line: None)
  assert metas["train"].count == 7 and metas["test"].count == 3
  for split in ("train", "test"):
    src = array_record.ArrayRecordImages(str(tmp_path / "m"), split)
    for a, b in zip(src.read(np.arange(len(src))), mnist.read_mnist(str(d), split)):
      np.testing.assert_array_equal(a, b)
  x = RNG.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
  np.savez(tmp_path / "data.npz", images=x, labels=np.arange(5))
  meta = convert.convert_split(_config("NPZ", tmp_path / "data.npz", 6), "train",
                               str(tmp_path / "n"), num_workers=1, log=lambda line: None)
  assert meta.count == 5
  src = array_record.ArrayRecordImages(str(tmp_path / "n"))
  for a, b in zip(src.read(np.arange(5)), npz.read_npz(str(tmp_path / "data.npz"))):
    np.testing.assert_array_equal(a, b)
