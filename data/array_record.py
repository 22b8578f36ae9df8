"""Image records in ArrayRecord shards: the on-disk format for data sets larger than memory.
A split is a folder of `<split>-SSSSS-of-NNNNN.array_record` shards plus a JSON sidecar
`<split>.json`; `encode`/`decode` give the record layout, `Metadata` the sidecar's fields.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np

from common import atomic
from common.atomic import atomic_path
from common.errors import MissingFileError, UserError

FORMAT = "score_flow_jax.image_records.v1"
SUFFIX = ".array_record"
LABEL_BYTES = 4
# group_size 1: a record is its own chunk (random access); uncompressed: raw uint8
# images gain little from compression and the reader then spends no CPU on it.
WRITER_OPTIONS = "group_size:1,uncompressed"
# Random access: no read-ahead (the default buffers 16 MB around each read; 4x slower for
# scattered 256 px records).
READER_OPTIONS = "readahead_buffer_size:0"


def _array_record():
  from array_record.python import array_record_module  # optional: the 'data' install
  return array_record_module


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}{SUFFIX}"


def metadata_path(directory: str, split: str) -> str:
  return os.path.join(directory, f"{split}.json")


def encode(image: np.ndarray, label: int) -> bytes:
  """One example -> record bytes: int32 LE label, then the uint8 HWC pixels.

  Each record is one example: a 4-byte little-endian int32 label (-1 when unlabelled)
  followed by the image's H * W * C uint8 pixels in HWC order.
  """
  return np.int32(label).astype("<i4").tobytes() + np.ascontiguousarray(image, np.uint8).tobytes()


def decode(record: bytes, shape: tuple[int, int, int], where: str) -> tuple[np.ndarray, int]:
  """Record bytes -> (uint8 image of `shape`, label). UserError naming `where` when the
  length is not 4 + H*W*C bytes (a corrupt record or a shard of another image size)."""
  expected = LABEL_BYTES + int(np.prod(shape))
  if len(record) != expected:
    raise UserError(f"{where}: record of {len(record)} bytes, expected {expected} "
                    f"(label + {shape[0]}x{shape[1]}x{shape[2]} uint8); corrupt record")
  label = int(np.frombuffer(record, "<i4", 1)[0])
  return np.frombuffer(record, np.uint8, offset=LABEL_BYTES).reshape(shape), label


def write_shard(path: str, examples: Iterable[tuple[np.ndarray, int]]) -> int:
  """Writes the (image, label) pairs to the shard `path` atomically (common.atomic: a
  temporary name, fsynced and renamed when complete, so a killed writer never leaves a
  shard that looks finished); returns the number of records.

  Records are written with group_size 1, so any record is read without decoding its
  neighbours (array_record's random access).
  """
  n = 0
  with atomic_path(path) as tmp:
    writer = _array_record().ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for image, label in examples:
        writer.write(encode(image, label))
        n += 1
    finally:
      writer.close()
  return n


def count_records(path: str) -> int:
  """Records in a shard; UserError naming it if it cannot be opened (truncated, not an
  ArrayRecord file)."""
  try:
    reader = _array_record().ArrayRecordReader(path)
  except (RuntimeError, OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable ArrayRecord shard (truncated or corrupt: "
                    f"{str(e).splitlines()[0][:160]})") from None
  try:
    return int(reader.num_records())
  finally:
    reader.close()


@dataclasses.dataclass(frozen=True)
class Metadata:
  """A split's sidecar. shards: ((file name, records, bytes), ...) in order.

  The sidecar `<split>.json` (see `write_metadata`) holds the image size, channels, record
  count, each shard's record count and byte size, and the source's fingerprint.
  """
  split: str
  image_size: tuple[int, int]
  channels: int
  count: int
  shards: tuple[tuple[str, int, int], ...]
  source: dict
  class_names: tuple[str, ...] = ()

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.image_size[0], self.image_size[1], self.channels)

  def to_json(self) -> dict:
    return {"format": FORMAT, "split": self.split, "image_size": list(self.image_size),
            "channels": self.channels, "count": self.count,
            "shards": [{"file": f, "count": c, "bytes": b} for f, c, b in self.shards],
            "source": dict(self.source), "class_names": list(self.class_names)}


def write_metadata(directory: str, meta: Metadata) -> str:
  """Writes `<directory>/<split>.json` atomically; returns its path."""
  return atomic.write_json(metadata_path(directory, meta.split), meta.to_json(), indent=1,
                           sort_keys=True)


def has_shards(directory: str, split: str) -> bool:
  """Whether `directory` holds an ArrayRecord split written by convert."""
  path = metadata_path(directory, split)
  if not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def read_metadata(directory: str, split: str) -> Metadata:
  """The split's sidecar, with every shard checked to exist and to have the byte size it
  was written with (a truncated copy is named). UserError/MissingFileError, one line."""
  path = metadata_path(directory, split)
  if not os.path.isfile(path):
    raise MissingFileError(f"{path} does not exist: expected ArrayRecord shards written by "
                           "`main.py --mode convert` (README 'Data larger than memory')")
  try:
    with open(path) as f:
      raw = json.load(f)
    if raw.get("format") != FORMAT:
      raise UserError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    meta = Metadata(split=str(raw["split"]), image_size=tuple(map(int, raw["image_size"])),
                    channels=int(raw["channels"]), count=int(raw["count"]),
                    shards=tuple((str(s["file"]), int(s["count"]), int(s["bytes"]))
                                 for s in raw["shards"]),
                    source=dict(raw.get("source", {})),
                    class_names=tuple(raw.get("class_names", ())))
  except (ValueError, KeyError, TypeError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"{path}: not a valid shard metadata file ({e!r})") from None
  if sum(c for _, c, _ in meta.shards) != meta.count:
    raise UserError(f"{path}: shard counts add up to {sum(c for _, c, _ in meta.shards)}, "
                    f"not the recorded count {meta.count}")
  for name, _, size in meta.shards:
    shard = os.path.join(directory, name)
    if not os.path.isfile(shard):
      raise MissingFileError(f"{shard}: shard listed in {path} is missing")
    actual = os.path.getsize(shard)
    if actual != size:
      raise UserError(f"{shard}: {actual} bytes, but it was written with {size} "
                      f"({'truncated' if actual < size else 'changed'} copy)")
  return meta


class ArrayRecordImages:
  """Random-access source over a split's ArrayRecord shards.

  `len(src)` records; `src.read(indices)` -> (uint8 (n, H, W, C), int32 (n,)) in the
  order of `indices`. Readers open lazily in the process that reads (the object pickles
  without them, so grain's worker processes open their own).
  """

  def __init__(self, directory: str, split: str = "train"):
    self.directory, self.split = os.fspath(directory), split
    self.meta = read_metadata(self.directory, split)
    self.shape = self.meta.shape
    self.class_names = self.meta.class_names
    counts = np.array([c for _, c, _ in self.meta.shards], np.int64)
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    self._readers: dict[int, object] = {}

  def __len__(self) -> int:
    return self.meta.count

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"] = {}
    return state

  def fingerprint(self) -> str:
    """The source fingerprint recorded by convert plus the shards' layout (no I/O)."""
    from data import fingerprint
    return fingerprint.digest(json.dumps(self.meta.to_json(), sort_keys=True).encode())

  def _reader(self, shard: int):
    if shard not in self._readers:
      path = os.path.join(self.directory, self.meta.shards[shard][0])
      try:
        reader = _array_record().ArrayRecordReader(path, READER_OPTIONS)
      except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable ArrayRecord shard ("
                        f"{str(e).splitlines()[0][:160]})") from None
      if reader.num_records() != self.meta.shards[shard][1]:
        raise UserError(f"{path}: {reader.num_records()} records, the metadata says "
                        f"{self.meta.shards[shard][1]}")
      self._readers[shard] = reader
    return self._readers[shard]

  def check(self) -> None:
    """Opens every shard once (index and footer verified by array_record)."""
    for shard in range(len(self.meta.shards)):
      self._reader(shard)

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    images = np.empty((indices.size,) + self.shape, np.uint8)
    return images, self.read_into(indices, images)

  def read_into(self, indices: Sequence[int], images: np.ndarray,
                mirror: np.ndarray | None = None) -> np.ndarray:
    """Decodes the records `indices` (n,) into images uint8 (n, H, W, C) (C-contiguous),
    example k mirrored left-right where mirror[k] (transforms.horizontal_flip's result,
    written straight from the record: no second pass); returns their int32 labels (n,)."""
    from data.transforms import mirror_into
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"record index out of range 0..{len(self) - 1}")
    mirror = np.zeros(indices.size, bool) if mirror is None else np.asarray(mirror, bool)
    labels = np.empty(indices.size, np.int32)
    shard_of = np.searchsorted(self._starts, indices, side="right") - 1
    for shard in np.unique(shard_of):
      where = np.flatnonzero(shard_of == shard)
      local = (indices[where] - self._starts[shard]).tolist()
      name = os.path.join(self.directory, self.meta.shards[shard][0])
      reader = self._reader(int(shard))
      try:
        records = reader.read(local)
      except RuntimeError as e:
        bad, why = local[0], str(e)
        for i in local:  # name the record: read them one by one
          try:
            reader.read([i])
          except RuntimeError as e1:
            bad, why = i, str(e1)
            break
        raise UserError(f"{name}: record {bad} is corrupt ({why.splitlines()[0][:160]})"
                        ) from None
      for k, record, i in zip(where, records, local):
        image, labels[k] = decode(record, self.shape, f"{name} record {i}")
        if mirror[k]:
          mirror_into(images[k], image)
        else:
          images[k] = image
    return labels

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    images, labels = self.read([index])
    return images[0], int(labels[0])

  def close(self) -> None:
    for reader in self._readers.values():
      reader.close()
    self._readers = {}
