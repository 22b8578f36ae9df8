"""Image data: readers checked on small files of each real format written here, byte by
byte; transforms; the host-sharded, resumable batch iterator; sklearn's bundled digits."""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data import cifar10, digits, image_folder, images, iterator, mnist, npz, transforms

RNG = np.random.default_rng(1234)


def make_config(dataset, data_dir="", image_size=32, num_channels=3, random_flip=False,
                uniform_dequantization=False):
  return ml_collections.ConfigDict({
      "data": {"dataset": dataset, "data_dir": str(data_dir), "image_size": image_size,
               "num_channels": num_channels, "random_flip": random_flip,
               "uniform_dequantization": uniform_dequantization, "centered": False},
      "training": {"batch_size": 4}, "eval": {"batch_size": 4}, "seed": 7})


# --- CIFAR-10 binary ------------------------------------------------------------------

def cifar_records(n, seed):
  """n records in CIFAR-10's byte layout, built pixel by pixel from the spec, and the HWC
  images and labels they encode."""
  rng = np.random.default_rng(seed)
  hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n)
  buf = bytearray()
  for img, label in zip(hwc, labels):
    buf.append(int(label))
    # 1024 red values row-major, then 1024 green, then 1024 blue.
    for c in range(3):
      buf += bytes(int(img[h, w, c]) for h in range(32) for w in range(32))
  return bytes(buf), hwc, labels


def write_cifar(root, as_archive=True):
  """Writes a tiny CIFAR-10 (3 records per train file, 2 in test_batch)."""
  files, expect = {}, {"train": ([], []), "test": ([], [])}
  for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
    buf, hwc, labels = cifar_records(2 if name == "test_batch.bin" else 3, seed=i)
    files[name] = buf
    split = "test" if name == "test_batch.bin" else "train"
    expect[split][0].append(hwc)
    expect[split][1].append(labels)
  if as_archive:
    with tarfile.open(os.path.join(root, cifar10.ARCHIVE), "w:gz") as tar:
      for name, buf in files.items():
        info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
        info.size = len(buf)
        tar.addfile(info, io.BytesIO(buf))
  else:
    os.makedirs(os.path.join(root, cifar10.FOLDER))
    for name, buf in files.items():
      with open(os.path.join(root, cifar10.FOLDER, name), "wb") as f:
        f.write(buf)
  return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in expect.items()}


@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar10_decodes_bytes_chw_to_hwc(tmp_path, as_archive):
  expect = write_cifar(tmp_path, as_archive)
  for split, n in (("train", 15), ("test", 2)):
    x, y = cifar10.read_cifar10(str(tmp_path), split)
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x, expect[split][0])
    np.testing.assert_array_equal(y, expect[split][1])
  # One pixel straight from the bytes: record 0 of test_batch, channel 2 at (h, w) = (5, 7).
  raw = cifar_records(2, seed=5)[0]
  x, _ = cifar10.read_cifar10(str(tmp_path), "test")
  assert x[0, 5, 7, 2] == raw[1 + 2 * 1024 + 5 * 32 + 7]
  ds = images.get_image_dataset(make_config("CIFAR10", tmp_path), "test")
  np.testing.assert_array_equal(ds.images, expect["test"][0])
  assert ds.class_names == cifar10.CLASS_NAMES


def test_cifar10_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz or cifar-10-batches-bin/"):
    images.get_image_dataset(make_config("CIFAR10", tmp_path), "train")
  write_cifar(tmp_path, as_archive=False)
  with open(tmp_path / cifar10.FOLDER / "data_batch_2.bin", "ab") as f:
    f.write(b"\x00")  # one stray byte: no longer whole records
  with pytest.raises(ValueError, match="data_batch_2.bin.*3073"):
    cifar10.read_cifar10(str(tmp_path), "train")
  os.remove(tmp_path / cifar10.FOLDER / "data_batch_3.bin")
  with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
    cifar10.read_cifar10(str(tmp_path), "train")
  with pytest.raises(ValueError, match="image_size = 64"):
    images.get_image_dataset(make_config("CIFAR10", tmp_path, image_size=64), "test")
  with pytest.raises(ValueError, match="3 channel.*num_channels = 1"):
    images.get_image_dataset(make_config("CIFAR10", tmp_path, num_channels=1), "test")


