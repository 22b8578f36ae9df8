"""scikit-learn's bundled 8 x 8 handwritten digits: real image data with no download,
rescaled to uint8 and split by a fixed rule (`load_digits`)."""
from __future__ import annotations

import functools

import numpy as np

from common.choices import check_choice

NUM_IMAGES = 1797
TEST_EVERY = 5
IMAGE_SHAPE = (8, 8, 1)
MAX_VALUE = 16


def split_indices(split: str) -> np.ndarray:
  """Sorted indices (into load_digits' order) of the images in 'train' (1437) or 'test' (360)."""
  check_choice(split, ("test", "train"), "DIGITS split")
  is_test = np.arange(NUM_IMAGES) % TEST_EVERY == 0
  return np.flatnonzero(is_test if split == "test" else ~is_test)


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
  # Cached: importing scikit-learn and parsing its csv takes seconds; both splits share it.
  try:
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the DIGITS data set needs scikit-learn (pip install scikit-learn)") from e
  bunch = datasets.load_digits()
  values = np.asarray(bunch.images)
  if values.shape != (NUM_IMAGES, 8, 8) or values.min() < 0 or values.max() > MAX_VALUE:
    raise ValueError(f"unexpected sklearn digits: shape {values.shape}, values in "
                     f"[{values.min()}, {values.max()}]; expected ({NUM_IMAGES}, 8, 8) in "
                     f"0..{MAX_VALUE}")
  images = np.round(values * (255.0 / MAX_VALUE)).astype(np.uint8)[..., None]
  images.flags.writeable = False
  labels = np.asarray(bunch.target, np.int32)
  labels.flags.writeable = False
  return images, labels


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """images uint8 (N, 8, 8, 1) in 0..255 and labels int32 (N,); N = 1437 train, 360 test.

  `sklearn.datasets.load_digits` ships 1797 grey-scale 8 x 8 images (UCI optdigits test
  set) with integer values 0..16 and labels 0..9 inside the scikit-learn package. Here the
  values are rescaled to 0..255 uint8 (round(v * 255 / 16), so 0 -> 0 and 16 -> 255) and
  split deterministically by position: every fifth image (index 0, 5, 10, ...) is 'test'
  (360 images), the rest 'train' (1437). A rule rather than a seeded permutation, since
  numpy does not promise the same permutation from the same seed across versions.
  """
  idx = split_indices(split)
  images, labels = _all_digits()
  return images[idx], labels[idx]
