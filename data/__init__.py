"""Data: toy 2-D distributions (sampled on the device), image data sets, scalers."""
from __future__ import annotations

from data import images, toy
from data.images import ImageDataset, get_image_dataset
from data.scaler import get_data_inverse_scaler, get_data_scaler


def is_toy(config) -> bool:
  return config.data.dataset in toy.TOY_DATASETS


def get_data_shape(config) -> tuple[int, ...]:
  """Shape of one example: (dim,) for toy data, (H, W, C) for images."""
  if is_toy(config):
    toy.check_name(config.data.dataset, int(config.data.dim))
    return (int(config.data.dim),)
  return (int(config.data.image_size), int(config.data.image_size),
          int(config.data.num_channels))


__all__ = ["toy", "images", "get_image_dataset", "ImageDataset", "get_data_scaler", "get_data_inverse_scaler", "get_data_shape", "is_toy"]
