"""Convert a data set's own files into ArrayRecord shards (data/array_record.py), resumably
and with one worker process per core; `convert(config, out_dir)` is the entry point and
`convert_split` documents the reading, resizing and restart rules.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from typing import Callable

import numpy as np
from PIL import Image

from common import atomic
from common.errors import UserError
from data import array_record, fingerprint, image_folder, sources, transforms

CELEBA_CROP = 140
TARGET_SHARD_BYTES = 256 << 20  # ~256 MB shards: few files, each a unit of resumption


def _resize_to(image: np.ndarray, size: int) -> np.ndarray:
  """score_sde's CIFAR-10/SVHN rule: resize to size x size (antialiased bilinear)."""
  return transforms.resize(image, size)


def _celeba(image: np.ndarray, size: int) -> np.ndarray:
  """score_sde's CelebA: central crop 140 px, then shorter side to `size` (the crop is
  square). Images already smaller than the crop are taken as cropped (data/images.py)."""
  crop = CELEBA_CROP if min(image.shape[:2]) >= CELEBA_CROP else None
  return transforms.resize_and_crop(image, size, crop)


def _lsun(image: np.ndarray, size: int) -> np.ndarray:
  """score_sde's LSUN: at 128 px shorter side to 128 then central crop (bilinear); at
  other sizes (256) central square crop of the shorter side, then an antialiased bicubic
  resize (its crop_resize)."""
  if size == 128:
    return transforms.resize_and_crop(image, size)
  side = min(image.shape[:2])
  square = transforms.center_crop(image, side)
  if side == size:
    return np.ascontiguousarray(square)
  return _pil_resize(square, size, Image.BICUBIC)


def _fixed(image: np.ndarray, size: int) -> np.ndarray:
  """FFHQ / CelebA-HQ: score_sde reads them at a fixed resolution (ProGAN's dataset_tool
  halves by 2x2 box averages); square images are box-filtered down to `size`."""
  if image.shape[0] != image.shape[1]:
    raise UserError(f"image of {image.shape[0]}x{image.shape[1]} is not square")
  if image.shape[0] == size:
    return image
  return _pil_resize(image, size, Image.BOX)


def _pil_resize(image: np.ndarray, size: int, method) -> np.ndarray:
  c = image.shape[2]
  if c not in (1, 3, 4):
    return np.stack([_pil_resize(image[..., i:i + 1], size, method)[..., 0]
                     for i in range(c)], -1)
  pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if c == 1 else image))
  return np.asarray(pil.resize((size, size), method)).reshape(size, size, c)


def _images_py(image: np.ndarray, size: int) -> np.ndarray:
  """IMAGE_FOLDER: data/images.py's rule (shorter side to size, central crop)."""
  return transforms.resize_and_crop(image, size)


# dataset -> (geometry, whether every source image must have one size)
GEOMETRY: dict[str, tuple[Callable[[np.ndarray, int], np.ndarray], bool]] = {
    "CIFAR10": (_resize_to, True), "MNIST": (_resize_to, True), "NPZ": (_resize_to, True),
    "DIGITS": (_resize_to, True), "IMAGE_FOLDER": (_images_py, False),
    "CELEBA": (_celeba, False), "LSUN": (_lsun, False), "FFHQ": (_fixed, True),
    "CelebAHQ": (_fixed, True),
}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclasses.dataclass
class _Input:
  """What a worker needs to read items [start, stop) of a split (picklable)."""
  dataset: str
  size: int
  channels: int
  files: list[str] | None          # image folders: the files; labels beside them
  labels: np.ndarray | None
  array_source: object | None      # other formats: a data.sources source
  mode: str | None                 # image folders: every file's Pillow mode
  raw_shape: tuple | None          # fixed-size data sets: every image's stored size


