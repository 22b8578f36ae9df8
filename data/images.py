"""Image data sets from a config: `get_image_dataset(config, split)`, the one place that maps
config.data.dataset to a reader of the data set's own format from a local path."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, NamedTuple

import numpy as np

from data import (array_record, cifar10, digits, fingerprint, image_folder, mnist, npz, sources,
                  transforms)
from data.iterator import BatchIterator, EvalBatches
from common.choices import check_choice
from common.errors import MissingFileError, UserError

SPLITS = ("train", "test")
CELEBA_CROP = 140  # score_sde's central crop of the 178x218 aligned CelebA images


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """One split of an image data set, in memory.

  images: uint8 (N, H, W, C), H = W = config.data.image_size, C = num_channels.
  labels: int32 (N,), -1 where the data set has no labels.
  """
  name: str
  split: str
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...] = ()
  random_flip: bool = False
  uniform_dequantization: bool = False

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def train_iterator(self, global_batch_size: int, seed: int, *,
                     process_index: int | None = None,
                     process_count: int | None = None) -> BatchIterator:
    """Endless shuffled batches float32 (B / hosts, H, W, C) in [0, 1] for this host, with
    the data set's flips and dequantization; resumable through state()/restore()."""
    return BatchIterator(self.images, global_batch_size, seed,
                         random_flip=self.random_flip,
                         uniform_dequantization=self.uniform_dequantization,
                         process_index=process_index, process_count=process_count)

  def eval_batches(self, global_batch_size: int, *, seed: int = 0,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   uniform_dequantization: bool | None = None) -> EvalBatches:
    """One ordered pass, no flips, last batch padded with mask False (see EvalBatches).
    uniform_dequantization: None follows the data set's flag; False gives k / 255 (the
    bits/dim evaluation dequantizes by itself, solvers.likelihood)."""
    if uniform_dequantization is None:
      uniform_dequantization = self.uniform_dequantization
    return EvalBatches(self.images, global_batch_size, labels=self.labels, seed=seed,
                       uniform_dequantization=bool(uniform_dequantization),
                       process_index=process_index, process_count=process_count)


class _Decoded(NamedTuple):
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...] = ()


class _Source(NamedTuple):
  # read(data_dir, split, image_size, num_channels) -> _Decoded
  read: Callable[[str, str, int, int], _Decoded]
  native: bool  # True: sizes must match the config; False: resized while loading


def _split_location(data_dir: str, split: str, kinds: tuple[str, ...]) -> tuple[str, str]:
  """('folder' | 'npz', path) of a split of a folder/.npz data set (see module doc)."""
  what = " or ".join({"folder": f"{split}/", "npz": f"{split}.npz"}[k] for k in kinds)
  if os.path.isfile(data_dir):
    if "npz" in kinds and data_dir.endswith(".npz") and split == "train":
      return "npz", data_dir
    if "npz" not in kinds:
      raise MissingFileError(f"data_dir {data_dir!r} is a file; expected a directory of "
                             "images")
    raise MissingFileError(f"data_dir {data_dir!r} is a file; a single .npz serves only the "
                           f"train split, for the {split!r} split expected a directory "
                           f"holding {what}")
  if not os.path.isdir(data_dir):
    raise MissingFileError(f"data_dir {data_dir!r} does not exist (expected {what} under it"
                           f"{' or the data itself' if split == 'train' else ''})")
  if "npz" in kinds and os.path.isfile(os.path.join(data_dir, f"{split}.npz")):
    return "npz", os.path.join(data_dir, f"{split}.npz")
  if "folder" in kinds and os.path.isdir(os.path.join(data_dir, split)):
    return "folder", os.path.join(data_dir, split)
  per_split = any(os.path.isdir(os.path.join(data_dir, s))
                  or os.path.isfile(os.path.join(data_dir, f"{s}.npz")) for s in SPLITS)
  if split == "train" and not per_split:
    if "folder" in kinds:
      return "folder", data_dir
  raise MissingFileError(f"no {split!r} split: expected {what} under {data_dir!r}")


