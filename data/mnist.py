"""MNIST (and Fashion-MNIST, which shares the layout) from its idx files, gzipped or plain
(the format: `decode_idx`)."""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from common.choices import check_choice
from common.errors import MissingFileError, UserError

IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
NUM_CLASSES = 10


def decode_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
  """The array stored in idx bytes, in native byte order, shape from its header.

  Raises ValueError naming `source` on a bad magic number (first two bytes not zero or
  an unknown type code) or a length that disagrees with the header.

  The idx format (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
  0x0000TTDD, where TT is the element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
  0x0D float32, 0x0E float64) and DD the number of dimensions; then DD big-endian uint32
  sizes; then the elements, big-endian, row-major. MNIST's image files have magic 0x00000803
  (uint8, N x 28 x 28) and its label files 0x00000801 (uint8, N). Files may be gzipped
  (`.gz`, as distributed) or plain.
  """
  if len(buf) < 4:
    raise UserError(f"{source}: {len(buf)} bytes is too short for an idx header")
  magic = int.from_bytes(buf[:4], "big")
  zero, type_code, ndim = buf[0] << 8 | buf[1], buf[2], buf[3]
  if zero != 0 or type_code not in IDX_DTYPES or ndim == 0:
    raise UserError(f"{source}: bad idx magic number 0x{magic:08X}; expected 0x0000TTDD "
                    f"with type TT in {{{', '.join(f'{c:02X}' for c in IDX_DTYPES)}}} and "
                    f"DD >= 1 dimensions (MNIST images 0x{IMAGES_MAGIC:08X}, labels "
                    f"0x{LABELS_MAGIC:08X}); is the file gzipped without a .gz name?")
  header = 4 + 4 * ndim
  if len(buf) < header:
    raise UserError(f"{source}: truncated idx header ({len(buf)} bytes, {ndim} dims)")
  dims = tuple(int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  dtype = IDX_DTYPES[type_code]
  expected = int(np.prod(dims)) * dtype.itemsize
  if len(buf) - header != expected:
    raise UserError(f"{source}: idx header says shape {dims} of {dtype.name} "
                    f"({expected} bytes) but {len(buf) - header} bytes follow it")
  array = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
  return array.astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
  """The array in an idx file (gzipped if its name ends in .gz), shape from its header."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    # read() to the end: gzip checks its CRC-32 and length trailer there.
    with opener(path, "rb") as f:
      buf = f.read()
  except (OSError, EOFError, zlib.error) as e:
    what = "damaged or not a gzip file" if path.endswith(".gz") else "unreadable"
    raise UserError(f"{path}: {what} ({e.__class__.__name__}: {e})") from None
  return decode_idx(buf, path)


def _find(data_dir: str, stem: str) -> str:
  # The distributed names (train-images-idx3-ubyte) and the dotted variant some mirrors
  # use (train-images.idx3-ubyte), each gzipped or not.
  dotted = stem.replace("-idx", ".idx")
  for name in (stem + ".gz", stem, dotted + ".gz", dotted):
    p = os.path.join(data_dir, name)
    if os.path.isfile(p):
      return p
  raise MissingFileError(f"MNIST file not found: expected {stem}.gz or {stem} under "
                         f"{data_dir!r}")


def read_mnist(data_dir: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """MNIST images uint8 (N, 28, 28, 1) and labels int32 (N,) from the idx files in data_dir.

  split 'train' reads train-{images-idx3,labels-idx1}-ubyte[.gz] (N = 60 000 for the full
  set), 'test' reads t10k-... (N = 10 000). Raises ValueError if the magic numbers are not
  MNIST's or the image and label counts differ.
  """
  check_choice(split, sorted(SPLIT_PREFIX), "MNIST split")
  if not os.path.isdir(data_dir):
    raise MissingFileError(f"MNIST directory {data_dir!r} does not exist (expected the idx "
                           "files train-images-idx3-ubyte[.gz] etc. in it)")
  prefix = SPLIT_PREFIX[split]
  image_path = _find(data_dir, f"{prefix}-images-idx3-ubyte")
  label_path = _find(data_dir, f"{prefix}-labels-idx1-ubyte")
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.dtype != np.uint8 or images.ndim != 3:
    raise UserError(f"{image_path}: expected uint8 images (N, H, W) (magic "
                    f"0x{IMAGES_MAGIC:08X}); got {images.dtype.name} of shape {images.shape}")
  if labels.dtype != np.uint8 or labels.ndim != 1:
    raise UserError(f"{label_path}: expected uint8 labels (N,) (magic 0x{LABELS_MAGIC:08X}); "
                    f"got {labels.dtype.name} of shape {labels.shape}")
  if len(images) != len(labels):
    raise UserError(f"{image_path} has {len(images)} images but {label_path} has "
                    f"{len(labels)} labels")
  if not len(images):
    raise UserError(f"{image_path}: no images (the idx header says 0 records)")
  if labels.max() >= NUM_CLASSES:
    raise UserError(f"{label_path}: label {labels.max()} is outside 0..{NUM_CLASSES - 1}"
                    " (MNIST and Fashion-MNIST have 10 classes)")
  return images[..., None], labels.astype(np.int32)
