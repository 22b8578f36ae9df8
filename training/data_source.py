"""Where training batches come from, chosen from the config in one place
(`get_data_source`): toy data on the device (no host source), reflow pairs, or image data
through the in-memory iterator or the grain pipeline."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

import data as data_lib
from data.images import get_image_dataset, get_train_iterator
from data.iterator import BatchIterator
from common.choices import check_choice
from common.errors import UserError
from training.reflow import get_pairs_source


class LabeledBatches:
  """A training BatchIterator whose batches carry their examples' labels:
  `next(it)` = {"image": float32 (B / P, H, W, C) in [0, 1], "label": int32 (B / P,)}.

  The labels are looked up with the iterator's own index rule (`BatchIterator.indices`)
  for the batch it is about to produce, so they belong to exactly those images; the
  position (state / restore) is the wrapped iterator's, so resumption stays exact.
  """

  def __init__(self, iterator: BatchIterator, labels: np.ndarray):
    self.iterator = iterator
    self.labels = np.asarray(labels, np.int32)

  def __iter__(self) -> LabeledBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    it = self.iterator
    idx = it.indices(it.epoch, it.index)
    return {"image": next(it), "label": self.labels[idx]}

  def state(self) -> dict[str, Any]:
    return self.iterator.state()

  def restore(self, state: Mapping[str, Any]) -> None:
    self.iterator.restore(state)


def _labeled_train_iterator(config, num_classes: int) -> LabeledBatches:
  dataset = get_image_dataset(config, "train")
  labels = np.asarray(dataset.labels)
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    what = ("has no labels" if int(bad[0]) == -1
            else f"has label {int(bad[0])}, outside [0, {num_classes})")
    raise UserError(f"config.model.num_classes = {num_classes} (class-conditional "
                    f"training), but the training set of {config.data.dataset} {what}")
  iterator = dataset.train_iterator(int(config.training.batch_size), int(config.seed))
  return LabeledBatches(iterator, labels)


def get_data_source(config):
  """The host source of training batches for `config`, or None for toy data drawn on the
  device: reflow pairs (config.training.pairs_dir set: coupled (z, x) pairs from files);
  image data sets through the host-sharded, resumable iterator of data/images.py or, with
  config.data.source = "grain", the grain pipeline (data/grain_pipeline.py: the same
  batches, read per batch in worker processes); a class-conditional model
  (config.model.num_classes > 0) gets `LabeledBatches` yielding {"image", "label"}."""
  if config.training.get("pairs_dir", ""):
    return get_pairs_source(config)
  if data_lib.is_toy(config):
    return None
  source = config.data.get("source", "memory")
  check_choice(source, ("memory", "grain"), "data source (config.data.source)")
  if source == "grain":  # per-batch reads in worker processes (data/grain_pipeline.py)
    from data.grain_pipeline import train_batches
    return train_batches(config)
  num_classes = int(config.model.get("num_classes", 0))
  if num_classes:
    return _labeled_train_iterator(config, num_classes)
  return get_train_iterator(config)