def _open_input(config, split: str) -> tuple[_Input, int, tuple[str, ...], Callable[[], str]]:
  """(input, count, class names, fingerprint function) of a split of config.data."""
  from data import images as images_lib
  data = config.data
  name = data.dataset
  if name not in GEOMETRY:
    from common.choices import check_choice
    check_choice(name, GEOMETRY, "dataset to convert (config.data.dataset)")
  size, channels = int(data.image_size), int(data.num_channels)
  data_dir = os.path.expanduser(str(data.get("data_dir", "") or ""))
  if name != "DIGITS" and not data_dir:
    raise UserError(f"config.data.data_dir is empty; {name} is converted from a local path")
  fixed = GEOMETRY[name][1]
  kind = None
  if name not in ("CIFAR10", "MNIST", "NPZ", "DIGITS"):
    kinds = ("folder",) if name == "IMAGE_FOLDER" else ("folder", "npz")
    kind, path = images_lib._split_location(data_dir, split, kinds)
  if kind == "folder":
    files, labels, classes = image_folder.list_images(path)
    mode, raw = _reference(files[0], fixed)
    inp = _Input(name, size, channels, files, labels, None, mode, raw)
    return inp, len(files), classes, lambda: fingerprint.files_fingerprint(files, root=path)
  if kind == "npz":
    source = sources.NpzSource(path)
  elif name == "CIFAR10":
    source = sources.CifarBinarySource(data_dir, split)
  elif name == "MNIST":
    source = sources.MnistSource(data_dir, split)
  elif name == "NPZ":
    source = sources.NpzSource(data_dir if os.path.isfile(data_dir)
                               else os.path.join(data_dir, f"{split}.npz"))
  else:
    from data import digits
    x, y = digits.load_digits(split)
    source = sources.ArraySource(x, y, fingerprint.digest(x.tobytes() + y.tobytes()))
  if source.shape[2] != channels:
    raise UserError(f"{data_dir}: images have {source.shape[2]} channel(s) but "
                    f"config.data.num_channels = {channels}")
  inp = _Input(name, size, channels, None, None, source, None, None)
  return inp, len(source), tuple(getattr(source, "class_names", ())), source.fingerprint


def _reference(file: str, fixed: bool) -> tuple[str, tuple | None]:
  """The Pillow mode (and, for fixed-size sets, the size) every file must share."""
  try:
    with Image.open(file) as img:
      return img.mode, ((img.height, img.width) if fixed else None)
  except OSError as e:
    raise UserError(f"{file}: cannot decode the first image ({e})") from None


def _load_file(inp: _Input, file: str) -> tuple[np.ndarray, tuple]:
  """A file -> (uint8 HWC in the requested channels, fingerprint cache entry). Raises
  OSError for an unreadable file, UserError for one of another mode or size."""
  st = os.stat(file)
  with open(file, "rb") as f:
    raw = f.read()
  entry = (f"{os.path.abspath(file)}|{st.st_size}|{st.st_mtime_ns}",
           hashlib.sha256(raw).hexdigest())
  with Image.open(io.BytesIO(raw)) as img:
    img.load()
    if img.mode != inp.mode:
      raise UserError(f"{file}: image mode {img.mode} but the others are {inp.mode} "
                      "(mixed modes; convert them to one first)")
    if inp.raw_shape is not None and (img.height, img.width) != inp.raw_shape:
      raise UserError(f"{file}: {img.height}x{img.width} but {inp.dataset} images are all "
                      f"{inp.raw_shape[0]}x{inp.raw_shape[1]} (mixed sizes)")
    array = np.asarray(img.convert(_MODES[inp.channels]))
  return array.reshape(array.shape[0], array.shape[1], inp.channels), entry


_counter = None  # images done, shared with the parent for its progress line


def _init_worker(counter) -> None:
  global _counter
  _counter = counter


def _tick() -> None:
  if _counter is not None:
    with _counter.get_lock():
      _counter.value += 1