# --- MNIST idx --------------------------------------------------------------------------

def idx_bytes(array, type_code=0x08):
  header = struct.pack(">HBB", 0, type_code, array.ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(root, gz):
  out = {}
  for prefix, n in (("train", 6), ("t10k", 3)):
    x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = RNG.integers(0, 10, n).astype(np.uint8)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
      data = idx_bytes(arr)
      opener = gzip.open if gz else open
      with opener(os.path.join(root, stem + (".gz" if gz else "")), "wb") as f:
        f.write(data)
    out["train" if prefix == "train" else "test"] = (x, y)
  return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
  expect = write_mnist(tmp_path, gz)
  for split in ("train", "test"):
    x, y = mnist.read_mnist(str(tmp_path), split)
    assert x.shape == (len(expect[split][0]), 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], expect[split][0])
    np.testing.assert_array_equal(y, expect[split][1])
  ds = images.get_image_dataset(make_config("MNIST", tmp_path, 28, 1), "train")
  assert ds.images.shape == (6, 28, 28, 1)


def test_idx_general_types_and_errors(tmp_path):
  a = RNG.normal(size=(2, 3, 4)).astype(np.float32)
  np.testing.assert_array_equal(mnist.decode_idx(idx_bytes(a, 0x0D)), a)
  b = RNG.integers(-1000, 1000, (5,)).astype(np.int16)
  np.testing.assert_array_equal(mnist.decode_idx(idx_bytes(b, 0x0B)), b)
  good = idx_bytes(RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8))
  with pytest.raises(ValueError, match="magic number 0x12340803"):
    mnist.decode_idx(b"\x12\x34" + good[2:], "f")
  with pytest.raises(ValueError, match="magic number 0x00000703"):
    mnist.decode_idx(good[:2] + b"\x07" + good[3:], "f")
  with pytest.raises(ValueError, match=r"shape \(2, 28, 28\).*1567 bytes"):
    mnist.decode_idx(good[:-1], "f")
  write_mnist(tmp_path, gz=False)
  with pytest.raises(ValueError, match="28x28 but config.data.image_size = 32"):
    images.get_image_dataset(make_config("MNIST", tmp_path, 32, 1), "test")
  with pytest.raises(ValueError, match="1 channel.*num_channels = 3"):
    images.get_image_dataset(make_config("MNIST", tmp_path, 28, 3), "test")
  with open(tmp_path / "t10k-images-idx3-ubyte", "r+b") as f:
    f.write(b"\x00\x00\x08\x02")  # claims 2 dims: the sizes no longer fit the data
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: idx header says shape \(3, 28\)"):
    mnist.read_mnist(str(tmp_path), "test")
  with open(tmp_path / "t10k-images-idx3-ubyte", "r+b") as f:
    f.write(b"\x1f\x8b\x08\x03")  # a gzip header where the magic number belongs
  with pytest.raises(ValueError, match="bad idx magic number 0x1F8B0803"):
    mnist.read_mnist(str(tmp_path), "test")
  os.remove(tmp_path / "train-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz or train-labels"):
    mnist.read_mnist(str(tmp_path), "train")


# --- image folder ---------------------------------------------------------------------

def write_png_folder(root, shape=(6, 5, 3), per_class=2):
  expect = {}
  for cls in ("cat", "ant"):  # written unsorted; labels follow sorted names
    os.makedirs(os.path.join(root, cls))
    for i in range(per_class):
      arr = RNG.integers(0, 256, shape, dtype=np.uint8)
      path = os.path.join(root, cls, f"img{i}.png")
      Image.fromarray(arr).save(path)
      expect[path] = arr
  return expect


