"""Archives verified: a byte changed anywhere in a file that carries a checksum (a CIFAR-10
.tar.gz, a gzipped MNIST idx file, an .npz) is caught, as one UserError naming the file,
or lies in one of the few header fields no checksum covers and then changes nothing that
is read. 20 seeded random positions per file, each XORed with a random non-zero byte."""
import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from common.errors import UserError
from data import cifar10, mnist, npz

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_POSITIONS = 20


def _cifar_archive(path, n_train=4, n_test=3):
  rng = np.random.default_rng(0)
  with tarfile.open(path, "w:gz") as tar:  # FNAME set, as in the distributed archive
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
      n = n_test if name == "test_batch.bin" else n_train
      records = np.concatenate([rng.integers(0, 10, (n, 1)),
                                rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
      info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
      info.size = records.nbytes
      tar.addfile(info, io.BytesIO(records.tobytes()))


def _idx(array):
  header = struct.pack(">HBB", 0, 0x08, array.ndim)
  return header + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _mnist_dir(root):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  y = rng.integers(0, 10, 5).astype(np.uint8)
  for stem, arr in (("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", y)):
    with gzip.open(os.path.join(root, stem + ".gz"), "wb") as f:  # FNAME set
      f.write(_idx(arr))


def _gzip_unchecked(buf: bytes) -> set[int]:
  """Offsets of a gzip header's fields that no check covers: FLG's FTEXT bit (offset 3
  is counted; the test then requires the data to be unchanged), MTIME, XFL, OS, and the
  original file name."""
  end = 10
  if buf[3] & 0x08:
    end = buf.index(b"\0", 10) + 1
  return set(range(3, end))


def _zip_unchecked(buf: bytes) -> set[int]:
  """Offsets in the central directory and end record: fields there that are not copies
  of a member's local header (version made by, attributes, comment) are covered by no
  check. Every byte of each member (local header and data) is covered."""
  end_record = buf.rindex(b"PK\x05\x06")
  (directory,) = struct.unpack("<I", buf[end_record + 16:end_record + 20])
  return set(range(directory, len(buf)))


CASES = {
    "cifar": (lambda root: _cifar_archive(os.path.join(root, cifar10.ARCHIVE)),
              cifar10.ARCHIVE, lambda root: cifar10.read_cifar10(root, "train"),
              _gzip_unchecked),
    "mnist": (_mnist_dir, "t10k-images-idx3-ubyte.gz",
              lambda root: mnist.read_mnist(root, "test"), _gzip_unchecked),
    "npz": (lambda root: np.savez(os.path.join(root, "train.npz"),
                                  images=np.random.default_rng(2).integers(
                                      0, 256, (6, 8, 8, 3), dtype=np.uint8),
                                  labels=np.arange(6)),
            "train.npz", lambda root: npz.read_npz(os.path.join(root, "train.npz")),
            _zip_unchecked),
    "npz_compressed": (lambda root: np.savez_compressed(
        os.path.join(root, "train.npz"),
        images=np.random.default_rng(3).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)),
        "train.npz", lambda root: npz.read_npz(os.path.join(root, "train.npz")),
        _zip_unchecked),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_flipped_byte_is_caught_or_changes_nothing_read(tmp_path, case):
  write, name, load, unchecked_of = CASES[case]
  write(str(tmp_path))
  path = os.path.join(tmp_path, name)
  with open(path, "rb") as f:
    original = f.read()
  expected = load(str(tmp_path))
  unchecked = unchecked_of(original)
  rng = np.random.default_rng(22)
  positions = rng.choice(len(original), N_POSITIONS, replace=False)
  caught = 0
  for pos in positions:
    damaged = bytearray(original)
    damaged[pos] ^= int(rng.integers(1, 256))
    with open(path, "wb") as f:
      f.write(damaged)
    try:
      got = load(str(tmp_path))
    except UserError as e:
      message = str(e)
      assert path in message and "\n" not in message, (pos, message)
      caught += 1
      continue
    # Not caught: only a field no checksum covers, and what is read is unchanged.
    assert pos in unchecked, (case, int(pos), len(original))
    for a, b in zip(got, expected):
      np.testing.assert_array_equal(a, b)
  with open(path, "wb") as f:
    f.write(original)
  # All but a few header bytes are covered: most positions must be caught.
  assert caught >= N_POSITIONS - 3, (case, caught)


def test_truncated_and_appended_files_are_caught(tmp_path):
  for case in ("cifar", "mnist", "npz"):
    root = tmp_path / case
    root.mkdir()
    write, name, load, _ = CASES[case]
    write(str(root))
    path = os.path.join(root, name)
    with open(path, "rb") as f:
      original = f.read()
    for damaged in (original[:-1], original[:len(original) // 2], original + b"\0junk"):
      with open(path, "wb") as f:
        f.write(damaged)
      if case == "npz" and damaged.endswith(b"junk"):
        continue  # zip readers locate the end record from the back: trailing bytes ok
      with pytest.raises(UserError, match=path):
        load(str(root))


def test_loaders_check_record_counts_and_labels(tmp_path):
  with open(tmp_path / "t10k-images-idx3-ubyte", "wb") as f:
    f.write(_idx(np.zeros((2, 28, 28), np.uint8)))
  with open(tmp_path / "t10k-labels-idx1-ubyte", "wb") as f:
    f.write(_idx(np.array([3, 12], np.uint8)))
  with pytest.raises(UserError, match="label 12 is outside 0..9"):
    mnist.read_mnist(str(tmp_path), "test")
  with open(tmp_path / "t10k-labels-idx1-ubyte", "wb") as f:
    f.write(_idx(np.array([3], np.uint8)))
  with pytest.raises(UserError, match="2 images but .* 1 labels"):
    mnist.read_mnist(str(tmp_path), "test")
  with pytest.raises(UserError, match="empty file"):
    cifar10.decode_records(b"", "x.bin")


def test_damaged_archive_through_the_cli_is_exit_2_naming_the_file(tmp_path):
  _cifar_archive(str(tmp_path / cifar10.ARCHIVE), n_train=8)
  path = tmp_path / cifar10.ARCHIVE
  buf = bytearray(path.read_bytes())
  buf[len(buf) // 2] ^= 0x10
  path.write_bytes(bytes(buf))
  r = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--mode", "train",
       "--config", "configs/tiny.py:configs/vp/cifar10_ddpmpp_continuous.py",
       "--workdir", str(tmp_path / "w"), f"--config.data.data_dir={tmp_path}",
       "--config.data.image_size=32", "--config.training.batch_size=4",
       "--config.training.n_iters=1", "--compilation_cache_dir="],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and str(path) in lines[0] and "damaged" in lines[0], lines
