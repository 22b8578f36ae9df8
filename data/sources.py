"""Random-access image sources (`len(src)`, `src.read(indices)`, `src.fingerprint()`) over
ArrayRecord shards, CIFAR-10 binaries, MNIST idx files, .npz archives and image folders,
without holding the split in memory where the format allows; data.images.get_source picks
one for a config.
"""
from __future__ import annotations

import os
import struct
import zipfile
from typing import Sequence

import numpy as np

from common.choices import check_choice
from common.errors import MissingFileError, UserError
from data import cifar10, fingerprint, image_folder, mnist, npz


class ArraySource:
  """Arrays already in memory (a decoded compressed archive)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, fingerprint_: str,
               class_names: Sequence[str] = ()):
    self.images, self.labels = images, np.asarray(labels, np.int32)
    self.shape = tuple(images.shape[1:])
    self.class_names = tuple(class_names)
    self._fingerprint = fingerprint_

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    return self.images[indices], self.labels[indices]

  def fingerprint(self) -> str:
    return self._fingerprint


class _Mapped:
  """Shared logic of memory-mapped sources: maps opened lazily per process."""

  _maps: list | None = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_maps"] = None
    return state

  def fingerprint(self) -> str:
    return fingerprint.files_fingerprint(self.files)


class CifarBinarySource(_Mapped):
  """CIFAR-10's binary files: 3073-byte records (label, then CHW pixels), memory-mapped
  from the extracted folder; the .tar.gz archive is read into memory by data.cifar10."""

  def __init__(self, path: str, split: str = "train"):
    check_choice(split, cifar10.SPLIT_FILES, "CIFAR-10 split")
    kind, where = cifar10._locate(path)
    self.kind = kind
    if kind == "archive":
      self.files = [where]
      self._array = ArraySource(*cifar10.read_cifar10(where, split), fingerprint_="",
                                class_names=cifar10.CLASS_NAMES)
      counts = [len(self._array)]
    else:
      self.files = [os.path.join(where, n) for n in cifar10.SPLIT_FILES[split]]
      counts = []
      for f in self.files:
        if not os.path.isfile(f):
          raise MissingFileError(f"{f}: CIFAR-10 {split} file is missing")
        size = os.path.getsize(f)
        if size % cifar10.RECORD_BYTES:
          raise UserError(f"{f}: {size} bytes is not a whole number of "
                          f"{cifar10.RECORD_BYTES}-byte CIFAR-10 records (truncated?)")
        counts.append(size // cifar10.RECORD_BYTES)
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.shape = cifar10.IMAGE_SHAPE
    self.class_names = cifar10.CLASS_NAMES

  def __len__(self) -> int:
    return int(self._starts[-1])

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    if self.kind == "archive":
      return self._array.read(indices)
    if self._maps is None:
      self._maps = [np.memmap(f, np.uint8, "r").reshape(-1, cifar10.RECORD_BYTES)
                    for f in self.files]
    indices = np.asarray(indices, np.int64)
    file_of = np.searchsorted(self._starts, indices, side="right") - 1
    records = np.stack([self._maps[f][i - self._starts[f]]
                        for f, i in zip(file_of, indices)]) if indices.size else \
        np.empty((0, cifar10.RECORD_BYTES), np.uint8)
    return cifar10.decode_records(records.tobytes(), self.files[0])


class MnistSource(_Mapped):
  """MNIST idx files: memory-mapped past the header when uncompressed, read by data.mnist
  (into memory) when gzipped."""

  def __init__(self, data_dir: str, split: str = "train"):
    check_choice(split, mnist.SPLIT_PREFIX, "MNIST split")
    prefix = mnist.SPLIT_PREFIX[split]
    self.files = [mnist._find(data_dir, f"{prefix}-images-idx3-ubyte"),
                  mnist._find(data_dir, f"{prefix}-labels-idx1-ubyte")]
    self.gz = any(f.endswith(".gz") for f in self.files)
    if self.gz:
      self._array = ArraySource(*mnist.read_mnist(data_dir, split), fingerprint_="")
      n = len(self._array)
      self.shape = self._array.shape
    else:
      heads = []
      for f, ndim in zip(self.files, (3, 1)):
        with open(f, "rb") as fh:
          head = fh.read(4 + 4 * ndim)
        magic = int.from_bytes(head[:4], "big")
        want = mnist.IMAGES_MAGIC if ndim == 3 else mnist.LABELS_MAGIC
        if magic != want:
          raise UserError(f"{f}: idx magic 0x{magic:08X}, expected 0x{want:08X}")
        dims = struct.unpack(f">{ndim}I", head[4:])
        if os.path.getsize(f) != len(head) + int(np.prod(dims)):
          raise UserError(f"{f}: {os.path.getsize(f)} bytes, the idx header says "
                          f"{len(head) + int(np.prod(dims))} (truncated?)")
        heads.append(dims)
      (n, h, w), (n_labels,) = heads
      if n != n_labels:
        raise UserError(f"{self.files[0]} has {n} images but {self.files[1]} has "
                        f"{n_labels} labels")
      self.shape = (h, w, 1)
    self.n = n
    self.class_names = tuple(map(str, range(10)))

  def __len__(self) -> int:
    return self.n

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    if self.gz:
      return self._array.read(indices)
    if self._maps is None:
      h, w, _ = self.shape
      self._maps = [np.memmap(self.files[0], np.uint8, "r", 16, (self.n, h, w)),
                    np.memmap(self.files[1], np.uint8, "r", 8, (self.n,))]
    indices = np.asarray(indices, np.int64)
    return (np.asarray(self._maps[0][indices])[..., None],
            np.asarray(self._maps[1][indices]).astype(np.int32))


def _stored_member(path: str, key: str) -> tuple[int, tuple, np.dtype, bool] | None:
  """(offset, shape, dtype, fortran) of the .npy array `key` inside the zip `path` if it
  is stored uncompressed (np.savez), else None (np.savez_compressed)."""
  with zipfile.ZipFile(path) as z:
    try:
      info = z.getinfo(key + ".npy")
    except KeyError:
      return None
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    return f.tell(), shape, dtype, fortran


class NpzSource(_Mapped):
  """An .npz of 'images'/'x' (+ 'labels'/'y'): memory-mapped when stored uncompressed
  (np.savez) with uint8 NHWC or NHW images; otherwise read by data.npz into memory."""

  def __init__(self, path: str):
    self.files = [path]
    self.mapped = None
    if os.path.isfile(path):
      try:
        with zipfile.ZipFile(path) as z:
          names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        image_key = next((k for k in npz.IMAGE_KEYS if k in names), None)
        label_key = next((k for k in npz.LABEL_KEYS if k in names), None)
        images = _stored_member(path, image_key) if image_key else None
        labels = _stored_member(path, label_key) if label_key else None
      except (zipfile.BadZipFile, OSError, ValueError):
        images = labels = None
      ok = (images is not None and images[2] == np.uint8 and not images[3]
            and len(images[1]) in (3, 4) and (label_key is None or labels is not None))
      if ok:
        self.mapped = (images, labels)
    if self.mapped is None:
      self._array = ArraySource(*npz.read_npz(path), fingerprint_="")
      self.shape, self.n = self._array.shape, len(self._array)
    else:
      (_, shape, _, _), labels = self.mapped
      self.n = int(shape[0])
      self.shape = tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())
      if labels is not None and tuple(labels[1]) != (self.n,):
        raise UserError(f"{path}: labels have shape {labels[1]}; expected ({self.n},)")
    self.class_names = ()

  def __len__(self) -> int:
    return self.n

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    if self.mapped is None:
      return self._array.read(indices)
    if self._maps is None:
      (offset, shape, dtype, _), labels = self.mapped
      self._maps = [np.memmap(self.files[0], dtype, "r", offset, shape)]
      if labels is not None:
        self._maps.append(np.memmap(self.files[0], labels[2], "r", labels[0], labels[1]))
    indices = np.asarray(indices, np.int64)
    images = np.asarray(self._maps[0][indices]).reshape((indices.size,) + self.shape)
    labels = (np.asarray(self._maps[1][indices]).astype(np.int32) if len(self._maps) > 1
              else np.full(indices.size, -1, np.int32))
    return images, labels


class ImageFolderSource:
  """An image folder (data.image_folder's layout); each file is decoded when read and
  brought to image_size x image_size (after the optional center crop) as data.images
  does; image_size None keeps the stored size (then all must share one)."""

  def __init__(self, path: str, num_channels: int = 3, image_size: int | None = None,
               crop: int | None = None):
    self.path = path
    self.files, self.labels, self.class_names = image_folder.list_images(path)
    self.num_channels, self.image_size, self.crop = num_channels, image_size, crop
    if image_size is not None:
      self.shape = (image_size, image_size, num_channels)
    else:
      self.shape = image_folder.load_image(self.files[0], num_channels).shape

  def __len__(self) -> int:
    return len(self.files)

  def load(self, index: int) -> np.ndarray:
    image = image_folder.load_image(self.files[index], self.num_channels, self.image_size,
                                    self.crop)
    if image.shape != self.shape:
      raise UserError(f"{self.files[index]} is {image.shape[0]}x{image.shape[1]} but "
                      f"{self.files[0]} is {self.shape[0]}x{self.shape[1]}; set an "
                      "image_size to resize them to")
    return image

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    images = np.empty((indices.size,) + tuple(self.shape), np.uint8)
    for k, i in enumerate(indices):
      images[k] = self.load(int(i))
    return images, self.labels[indices]

  def fingerprint(self) -> str:
    return fingerprint.files_fingerprint(self.files, root=self.path)


class SourceImages:
  """A read-only uint8 array view (N, H, W, C) of a source's images: `len`, `shape`,
  `dtype`, and `view[a:b]` / `view[indices]` read just those examples (labels dropped),
  so a pass in chunks never holds the split."""

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, source):
    self.source = source
    self.shape = (len(source),) + tuple(source.shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, slice):
      return self.source.read(np.arange(*key.indices(len(self))))[0]
    indices = np.asarray(key)
    if indices.dtype == bool or indices.ndim > 1 or not np.issubdtype(indices.dtype,
                                                                        np.integer):
      raise TypeError(f"SourceImages takes a slice or integer indices, not {key!r}")
    if indices.ndim == 0:
      return self.source.read([int(indices) % len(self)])[0][0]
    return self.source.read(np.where(indices < 0, indices + len(self), indices))[0]