def test_image_folder_pixels_and_labels(tmp_path):
  expect = write_png_folder(tmp_path)
  x, y, classes = image_folder.read_image_folder(str(tmp_path), num_channels=3)
  assert classes == ("ant", "cat") and x.shape == (4, 6, 5, 3)
  files = sorted(expect)  # ant/img0, ant/img1, cat/img0, cat/img1
  np.testing.assert_array_equal(x, np.stack([expect[f] for f in files]))
  np.testing.assert_array_equal(y, [0, 0, 1, 1])
  grey, _, _ = image_folder.read_image_folder(str(tmp_path), num_channels=1)
  assert grey.shape == (4, 6, 5, 1)


def test_image_folder_resize_crop_and_splits(tmp_path):
  arr = RNG.integers(0, 256, (218, 178, 3), dtype=np.uint8)  # CelebA's aligned size
  os.makedirs(tmp_path / "train")
  Image.fromarray(arr).save(tmp_path / "train" / "000001.jpg", quality=100)
  Image.fromarray(arr).save(tmp_path / "train" / "000002.png")
  # With image_size 140 the resize is a no-op: what remains is score_sde's central crop.
  ds = images.get_image_dataset(make_config("CELEBA", tmp_path, 140), "train")
  np.testing.assert_array_equal(ds.images[1], arr[39:179, 19:159])
  assert np.all(ds.labels == -1)
  ds = images.get_image_dataset(make_config("IMAGE_FOLDER", tmp_path, 16, 1), "train")
  assert ds.images.shape == (2, 16, 16, 1) and ds.images.dtype == np.uint8
  with pytest.raises(FileNotFoundError, match=r"no 'test' split: expected test/ or test.npz under"):
    images.get_image_dataset(make_config("LSUN", tmp_path, 16), "test")


# --- npz ------------------------------------------------------------------------------

def test_npz(tmp_path):
  x = RNG.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  y = np.arange(5)
  np.savez(tmp_path / "train.npz", images=x, labels=y)
  np.savez(tmp_path / "test.npz", x=x[:2, ..., :1].astype(np.int64))  # grey, no labels
  ds = images.get_image_dataset(make_config("NPZ", tmp_path, 8, 3), "train")
  np.testing.assert_array_equal(ds.images, x)
  np.testing.assert_array_equal(ds.labels, y)
  gx, gy = npz.read_npz(str(tmp_path / "test.npz"))
  np.testing.assert_array_equal(gx, x[:2, ..., :1])
  np.testing.assert_array_equal(gy, [-1, -1])
  with pytest.raises(ValueError, match="8x8 but config.data.image_size = 16"):
    images.get_image_dataset(make_config("NPZ", tmp_path, 16, 3), "train")
  with pytest.raises(ValueError, match="1 channel.*num_channels = 3"):
    images.get_image_dataset(make_config("NPZ", tmp_path, 8, 3), "test")
  # FFHQ from an .npz is resized on loading.
  ds = images.get_image_dataset(make_config("FFHQ", tmp_path / "train.npz", 4, 3), "train")
  assert ds.images.shape == (5, 4, 4, 3)
  np.savez(tmp_path / "nchw.npz", images=np.transpose(x, (0, 3, 1, 2)))
  with pytest.raises(ValueError, match="NCHW"):
    npz.read_npz(str(tmp_path / "nchw.npz"))
  np.savez(tmp_path / "float.npz", images=x / 255.0)
  with pytest.raises(ValueError, match="float64; expected uint8"):
    npz.read_npz(str(tmp_path / "float.npz"))
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    npz.read_npz(str(tmp_path / "missing.npz"))


def test_unknown_name_and_split():
  with pytest.raises(ValueError, match=r"'CIFAR100'; choices: CELEBA, CIFAR10, "):
    images.get_image_dataset(make_config("CIFAR100", "/nowhere"), "train")
  with pytest.raises(ValueError, match="unknown split 'valid'; choices: train, test"):
    images.get_image_dataset(make_config("DIGITS", "", 8, 1), "valid")
  with pytest.raises(FileNotFoundError, match="/nowhere"):
    images.get_image_dataset(make_config("LSUN", "/nowhere", 8, 3), "train")


