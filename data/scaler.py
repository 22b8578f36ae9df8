"""Data scalers in score_sde's convention: image data in [0, 1], seen by the model as 2x - 1
with config.data.centered (the inverse scaler maps back; bits/dim reads the data range
from inverse_scaler(-1))."""
from __future__ import annotations

from typing import Callable

Scaler = Callable


def get_data_scaler(config) -> Scaler:
  """Data space -> model space: x -> 2x - 1 when config.data.centered, else identity."""
  if config.data.centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config) -> Scaler:
  """Model space -> data space: x -> (x + 1) / 2 when config.data.centered, else identity."""
  if config.data.centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x
