"""Where training batches come from, chosen from the config (the one place).

- toy data (config.data.dataset a toy name): sampled on the device inside the compiled
  step, so no host source (None);
- reflow pairs (config.training.pairs_dir set): coupled (z, x) pairs from files;
- image data sets: the host-sharded, resumable iterator of data/images.py.
"""
from __future__ import annotations

import data as data_lib


def get_data_source(config):
  if config.training.get("pairs_dir", ""):
    from training.reflow import get_pairs_source
    return get_pairs_source(config)
  if data_lib.is_toy(config):
    return None
  from data.images import get_train_iterator
  return get_train_iterator(config)


def train_from_config(config, workdir: str):
  """`main.py --mode train`: training.loop.train with the configured data source."""
  from training.loop import train
  return train(config, workdir, data_source=get_data_source(config))