def _folder_or_npz(kinds: tuple[str, ...], crop: int | None = None):
  def read(data_dir, split, image_size, num_channels):
    kind, path = _split_location(data_dir, split, kinds)
    if kind == "folder":
      return _Decoded(*image_folder.read_image_folder(path, num_channels, image_size, crop))
    images, labels = npz.read_npz(path)
    if kinds == ("npz",):
      return _Decoded(images, labels)  # native: the caller checks the size
    if images.shape[-1] != num_channels:
      raise UserError(f"{path}: images have {images.shape[-1]} channels but "
                      f"config.data.num_channels = {num_channels}")
    use_crop = crop if crop is not None and min(images.shape[1:3]) >= crop else None
    return _Decoded(np.stack([transforms.resize_and_crop(x, image_size, use_crop)
                              for x in images]) if len(images) else images, labels)
  return read


DATASETS: dict[str, _Source] = {
    "CIFAR10": _Source(lambda d, s, size, c: _Decoded(*cifar10.read_cifar10(d, s),
                                                      cifar10.CLASS_NAMES), True),
    "MNIST": _Source(lambda d, s, size, c: _Decoded(*mnist.read_mnist(d, s),
                                                    tuple(map(str, range(10)))), True),
    "DIGITS": _Source(lambda d, s, size, c: _Decoded(*digits.load_digits(s),
                                                     tuple(map(str, range(10)))), True),
    "NPZ": _Source(_folder_or_npz(("npz",)), True),
    "IMAGE_FOLDER": _Source(_folder_or_npz(("folder",)), False),
    "CELEBA": _Source(_folder_or_npz(("folder", "npz"), crop=CELEBA_CROP), False),
    "LSUN": _Source(_folder_or_npz(("folder", "npz")), False),
    "FFHQ": _Source(_folder_or_npz(("folder", "npz")), False),
    "CelebAHQ": _Source(_folder_or_npz(("folder", "npz")), False),
}


