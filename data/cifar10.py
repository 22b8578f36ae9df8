"""CIFAR-10 from its binary distribution (https://www.cs.toronto.edu/~kriz/cifar.html), read
in place from the archive or the extracted folder, no pickle involved (the record format:
`decode_records`)."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from typing import BinaryIO

import numpy as np

from common.choices import check_choice
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

  `cifar-10-binary.tar.gz` holds `cifar-10-batches-bin/data_batch_{1..5}.bin` (train,
  50 000 images) and `test_batch.bin` (10 000 images). Each file is a sequence of 3073-byte
  records: 1 label byte (0..9), then the 32 x 32 x 3 image as 3072 bytes in CHW order (the
  1024 red values row by row, then green, then blue). The archive is read in place with
  tarfile, or the extracted folder is read; no pickle is involved.
  """
  if len(buf) % RECORD_BYTES:
    raise UserError(f"{source}: {len(buf)} bytes is not a whole number of {RECORD_BYTES}-"
                    "byte CIFAR-10 records (1 label byte + 3072 image bytes)")
  if not buf:
    raise UserError(f"{source}: empty file (no CIFAR-10 records)")
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


_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


def _open_decompressed(raw: BinaryIO) -> BinaryIO:
  """The decompressed stream of a gzip, bzip2 or xz file (by its magic bytes), or the
  file itself for a plain tar."""
  head = raw.read(6)
  raw.seek(0)
  for magic, kind in _COMPRESSED.items():
    if head.startswith(magic):
      if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
      if kind == "bz2":
        return bz2.BZ2File(raw, "rb")
      return lzma.LZMAFile(raw, "rb")
  return raw


def _read_archive(path: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
  """{member base name: bytes} of the wanted members of the tar archive at `path`.

  The compressed stream is read to its very end, so that gzip's CRC-32 and length
  trailer (bzip2's and xz's checks likewise) cover every byte of the archive: tarfile
  alone stops at the end-of-archive blocks, before the trailer, and treats a damaged
  member header as the end of the archive. A damaged file raises UserError naming it.
  """
  blobs: dict[str, bytes] = {}
  try:
    with open(path, "rb") as raw:
      stream = _open_decompressed(raw)
      with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
          name = os.path.basename(member.name)
          if member.isfile() and name in wanted:
            blobs[name] = tar.extractfile(member).read()
      while stream.read(1 << 20):  # to the end: the trailer's checks run there
        pass
  except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
    raise UserError(f"{path}: damaged or not a CIFAR-10 archive "
                    f"({e.__class__.__name__}: {e})") from None
  return blobs


def read_cifar10(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 images uint8 (N, 32, 32, 3) and labels int32 (N,) of a split.

  Args:
    path: the directory holding `cifar-10-binary.tar.gz` or `cifar-10-batches-bin/`, that
      folder itself, or the path of the archive.
    split: 'train' (data_batch_1..5, N = 50 000 for the full set) or 'test'
      (test_batch, N = 10 000). Records keep the files' order.
  """
  check_choice(split, sorted(SPLIT_FILES), "CIFAR-10 split")
  wanted = SPLIT_FILES[split]
  kind, where = _locate(path)
  blobs: dict[str, bytes] = {}
  if kind == "archive":
    blobs = _read_archive(where, wanted)
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
