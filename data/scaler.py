"""Data scalers (score_sde convention).

Image data arrive in [0, 1]. With `config.data.centered` the model sees 2x - 1 in [-1, 1];
otherwise it sees the data unchanged. The inverse scaler maps model space back to data
space; bits/dim uses inverse_scaler(-1) to find the data range (see solvers/likelihood).
"""
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
