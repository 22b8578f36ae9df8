"""CIFAR-10 from its binary distribution (https://www.cs.toronto.edu/~kriz/cifar.html).

`cifar-10-binary.tar.gz` holds `cifar-10-batches-bin/data_batch_{1..5}.bin` (train,
50 000 images) and `test_batch.bin` (10 000 images). Each file is a sequence of 3073-byte
records: 1 label byte (0..9), then the 32 x 32 x 3 image as 3072 bytes in CHW order (the
1024 red values row by row, then green, then blue). The archive is read in place with
tarfile, or the extracted folder is read; no pickle is involved.
"""
from __future__ import annotations

import os
import tarfile

import numpy as np

from common.errors import MissingFileError, UserError

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck")
SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}


def decode_records(buf: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 binary records -> images uint8 (N, 32, 32, 3) HWC and labels int32 (N,).

  `source` names the file in error messages. Raises ValueError if the length is not a
  multiple of 3073 bytes or a label is not in 0..9.
  """
  if len(buf) % RECORD_BYTES:
    raise UserError(f"{source}: {len(buf)} bytes is not a whole number of {RECORD_BYTES}-"
                    "byte CIFAR-10 records (1 label byte + 3072 image bytes)")
  records = np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD_BYTES)
  labels = records[:, 0].astype(np.int32)
  if labels.size and labels.max() >= NUM_CLASSES:
    raise UserError(f"{source}: label {labels.max()} is outside 0..{NUM_CLASSES - 1}; "
                    "is this the CIFAR-100 archive or not a CIFAR-10 file?")
  # Stored CHW per record; the library's images are HWC.
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _locate(path: str) -> tuple[str, str]:
  """('archive', file) or ('folder', dir) for the CIFAR-10 data under/at path."""
  if os.path.isfile(path):
    return "archive", path
  candidates = [("archive", os.path.join(path, ARCHIVE)), ("folder", os.path.join(path, FOLDER)),
                ("folder", path)]
  for kind, p in candidates:
    if kind == "archive" and os.path.isfile(p):
      return kind, p
    if kind == "folder" and os.path.isfile(os.path.join(p, SPLIT_FILES["test"][0])):
      return kind, p
  raise MissingFileError(f"CIFAR-10 not found: expected {ARCHIVE} or {FOLDER}/ (with "
                         f"data_batch_1.bin ... test_batch.bin) under {path!r}")


def read_cifar10(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 images uint8 (N, 32, 32, 3) and labels int32 (N,) of a split.

  Args:
    path: the directory holding `cifar-10-binary.tar.gz` or `cifar-10-batches-bin/`, that
      folder itself, or the path of the archive.
    split: 'train' (data_batch_1..5, N = 50 000 for the full set) or 'test'
      (test_batch, N = 10 000). Records keep the files' order.
  """
  if split not in SPLIT_FILES:
    raise UserError(f"unknown CIFAR-10 split {split!r}; choose from {sorted(SPLIT_FILES)}")
  wanted = SPLIT_FILES[split]
  kind, where = _locate(path)
  blobs: dict[str, bytes] = {}
  if kind == "archive":
    try:
      with tarfile.open(where, "r:*") as tar:
        for member in tar:
          name = os.path.basename(member.name)
          if member.isfile() and name in wanted:
            blobs[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
      raise UserError(f"{where}: not a readable CIFAR-10 archive ({e})") from e
  else:
    for name in wanted:
      f = os.path.join(where, name)
      if os.path.isfile(f):
        with open(f, "rb") as fh:
          blobs[name] = fh.read()
  missing = [n for n in wanted if n not in blobs]
  if missing:
    raise MissingFileError(f"{where}: CIFAR-10 {split} split is missing {', '.join(missing)} "
                           f"(expected {FOLDER}/{{{', '.join(wanted)}}})")
  parts = [decode_records(blobs[n], f"{where}:{n}") for n in wanted]
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