def get_image_dataset(config, split: str) -> ImageDataset:
  """The `split` ('train' or 'test') of the image data set named by config.data.dataset.

  Reads config.data.dataset, data_dir (a local path; unused for DIGITS), image_size,
  num_channels, random_flip and uniform_dequantization (both default False). Returns the
  split as uint8 (N, image_size, image_size, num_channels) with int32 labels (N,).

  Raises ValueError for an unknown name or split (listing the choices), a corrupt file, or
  decoded images whose size or channel count differ from the config (naming both);
  FileNotFoundError naming the path and the file it expected.

  This is the one place that maps data set names (config.data.dataset) to readers. Every
  reader takes the data set's own distributed format from a local path (nothing is ever
  downloaded):

    name          reads (config.data.data_dir)                              size handling
    CIFAR10       cifar-10-binary.tar.gz or cifar-10-batches-bin/ (cifar10)  native 32x32x3
    MNIST         train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz] (mnist)   native 28x28x1
    DIGITS        nothing: scikit-learn's bundled 8x8 digits (digits)        native 8x8x1
    NPZ           an .npz of 'images'/'x' (+ 'labels'/'y') (npz)             native
    IMAGE_FOLDER  a folder of png/jpg, optionally one subfolder per class    resized
    CELEBA        image folder or .npz; center crop 140 px, then resize      resized
    LSUN, FFHQ, CelebAHQ  image folder or .npz                                resized

  "native" data sets must already have config.data.image_size and num_channels (a mismatch
  is an error naming both); "resized" ones are brought to image_size x image_size by
  data.transforms.resize_and_crop when loaded (score_sde's preprocessing: CelebA cropped to
  140 px first, which is applied to images of at least 140 px on both sides, i.e. the
  178x218 aligned originals; smaller ones are taken as already cropped), and image files are
  converted to num_channels by Pillow.

  Splits are 'train' and 'test'. For folder and .npz data sets, data_dir may hold per-split
  data, `<data_dir>/<split>/` or `<data_dir>/<split>.npz`; without either, data_dir itself
  (a folder, or an .npz file) is the train split and there is no test split.

  A data_dir holding ArrayRecord shards of the split (`--mode convert`) is read from them.
  The result holds the whole split in memory as uint8; the float conversion, flips and
  dequantization happen per batch in data.iterator (see `ImageDataset.train_iterator`,
  `ImageDataset.eval_batches`).
  """
  data = config.data
  name = data.dataset
  check_choice(name, sorted(DATASETS), "image dataset (config.data.dataset)")
  check_choice(split, SPLITS, "split")
  image_size, num_channels = int(data.image_size), int(data.num_channels)
  data_dir = os.path.expanduser(str(data.get("data_dir", "") or ""))
  source = DATASETS[name]
  if name != "DIGITS" and not data_dir:
    raise UserError(f"config.data.data_dir is empty; {name} is read from a local path "
                    "(nothing is downloaded)")
  if os.path.isdir(data_dir) and array_record.has_shards(data_dir, split):
    # Shards written by `--mode convert` (already at the config's size), read whole.
    shards = array_record.ArrayRecordImages(data_dir, split)
    decoded = _Decoded(*shards.read(np.arange(len(shards))), shards.class_names)
  else:
    decoded = source.read(data_dir, split, image_size, num_channels)
  images = decoded.images
  h, w, c = images.shape[1:]
  if (h, w) != (image_size, image_size):
    hint = (" (this data set is not resized; set image_size to its native size)"
            if source.native else "")
    raise UserError(f"{name} images are {h}x{w} but config.data.image_size = {image_size}"
                    f"{hint}")
  if c != num_channels:
    raise UserError(f"{name} images have {c} channel(s) but config.data.num_channels = "
                    f"{num_channels}")
  return ImageDataset(name=name, split=split, images=images,
                      labels=np.asarray(decoded.labels, np.int32),
                      class_names=tuple(decoded.class_names),
                      random_flip=bool(data.get("random_flip", False)),
                      uniform_dequantization=bool(data.get("uniform_dequantization", False)))


def get_train_iterator(config, *, seed: int | None = None, process_index: int | None = None,
                       process_count: int | None = None) -> BatchIterator:
  """The training iterator of a config: the 'train' split, global batch
  config.training.batch_size, seed config.seed unless given."""
  dataset = get_image_dataset(config, "train")
  return dataset.train_iterator(int(config.training.batch_size),
                                int(config.seed if seed is None else seed),
                                process_index=process_index, process_count=process_count)


def get_eval_batches(config, split: str = "test", *, process_index: int | None = None,
                     process_count: int | None = None,
                     uniform_dequantization: bool | None = None) -> EvalBatches:
  """One padded pass over `split` in batches of config.eval.batch_size (seed config.seed
  for the dequantization noise). uniform_dequantization: None follows
  config.data.uniform_dequantization (score_sde's evaluation loss does); bits/dim passes
  False and dequantizes once itself (evaluation/eval_run.py)."""
  if reads_from_source(config, split):
    if uniform_dequantization is None:
      uniform_dequantization = bool(config.data.get("uniform_dequantization", False))
    return EvalBatches(get_source(config, split), int(config.eval.batch_size),
                       seed=int(config.seed), uniform_dequantization=uniform_dequantization,
                       process_index=process_index, process_count=process_count)
  dataset = get_image_dataset(config, split)
  return dataset.eval_batches(int(config.eval.batch_size), seed=int(config.seed),
                              process_index=process_index, process_count=process_count,
                              uniform_dequantization=uniform_dequantization)


