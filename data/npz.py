"""Images stored as a numpy .npz archive of arrays.

The archive holds the images under 'images' (or 'x'), uint8 NHWC (N, H, W, C) or
grey-scale (N, H, W), and optionally integer labels under 'labels' (or 'y'), shape (N,).
Arrays are read with allow_pickle=False: an .npz of object arrays is refused.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from common.errors import MissingFileError, UserError

IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """images uint8 (N, H, W, C) and labels int32 (N,) (-1 where the file has none).

  Integer images are accepted if every value is in 0..255; float images are refused
  (store pixels as uint8; the iterator does the conversion to [0, 1]).
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"npz file {path!r} does not exist (expected an .npz with an "
                           f"array under {' or '.join(map(repr, IMAGE_KEYS))})")
  try:
    with np.load(path, allow_pickle=False) as f:
      keys = set(f.files)
      image_key = next((k for k in IMAGE_KEYS if k in keys), None)
      if image_key is None:
        raise UserError(f"{path}: no image array; expected a key "
                        f"{' or '.join(map(repr, IMAGE_KEYS))}, found {sorted(keys)}")
      images = f[image_key]
      label_key = next((k for k in LABEL_KEYS if k in keys), None)
      labels = f[label_key] if label_key is not None else None
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise UserError(f"{path}: not a readable .npz archive ({e})") from e
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise UserError(f"{path}: {image_key!r} has shape {images.shape}; expected "
                    "(N, H, W, C) or (N, H, W)")
  if images.shape[1] in (1, 3, 4) and images.shape[3] not in (1, 3, 4):
    raise UserError(f"{path}: {image_key!r} has shape {images.shape}, which looks like "
                    "NCHW; store NHWC (np.transpose(images, (0, 2, 3, 1)))")
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.integer):
      raise UserError(f"{path}: {image_key!r} is {images.dtype}; expected uint8 pixel "
                      "values 0..255")
    if images.size and (images.min() < 0 or images.max() > 255):
      raise UserError(f"{path}: {image_key!r} has values in [{images.min()}, "
                      f"{images.max()}]; expected 0..255")
    images = images.astype(np.uint8)
  n = images.shape[0]
  if labels is None:
    labels = np.full(n, -1, np.int32)
  else:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
      raise UserError(f"{path}: {label_key!r} is {labels.dtype} of shape {labels.shape}; "
                      f"expected integers of shape ({n},)")
    labels = labels.astype(np.int32)
  return images, labels