# --- digits ---------------------------------------------------------------------------

def test_digits_real_data():
  from sklearn.datasets import load_digits
  ref = load_digits()
  train = images.get_image_dataset(make_config("DIGITS", "", 8, 1), "train")
  test = images.get_image_dataset(make_config("DIGITS", "", 8, 1), "test")
  assert len(train) + len(test) == 1797 and len(test) == 360
  assert train.images.shape == (1437, 8, 8, 1) and train.images.dtype == np.uint8
  both = np.concatenate([train.images, test.images])
  assert both.min() == 0 and both.max() == 255
  idx = digits.split_indices("test")
  assert not set(idx) & set(digits.split_indices("train"))
  np.testing.assert_array_equal(test.images[..., 0], np.round(ref.images[idx] * 255 / 16))
  np.testing.assert_array_equal(test.labels, ref.target[idx])


# --- transforms -----------------------------------------------------------------------

def test_transforms():
  x = RNG.integers(0, 256, (3, 7, 6, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.center_crop(x, 4), x[:, 1:5, 1:5])
  np.testing.assert_array_equal(transforms.resize(x[0], (7, 6)), x[0])
  flipped = transforms.horizontal_flip(x, np.array([True, False, True]))
  np.testing.assert_array_equal(flipped[0], x[0, :, ::-1])
  np.testing.assert_array_equal(flipped[1], x[1])
  # A constant image stays constant under the (normalised) bilinear filter.
  const = np.full((40, 30, 3), 77, np.uint8)
  np.testing.assert_array_equal(transforms.resize_and_crop(const, 8), np.full((8, 8, 3), 77))
  assert transforms.resize_small(const, 15).shape == (20, 15, 3)
  np.testing.assert_array_equal(transforms.to_float(np.array([0, 255], np.uint8)), [0.0, 1.0])
  k = np.arange(256, dtype=np.uint8)
  d = transforms.uniform_dequantize(np.random.default_rng(0), k)
  assert np.all(d >= k / 256) and np.all(d < (k + 1.0) / 256)
  # Noise just below 1 would round k + u up to k + 1 in float32; it stays in its bin.
  top = transforms.dequantize(k, np.full(256, 1 - 2.0 ** -24, np.float32))
  assert np.all(top < (k + 1.0) / 256) and top[-1] < 1.0


# --- iterator -------------------------------------------------------------------------

N, B = 37, 8  # 4 full batches per epoch; 5 examples dropped each epoch


def data_u8(n=N):
  return RNG.integers(0, 256, (n, 4, 3, 2), dtype=np.uint8)


@pytest.mark.parametrize("flip,deq", [(False, False), (True, True)])
def test_hosts_disjoint_covering_and_independent_of_host_count(flip, deq):
  x = data_u8()
  one = iterator.BatchIterator(x, B, seed=3, random_flip=flip, uniform_dequantization=deq,
                               process_index=0, process_count=1)
  hosts = [iterator.BatchIterator(x, B, seed=3, random_flip=flip, uniform_dequantization=deq,
                                  process_index=h, process_count=4) for h in range(4)]
  for epoch in range(2):
    seen = []
    for index in range(one.batches_per_epoch):
      shards = [h.indices(epoch, index) for h in hosts]
      assert all(len(s) == B // 4 for s in shards)
      np.testing.assert_array_equal(np.concatenate(shards), one.indices(epoch, index))
      seen += list(np.concatenate(shards))
      full = next(one)
      parts = [next(h) for h in hosts]
      assert parts[0].shape == (B // 4, 4, 3, 2) and parts[0].dtype == np.float32
      # Same global batch, bit for bit, whether one host or four produced it.
      np.testing.assert_array_equal(np.concatenate(parts), full)
    assert len(seen) == len(set(seen)) == 4 * B  # disjoint, each example at most once
  assert not np.array_equal(one.order(0), one.order(1))  # reshuffled every epoch


def test_resume_gives_the_same_next_batches():
  x = data_u8()
  make = lambda: iterator.BatchIterator(x, B, seed=11, random_flip=True,
                                        uniform_dequantization=True,
                                        process_index=1, process_count=2)
  uninterrupted = make()
  reference = [next(uninterrupted) for _ in range(11)]  # crosses two epoch boundaries
  for k in (0, 3, 4, 9):
    first = make()
    for _ in range(k):
      next(first)
    saved = json.loads(json.dumps(first.state()))  # as the checkpoint stores it
    assert saved["epoch"] == k // 4 and saved["index"] == k % 4
    resumed = make()
    resumed.restore(saved)
    for want in reference[k:]:
      np.testing.assert_array_equal(next(resumed), want)
  other = iterator.BatchIterator(x, B, seed=12, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="seed = 11.*seed = 12"):
    other.restore(saved)


def test_flips_reproducible_and_fair():
  x = RNG.integers(0, 256, (400, 2, 5, 1), dtype=np.uint8)
  x[:, :, 0] = 0
  x[:, :, -1] = 255  # left column black, right white: a flip is visible
  it = iterator.BatchIterator(x, 200, seed=5, random_flip=True, process_count=1,
                              process_index=0)
  a = it.batch(0, 1)
  np.testing.assert_array_equal(a, it.batch(0, 1))
  flipped = a[:, 0, 0, 0] == 1.0
  src = x[it.indices(0, 1)].astype(np.float32) / 255
  np.testing.assert_array_equal(a[flipped], src[flipped][:, :, ::-1])
  np.testing.assert_array_equal(a[~flipped], src[~flipped])
  # 200 fair coins: 100 +- 7 (1 SD); 4.5 SD bounds.
  assert 68 < flipped.sum() < 132
  other = iterator.BatchIterator(x, 200, seed=6, random_flip=True, process_count=1,
                                 process_index=0)
  assert not np.array_equal(other.batch(0, 1)[:, 0, 0, 0] == 1.0, flipped)


def test_dequantization_noise_in_the_right_bins():
  x = data_u8(64)
  it = iterator.BatchIterator(x, 64, seed=0, uniform_dequantization=True, process_count=1,
                              process_index=0)
  b = next(it)
  k = x[it.indices(0, 0)].astype(np.float64)
  assert np.all(b >= k / 256) and np.all(b < (k + 1) / 256)
  u = b * 256.0 - k  # the noise: U[0, 1), mean 1/2, SD 1/sqrt(12 * 1536) = 0.0074
  assert abs(u.mean() - 0.5) < 0.04


def test_eval_batches_padded_with_mask():
  x = data_u8()
  labels = np.arange(N)
  shards = [iterator.EvalBatches(x, B, labels=labels, process_index=h, process_count=2)
            for h in range(2)]
  assert len(shards[0]) == len(shards[1]) == 5  # ceil(37 / 8)
  got_labels, got_images = [], []
  for b0, b1 in zip(*shards):
    for b in (b0, b1):
      assert b["image"].shape == (4, 4, 3, 2) and b["mask"].shape == (4,)
      assert np.all(b["image"][~b["mask"]] == 0) and np.all(b["label"][~b["mask"]] == -1)
      got_labels += list(b["label"][b["mask"]])
      got_images.append(b["image"][b["mask"]])
  np.testing.assert_array_equal(got_labels, labels)  # one pass, in order, all kept
  np.testing.assert_array_equal(np.concatenate(got_images), x / np.float32(255))


def test_config_iterators_on_digits():
  config = make_config("DIGITS", "", 8, 1, random_flip=True, uniform_dequantization=True)
  it = images.get_train_iterator(config, process_index=0, process_count=2)
  batch = next(it)
  assert batch.shape == (2, 8, 8, 1) and batch.dtype == np.float32
  assert 0.0 <= batch.min() and batch.max() < 1.0
  ev = images.get_eval_batches(config, process_index=0, process_count=1)
  assert len(ev) == 90 and sum(int(b["mask"].sum()) for b in ev) == 360
