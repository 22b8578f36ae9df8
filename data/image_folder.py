"""A folder of image files (png, jpg, ...) decoded with Pillow, flat or one subfolder per
class (the layout rules: `read_image_folder`)."""
from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from PIL import Image

from common.choices import check_choice
from common.errors import MissingFileError, UserError
from data import transforms

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def list_images(path: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
  """(files, labels int32 (N,), class_names) of the image folder at path (see module doc)."""
  if not os.path.isdir(path):
    raise MissingFileError(f"image folder {path!r} does not exist (expected a directory of "
                           f"{'/'.join(e[1:] for e in EXTENSIONS[:3])} files, optionally one "
                           "subfolder per class)")

  def images_under(d):
    found = []
    for root, dirs, files in os.walk(d):
      dirs.sort()
      found += [os.path.join(root, f) for f in sorted(files)
                if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return found

  entries = sorted(os.listdir(path))
  top_files = [os.path.join(path, f) for f in entries
               if f.lower().endswith(EXTENSIONS) and not f.startswith(".")
               and os.path.isfile(os.path.join(path, f))]
  class_dirs = [d for d in entries if os.path.isdir(os.path.join(path, d))
                and not d.startswith(".") and images_under(os.path.join(path, d))]
  if top_files and class_dirs:
    raise UserError(f"{path!r} has images both directly in it and in subfolders "
                    f"{class_dirs[:3]}; use one layout (all loose, or one folder per class)")
  if top_files:
    return top_files, np.full(len(top_files), -1, np.int32), ()
  files, labels = [], []
  for label, d in enumerate(class_dirs):
    found = images_under(os.path.join(path, d))
    files += found
    labels += [label] * len(found)
  if not files:
    raise MissingFileError(f"no image files ({', '.join(EXTENSIONS)}) under {path!r}")
  return files, np.asarray(labels, np.int32), tuple(class_dirs)


def load_image(file: str, num_channels: int = 3, image_size: int | None = None,
               crop: int | None = None) -> np.ndarray:
  """One image file -> uint8 (H, W, num_channels), or (image_size, image_size, C) if given
  (after an optional center crop to `crop` px; see transforms.resize_and_crop)."""
  check_choice(num_channels, sorted(_MODES), "num_channels for image files")
  try:
    with Image.open(file) as img:
      array = np.asarray(img.convert(_MODES[num_channels]))
  except OSError as e:
    raise UserError(f"{file}: cannot decode image ({e})") from e
  array = array.reshape(array.shape[0], array.shape[1], num_channels)
  if image_size is not None:
    if crop is not None and min(array.shape[:2]) < crop:
      raise UserError(f"{file}: image of {array.shape[0]}x{array.shape[1]} is smaller than "
                      f"the {crop} px center crop")
    array = transforms.resize_and_crop(array, image_size, crop)
  return array


def read_image_folder(path: str, num_channels: int = 3, image_size: int | None = None,
                      crop: int | None = None, num_threads: int = 8
                      ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """All images under path as uint8 (N, H, W, num_channels), labels int32 (N,) and the
  class names (empty for an unlabelled folder, whose labels are -1).

  With image_size None all images must already share one size; otherwise each is cropped
  and resized on loading. Decoding runs on `num_threads` threads (Pillow releases the
  GIL while decoding); the result does not depend on it.

  Layout: either the images directly in the folder (unlabelled: labels are -1), or one
  subfolder per class (labels are the indices of the sorted subfolder names; images nested
  deeper count for their top-level class). Files are taken in sorted path order, so the
  same folder always gives the same arrays. Every image is converted to the requested
  channel count (Pillow mode 'L' for 1, 'RGB' for 3, 'RGBA' for 4) and, if `image_size` is
  given, brought to image_size x image_size with data.transforms.resize_and_crop.
  """
  files, labels, classes = list_images(path)

  def load(f):
    return load_image(f, num_channels, image_size, crop)

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    arrays = list(pool.map(load, files))
  shape = arrays[0].shape
  for f, a in zip(files, arrays):
    if a.shape != shape:
      raise UserError(f"{f} is {a.shape[0]}x{a.shape[1]} but {files[0]} is "
                      f"{shape[0]}x{shape[1]}; set an image_size to resize them to")
  return np.stack(arrays), labels, classes
