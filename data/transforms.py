"""Image transforms on the host, in numpy: crop, resize, flip, to float, dequantize
(score_sde's geometry per data set: `resize_and_crop`)."""
from __future__ import annotations

import numpy as np
from PIL import Image

# Channel counts that Pillow holds as one uint8 image (L, RGB, RGBA); others go one
# channel at a time.
_PIL_CHANNELS = (1, 3, 4)


def center_crop(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """The central size x size (or (h, w)) window of images (..., H, W, C).

  Offsets are floor((H - h) / 2), as tf.image.crop_to_bounding_box in score_sde's
  central_crop. Raises ValueError if the image is smaller than the window.
  """
  h, w = (size, size) if isinstance(size, int) else size
  H, W = images.shape[-3], images.shape[-2]
  if h > H or w > W:
    raise ValueError(f"cannot center-crop {h}x{w} from an image of {H}x{W}")
  top, left = (H - h) // 2, (W - w) // 2
  return images[..., top:top + h, left:left + w, :]


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """One uint8 image (H, W, C) resized to (h, w, C) with Pillow's bilinear filter.

  Pillow widens the filter support when downsampling, i.e. it antialiases, as score_sde's
  tf.image.resize(..., antialias=True) does. A no-op (returns the input) when the size
  already matches.
  """
  h, w = (size, size) if isinstance(size, int) else size
  if image.ndim != 3:
    raise ValueError(f"resize takes one image (H, W, C); got shape {image.shape}")
  if image.shape[:2] == (h, w):
    return image
  if image.dtype != np.uint8:
    raise ValueError(f"resize takes uint8 images; got {image.dtype}")
  c = image.shape[2]
  if c in _PIL_CHANNELS:
    # Pillow infers the mode (L, RGB, RGBA) from a uint8 array's shape.
    pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if c == 1 else image))
    out = np.asarray(pil.resize((w, h), Image.BILINEAR))
    return out.reshape(h, w, c)
  # Channels are resized independently, so any channel count works one at a time.
  return np.stack([resize(image[..., i:i + 1], (h, w))[..., 0] for i in range(c)], -1)


def resize_small(image: np.ndarray, size: int) -> np.ndarray:
  """One image (H, W, C) resized so that its shorter side is `size`, keeping the aspect
  ratio (score_sde's resize_small; the longer side is rounded to the nearest pixel)."""
  H, W = image.shape[:2]
  ratio = size / min(H, W)
  return resize(image, (int(round(H * ratio)), int(round(W * ratio))))


def resize_and_crop(image: np.ndarray, size: int, crop: int | None = None) -> np.ndarray:
  """One image (H, W, C) -> (size, size, C): optional center crop to `crop` px first (score_sde's
  CelebA: crop 140, then resize), then shorter side to `size`, then center crop to square
  (score_sde's LSUN; for square inputs just a resize).

  Images are uint8 NHWC (or a single HWC image where noted), pixel values 0..255. The
  geometric transforms (crop, resize) are deterministic and are applied once, when a data set
  is loaded (data/images.py); the random ones (flip, dequantization noise) are applied per
  batch by data/iterator.py from a numpy Generator that the caller seeds from (seed, step),
  never from global state. Centering to [-1, 1] is the data scaler's job (data/scaler.py),
  not done here.

  The geometry follows score_sde's input pipeline (datasets.py): CelebA is center-cropped
  to 140 px and then resized; LSUN is resized so that its shorter side is image_size and then
  center-cropped; everything else is resized to image_size. score_sde resizes with
  antialiased bilinear interpolation in float; here Pillow's bilinear resize (antialiased
  when downsampling) returns uint8, so that the data stay on the 8-bit grid that uniform
  dequantization assumes.
  """
  if crop is not None:
    image = center_crop(image, crop)
  return center_crop(resize_small(image, size), size)


def horizontal_flip(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """images (N, H, W, C) with those where flip (N,) bool is True mirrored left-right."""
  flip = np.asarray(flip, dtype=bool)
  if flip.shape != images.shape[:1]:
    raise ValueError(f"flip has shape {flip.shape}; expected ({images.shape[0]},)")
  return np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def mirror_into(out: np.ndarray, image: np.ndarray) -> None:
  """out[:] = image[:, ::-1] for one image (H, W, C) with contiguous pixels: each pixel's
  C bytes moved as one item (a void view), about twice as fast as numpy's reversed copy
  of C separate bytes."""
  c = image.shape[-1]
  item = np.dtype((np.void, c * image.dtype.itemsize))
  np.copyto(out.view(item)[..., 0], image.view(item)[..., 0][:, ::-1])


def mirror_in_place(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """horizontal_flip(images, flip) written into `images` (N, H, W, C), C-contiguous and
  writeable: only the flipped images are touched; returns images."""
  for k in np.flatnonzero(np.asarray(flip, bool)):
    mirror_into(images[k], images[k].copy())
  return images


def random_flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """images (N, H, W, C), each mirrored left-right with probability 1/2 (draws N uniforms)."""
  return horizontal_flip(images, rng.random(images.shape[0]) < 0.5)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 x / 255 in [0, 1] (tf.image.convert_image_dtype's mapping)."""
  return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def dequantize(images: np.ndarray, noise: np.ndarray) -> np.ndarray:
  """uint8 pixels k in 0..255 and noise u in [0, 1) -> float32 (k + u) / 256 in [0, 1).

  This is score_sde's uniform dequantization (x * 255 + U[0, 1)) / 256 for x = k / 255,
  computed from the integer k directly so that no float rounding of k / 255 * 255 enters.
  A continuous density on [0, 1)^D of the result gives the discrete data's likelihood
  bound (bits/dim, score_sde's offset convention).
  """
  if noise.shape != images.shape:
    raise ValueError(f"noise has shape {noise.shape}; expected {images.shape}")
  # Above 1 - 2^-16, k + u would round up to k + 1 in float32 (whose spacing is 2^-16 for
  # 128 <= k < 256), leaving the pixel's bin (pixel 255 would reach 1.0); such noise is
  # lowered to 1 - 2^-16, so every value stays in [k, k + 1) / 256.
  u = np.minimum(noise.astype(np.float32, copy=False), np.float32(1.0 - 2.0 ** -16))
  return (np.asarray(images, dtype=np.float32) + u) * np.float32(1.0 / 256.0)


def uniform_dequantize(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """images uint8 (...) -> float32 (k + U[0, 1)) / 256 with the noise drawn from rng."""
  return dequantize(images, rng.random(images.shape, dtype=np.float32))
