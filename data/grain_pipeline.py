"""Training batches through grain, for data sets larger than memory: random-access sources,
worker processes, prefetch and a checkpointable position, with exactly the stream of
data.iterator.BatchIterator (`GrainBatches` documents the order and the state). grain and
array_record are imported only when a pipeline is built.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from common.errors import UserError
from data.iterator import FLIP, NOISE, ShuffledBatches, _bit_generator, _to_float, _uniform24

# Steps are indices of an endless grain MapDataset; far beyond any run's length.
_END = 2 ** 62


def _grain():
  import grain  # optional: the 'data' install
  from absl import flags
  # grain reads absl flags; a library user who never ran absl.app has not parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain


class _BatchReader:
  """step s -> this process's share of global batch s (runs in grain's workers).

  Returns float32 (B / P, H, W, C) in [0, 1], or {"image": that, "label": int32 (B / P,)}
  with labels: BatchIterator.batch's function of (seed, s, process), with the indices of
  `stream` (data.iterator.ShuffledBatches: the order and the process's share) read from
  `source` instead of an in-memory array.
  """

  def __init__(self, source, stream: ShuffledBatches, random_flip: bool,
               uniform_dequantization: bool, with_labels: bool):
    self.source, self.stream = source, stream
    self.random_flip, self.uniform_dequantization = random_flip, uniform_dequantization
    self.with_labels = with_labels

  def __getstate__(self):
    state = dict(self.__dict__)
    state["stream"] = copy.copy(self.stream)
    state["stream"]._order = None  # a worker draws its own epoch orders
    return state

  def indices(self, step: int) -> np.ndarray:
    """This process's example indices (B / P,) of global batch `step`."""
    return self.stream.indices(*divmod(int(step), self.stream.batches_per_epoch))

  def __call__(self, step: int):
    step, s = int(step), self.stream
    offset = s.process_index * s.local_batch_size
    images, labels = self.source.read(self.indices(step))
    if self.random_flip:
      flips = _uniform24(_bit_generator(s.seed, FLIP, step), (s.global_batch_size,)) < 0.5
      mine = flips[offset:offset + s.local_batch_size]
      if not images.flags.writeable:
        images = images.copy()
      # transforms.horizontal_flip's result, in place on the batch just read: only the
      # flipped images are copied (its np.where writes every pixel, 4x slower at 256 px).
      images[mine] = images[mine, :, ::-1]
    if self.uniform_dequantization:
      x = _to_float(images, True, s.seed, NOISE, step, offset)
    else:  # transforms.to_float's k / 255, divided in place (one float32 array, not two)
      x = images.astype(np.float32)
      x /= np.float32(255.0)
    return {"image": x, "label": labels.astype(np.int32)} if self.with_labels else x


class GrainBatches:
  """Endless, resumable, process-sharded training batches read through grain.

  Args:
    source: a random-access source (data/sources.py: len, read(indices), fingerprint).
    global_batch_size: B over all processes; a multiple of shard_count, at most N.
    seed: non-negative int; the stream is a function of it (BatchIterator's stream).
    random_flip, uniform_dequantization: as data.iterator.BatchIterator.
    shard_index, shard_count: this process and the number of processes (pass
      jax.process_index() and jax.process_count(); None takes those).
    num_workers: grain worker processes (0: batches are made in a thread of this
      process). prefetch: batches in flight per worker.
    with_labels: yield {"image", "label"} instead of the image array.

  `next(it)` is this process's share of the next global batch; `state()` and
  `restore(state)` carry the position (BatchIterator's 'epoch'/'index' keys, so the
  in-memory iterator resumes from it too, plus grain's iterator state). Call close()
  (or use `with`) to stop the workers.

  The stream is exactly data.iterator.BatchIterator's (the documented order): epoch e
  visits the permutation drawn from (seed, e), global batch s is a run of B indices of it,
  process h of P takes the h-th run of B / P of each global batch (disjoint shares whose
  union is every batch), and the flips and dequantization noise are the same functions of
  (seed, s, position). What changes is where the work runs: grain maps step s to its batch
  (`_BatchReader`: read the records, flip, dequantize) in `num_workers` worker processes,
  each with `prefetch` batches in flight, and the examples are read from a random-access
  source (data/sources.py), never the whole split. The elements of the grain data set are
  whole batches, so the output does not depend on the number of workers, and the position
  is grain's iterator state (`get_state`/`set_state`) plus the step, JSON-serialisable,
  saved with the model's checkpoint by training/loop.py. grain and array_record are
  imported when a pipeline is built, so the rest of the package works without them.
  """

  def __init__(self, source, global_batch_size: int, seed: int, *,
               random_flip: bool = False, uniform_dequantization: bool = False,
               shard_index: int | None = None, shard_count: int | None = None,
               num_workers: int = 0, prefetch: int = 2, with_labels: bool = False):
    if int(num_workers) < 0 or int(prefetch) < 1:
      raise UserError(f"config.data.num_workers = {num_workers} must be >= 0 and "
                      f"config.data.prefetch = {prefetch} >= 1")
    # The order, the process's share and the checks of the in-memory iterator.
    stream = ShuffledBatches(len(source), global_batch_size, seed,
                             process_index=shard_index, process_count=shard_count)
    self.source = source
    self.reader = _BatchReader(source, stream, bool(random_flip),
                               bool(uniform_dequantization), bool(with_labels))
    self.seed, self.global_batch_size = stream.seed, stream.global_batch_size
    self.num_workers, self.prefetch = int(num_workers), int(prefetch)
    self.batches_per_epoch = stream.batches_per_epoch
    self.step = 0          # global batches handed out so far
    self._base = 0         # the grain data set's first step
    self._grain_state: dict | None = None
    self._iterator = None

  def _open(self):
    grain = _grain()
    ds = grain.MapDataset.range(self._base, _END).map(self.reader)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                 prefetch_buffer_size=self.prefetch))
    if self.num_workers:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.num_workers, per_worker_buffer_size=self.prefetch))
    iterator = iter(it_ds)
    if self._grain_state is not None:
      iterator.set_state(self._grain_state)
      self._grain_state = None
    return iterator

  def __iter__(self) -> GrainBatches:
    return self

  def __next__(self):
    if self._iterator is None:
      self._iterator = self._open()
    out = next(self._iterator)
    self.step += 1
    return out

  def indices(self, step: int) -> np.ndarray:
    """This process's example indices (B / P,) of global batch `step`."""
    return self.reader.indices(step)

  def fingerprint(self) -> str:
    return self.source.fingerprint()

  def state(self) -> dict[str, Any]:
    """JSON-serialisable position: epoch/index of the next batch (BatchIterator's keys),
    seed, N and B (checked on restore), and grain's iterator state with the worker count
    it belongs to."""
    epoch, index = divmod(self.step, self.batches_per_epoch)
    state = {"epoch": epoch, "index": index, "seed": self.seed,
             "num_examples": len(self.source), "global_batch_size": self.global_batch_size}
    if self._iterator is not None:
      state["grain"] = {"state": self._iterator.get_state(), "base": self._base,
                        "num_workers": self.num_workers}
    return state

  def restore(self, state: Mapping[str, Any]) -> None:
    """The next batch becomes the one that followed `state` (from state() here or from
    BatchIterator.state()). grain's own state is used when it was saved with the same
    worker count; otherwise the pipeline restarts at the saved step."""
    check = copy.copy(self.reader.stream)
    check.restore(state)  # raises for a position of another stream or out of range
    epoch, index = check.epoch, check.index
    self.close()
    self.step = epoch * self.batches_per_epoch + index
    saved = state.get("grain")
    if saved and int(saved.get("num_workers", -1)) == self.num_workers:
      self._base, self._grain_state = int(saved["base"]), dict(saved["state"])
    else:
      self._base, self._grain_state = self.step, None

  def close(self) -> None:
    if self._iterator is not None:
      close = getattr(self._iterator, "close", None)
      if close is not None:
        close()
      self._iterator = None

  def __enter__(self) -> GrainBatches:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def train_batches(config, *, shard_index: int | None = None,
                  shard_count: int | None = None) -> GrainBatches:
  """The grain training pipeline of a config: the 'train' split's source
  (data.sources.get_source), global batch config.training.batch_size, seed config.seed,
  config.data.random_flip / uniform_dequantization, config.data.num_workers (default 2)
  and prefetch (default 2); labels with a class-conditional model
  (config.model.num_classes > 0), checked to lie in [0, num_classes)."""
  from data import sources
  source = sources.get_source(config, "train")
  data = config.data
  num_classes = int(config.model.get("num_classes", 0)) if "model" in config else 0
  if num_classes:
    labels = getattr(source, "labels", None)
    if not isinstance(labels, np.ndarray) or labels.shape != (len(source),):
      _, labels = source.read(np.arange(min(len(source), 4096)))  # a sample: N may be huge
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
      raise UserError(f"config.model.num_classes = {num_classes} (class-conditional "
                      f"training), but the training set of {data.dataset} has label "
                      f"{int(bad[0])}, outside [0, {num_classes})")
  return GrainBatches(source, int(config.training.batch_size), int(config.seed),
                      random_flip=bool(data.get("random_flip", False)),
                      uniform_dequantization=bool(data.get("uniform_dequantization", False)),
                      shard_index=shard_index, shard_count=shard_count,
                      num_workers=int(data.get("num_workers", 2)),
                      prefetch=int(data.get("prefetch", 2)), with_labels=num_classes > 0)
