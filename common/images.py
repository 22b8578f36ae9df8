"""Image output: sample grids and PNG files, written atomically through common/io.py."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from common.io import atomic_file


def save_png(path: str, write: Callable[[Any], None]) -> str:
  """Calls write(file) (e.g. `lambda f: fig.savefig(f, format="png")`) into `path`,
  atomically; returns path. Only process 0 writes."""
  if jax.process_index() != 0:
    return path
  with atomic_file(path, "wb") as f:
    write(f)
  return path


def tile_images(images: np.ndarray, ncol: int | None = None) -> np.ndarray:
  """Images (n, H, W, C) in [0, 1] tiled with 1-pixel white borders: (rows, cols, C)."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  return grid


def save_snapshot_png(samples: np.ndarray, path: str, lim: float = 3.0,
                      size: int = 256) -> str:
  """A picture of samples in data space, written with Pillow (no plotting library in
  training): images (n, H, W, C) in [0, 1] as a grid, 2-D points (n, 2) as black dots on
  a size x size canvas showing [-lim, lim]^2 (y up)."""
  from PIL import Image
  samples = np.asarray(samples)
  if samples.ndim == 4:
    grid = tile_images(samples)
    pixels = np.round(255 * (grid[..., 0] if grid.shape[-1] == 1 else grid))
    image = Image.fromarray(pixels.astype(np.uint8))
  elif samples.ndim == 2 and samples.shape[1] == 2:
    canvas = np.full((size, size), 255, np.uint8)
    ij = np.round((samples + lim) / (2 * lim) * (size - 1)).astype(int)
    keep = np.all((ij >= 0) & (ij < size), axis=1) & np.all(np.isfinite(samples), axis=1)
    canvas[size - 1 - ij[keep, 1], ij[keep, 0]] = 0
    image = Image.fromarray(canvas)
  else:
    raise ValueError(f"no picture for samples of shape {samples.shape}: images (n, H, W, "
                     "C) or 2-D points (n, 2)")
  return save_png(path, lambda f: image.save(f, format="PNG"))