def reads_from_source(config, split: str) -> bool:
  """Whether evaluation reads `split` batch by batch from a random-access source
  (`get_source`) instead of holding it in memory: with config.data.source =
  "grain", or when config.data.data_dir holds ArrayRecord shards of the split."""
  if config.data.get("source", "memory") == "grain":
    return True
  data_dir = os.path.expanduser(str(config.data.get("data_dir", "") or ""))
  return bool(data_dir) and os.path.isdir(data_dir) and array_record.has_shards(data_dir,
                                                                               split)


def split_images(config, split: str):
  """The uint8 images (N, H, W, C) of `split`, for passes in chunks (FID statistics):
  the in-memory array of `get_image_dataset`, or, where `reads_from_source`, a view
  (data.sources.SourceImages) whose slices `images[a:b]` read only those examples
  (each process reads the chunks it slices). Both give the same pixels."""
  if reads_from_source(config, split):
    return sources.SourceImages(get_source(config, split))
  return get_image_dataset(config, split).images


def get_source(config, split: str = "train"):
  """The random-access source of config.data for `split`: ArrayRecord shards when
  config.data.data_dir holds `<split>.json` written by convert, else the data set's own
  files (CIFAR-10, MNIST, NPZ, image folders) through data/sources.py, else the
  in-memory decode of `get_image_dataset`. Image size and channels are checked against the
  config (UserError naming the data and both sizes).

  Every source gives uint8 images (n, H, W, C) and int32 labels (n,) for any list of
  example indices, without holding the split in memory where the format allows it:
  ArrayRecord shards (data/array_record.py), CIFAR-10's extracted binary files and
  uncompressed MNIST idx files (memory-mapped, fixed-size records), .npz archives whose
  arrays are stored uncompressed (memory-mapped), and image folders (each file decoded
  when read). Compressed archives (cifar-10-binary.tar.gz, .gz idx files,
  np.savez_compressed) are decoded once by the existing readers and held in memory.
  Sources pickle without open files or maps, so grain's worker processes reopen their own.
  """
  data = config.data
  name = data.dataset
  size, channels = int(data.image_size), int(data.num_channels)
  data_dir = os.path.expanduser(str(data.get("data_dir", "") or ""))
  if data_dir and os.path.isdir(data_dir) and array_record.has_shards(data_dir, split):
    source = array_record.ArrayRecordImages(data_dir, split)
    where = array_record.metadata_path(data_dir, split)
  elif name == "CIFAR10":
    source, where = sources.CifarBinarySource(data_dir, split), data_dir
  elif name == "MNIST":
    source, where = sources.MnistSource(data_dir, split), data_dir
  elif name == "NPZ":
    source, where = sources.NpzSource(data_dir if os.path.isfile(data_dir)
                                      else os.path.join(data_dir, f"{split}.npz")), data_dir
  elif name == "DIGITS":
    x, y = digits.load_digits(split)
    source = sources.ArraySource(x, y, fingerprint.digest(x.tobytes() + y.tobytes()))
    where = name
  elif name in DATASETS and not DATASETS[name].native:
    kinds = ("folder",) if name == "IMAGE_FOLDER" else ("folder", "npz")
    kind, path = _split_location(data_dir, split, kinds)
    crop = CELEBA_CROP if name == "CELEBA" else None
    if kind == "folder":
      source, where = sources.ImageFolderSource(path, channels, size, crop), path
    else:
      ds = get_image_dataset(config, split)
      source = sources.ArraySource(ds.images, ds.labels,
                                   sources.NpzSource(path).fingerprint(), ds.class_names)
      where = path
  else:
    check_choice(name, DATASETS, "image dataset (config.data.dataset)")
    raise AssertionError(name)
  h, w, c = source.shape
  if (h, w) != (size, size) or c != channels:
    shards = isinstance(source, array_record.ArrayRecordImages)
    raise UserError(f"{where}: images are {h}x{w}x{c} but the config wants "
                    f"{size}x{size}x{channels} (config.data.image_size, num_channels)"
                    f"{'; convert again for this size' if shards else ''}")
  if len(source) == 0:
    raise UserError(f"{where}: the {split} split has no examples")
  return source