def _write_shard(task) -> dict:
  """Writes one shard: items [start, stop) of the input. Returns its record (also
  written to <shard>.json once the shard is in place)."""
  inp, path, start, stop = task
  geometry = GEOMETRY[inp.dataset][0]
  bad, cache = [], {}

  def examples():
    for i in range(start, stop):
      try:
        if inp.files is not None:
          raw, (key, digest) = _load_file(inp, inp.files[i])
          cache[key] = digest
          label = int(inp.labels[i])
        else:
          images, labels = inp.array_source.read([i])
          raw, label = images[0], int(labels[0])
          if inp.raw_shape is None:
            inp.raw_shape = raw.shape
          elif raw.shape != inp.raw_shape:
            raise UserError(f"{inp.dataset} item {i} is {raw.shape} but item {start} is "
                            f"{inp.raw_shape} (mixed sizes)")
        try:
          image = geometry(raw, inp.size)
        except UserError as e:
          raise UserError(f"{inp.files[i] if inp.files else f'item {i}'}: {e}") from None
      except OSError as e:
        name = inp.files[i] if inp.files is not None else f"item {i}"
        bad.append(f"{name}: unreadable, skipped ({str(e).splitlines()[0][:120]})")
        _tick()
        continue
      _tick()
      yield image, label

  count = array_record.write_shard(path, examples())
  record = {"count": count, "bytes": os.path.getsize(path), "items": [start, stop],
            "skipped": bad, "hashes": cache}
  atomic.write_json(path + ".json", record, indent=None)
  return record


def _run(tasks: list, workers: int):
  """Runs _write_shard over the tasks (in this process for one worker, else in a spawn
  pool); yields (record or None, images done so far) at least every half second."""
  global _counter
  if workers == 1:
    _counter = multiprocessing.Value("q", 0)
    for task in tasks:
      record = _write_shard(task)
      yield record, _counter.value
    return
  ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs JAX
  counter = ctx.Value("q", 0)
  with ctx.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
    results = pool.imap_unordered(_write_shard, tasks)
    for _ in range(len(tasks)):
      while True:
        try:
          record = results.next(timeout=0.5)
          break
        except multiprocessing.TimeoutError:
          yield None, counter.value
      yield record, counter.value


def _finished(path: str, start: int, stop: int) -> dict | None:
  """The record of a shard a previous run finished, if it is intact (same item range,
  byte size and record count), else None."""
  try:
    with open(path + ".json") as f:
      record = json.load(f)
    if (record["items"] != [start, stop] or not os.path.isfile(path)
        or os.path.getsize(path) != record["bytes"]):
      return None
    if array_record.count_records(path) != record["count"]:
      return None
    return record
  except (OSError, ValueError, KeyError, UserError):
    return None


