"""`main.py --mode train`: training.loop.train with the configured data source (resumes
from the latest checkpoint in the workdir)."""
from __future__ import annotations

from training.data_source import get_data_source
from training.loop import train


def run(config, workdir: str):
  data_source = get_data_source(config)
  try:
    return train(config, workdir, data_source=data_source)
  finally:
    if hasattr(data_source, "close"):  # the grain pipeline's worker processes
      data_source.close()