def convert_split(config, split: str, out_dir: str, *, num_workers: int | None = None,
                  shard_examples: int | None = None, log=None) -> array_record.Metadata:
  """Writes the `split` of config.data as ArrayRecord shards in out_dir (below);
  returns the metadata written to out_dir/<split>.json.

  num_workers: processes (default: the machine's cores). shard_examples: records per
  shard (default: about 256 MB of pixels). log: a function of one line (default: stderr).

  The split is read from config.data.data_dir (an image folder for LSUN, FFHQ, CelebA-HQ,
  CelebA and IMAGE_FOLDER; CIFAR-10 binary; MNIST idx; .npz); every image is brought to
  config.data.image_size with score_sde's geometry for that data set (`GEOMETRY`), and
  `<split>-SSSSS-of-NNNNN.array_record` shards and `<split>.json` are written into
  out_dir, one worker process per core. Each shard is written under a temporary name and
  then renamed (temporaries a killed run left are removed at the start), and a
  `<shard>.json` beside it records its count, so a rerun after a kill keeps the finished
  shards (verified by their record count) and writes only the rest. An
  unreadable image file is skipped with one line naming it; a summary closes the split.
  """
  log = log or (lambda line: print(line, file=sys.stderr, flush=True))
  inp, n, class_names, fingerprint_fn = _open_input(config, split)
  size, channels = inp.size, inp.channels
  if n == 0:
    raise UserError(f"{config.data.data_dir}: the {split} split is empty")
  per_shard = shard_examples or max(1, TARGET_SHARD_BYTES // (size * size * channels + 4))
  num_shards = -(-n // per_shard)
  bounds = [(k * n // num_shards, (k + 1) * n // num_shards) for k in range(num_shards)]
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(out_dir):  # temporaries of a killed run (common.atomic's names)
    if name.startswith(f"{split}-") and name.endswith(".tmp"):
      os.remove(os.path.join(out_dir, name))
  paths = [os.path.join(out_dir, array_record.shard_name(split, k, num_shards))
           for k in range(num_shards)]
  records: dict[int, dict] = {}
  for k, (path, (a, b)) in enumerate(zip(paths, bounds)):
    done = _finished(path, a, b)
    if done is not None:
      records[k] = done
  todo = [k for k in range(num_shards) if k not in records]
  if records:
    log(f"{split}: keeping {len(records)} finished shard(s) of {num_shards} in {out_dir}")
  workers = max(1, min(num_workers or os.cpu_count() or 1, len(todo) or 1))
  done_before = sum(b - a for k, (a, b) in enumerate(bounds) if k in records)
  t0 = time.time()
  if todo:
    from common.progress import progress as tqdm
    bar = tqdm(total=n, initial=done_before, desc=f"convert {split}", unit="img",
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    tasks = [(inp, paths[k], *bounds[k]) for k in todo]
    for record, progress in _run(tasks, workers):
      bar.update(done_before + progress - bar.n)
      if record is not None:
        records[bounds.index(tuple(record["items"]))] = record
        for line in record["skipped"]:
          log(line)
    bar.close()
  elapsed = time.time() - t0
  # Hashes computed while reading fill the fingerprint cache, so fingerprinting the source
  # below reads no file a second time.
  cache = fingerprint._load_cache()
  for record in records.values():
    cache.update(record.get("hashes", {}))
  fingerprint._save_cache(cache)
  skipped = [line for k in range(num_shards) for line in records[k]["skipped"]]
  count = sum(records[k]["count"] for k in range(num_shards))
  if count == 0:
    raise UserError(f"{config.data.data_dir}: none of the {n} images of the {split} split "
                    "could be read")
  meta = array_record.Metadata(
      split=split, image_size=(size, size), channels=channels, count=count,
      shards=tuple((os.path.basename(paths[k]), records[k]["count"], records[k]["bytes"])
                   for k in range(num_shards)),
      source={"dataset": inp.dataset,
              "path": (os.path.abspath(os.path.expanduser(str(config.data.data_dir)))
                       if config.data.get("data_dir") else "scikit-learn's bundled digits"),
              "fingerprint": fingerprint_fn(), "items": n, "skipped": len(skipped),
              "geometry": GEOMETRY[inp.dataset][0].__name__.strip("_")},
      class_names=tuple(class_names))
  array_record.write_metadata(out_dir, meta)
  converted = n - done_before
  log(f"{split}: {count} images in {num_shards} shard(s) at {size}x{size}x{channels} in "
      f"{out_dir}; {len(skipped)} unreadable file(s) skipped; "
      f"{converted / max(elapsed, 1e-9):.0f} images/s over {converted} converted now")
  return meta


def convert(config, out_dir: str, *, num_workers: int | None = None,
            shard_examples: int | None = None, log=None) -> dict[str, array_record.Metadata]:
  """convert_split for 'train' and, where the data have one, 'test'."""
  from common.errors import MissingFileError
  out = {"train": convert_split(config, "train", out_dir, num_workers=num_workers,
                                shard_examples=shard_examples, log=log)}
  try:
    out["test"] = convert_split(config, "test", out_dir, num_workers=num_workers,
                                shard_examples=shard_examples, log=log)
  except MissingFileError:
    pass  # a folder or .npz data set without a test split
  return out
