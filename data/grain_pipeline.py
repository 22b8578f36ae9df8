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
from data import transforms
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

  Returns {"image": x} (and "label": int32 (B / P,) with labels): BatchIterator.batch's
  function of (seed, s, process), with the indices of `stream` (data.iterator.
  ShuffledBatches: the order and the process's share) read from `source` instead of an
  in-memory array. x is the float32
  batch (B / P, H, W, C) with dequantization (its noise is drawn here, in the workers),
  else the uint8 pixels, flipped, which GrainBatches turns into k / 255 once per batch in
  the parent (`_to_float`: the same bits): a quarter of the bytes to move and no float
  array in the workers.
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

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    step, s = int(step), self.stream
    offset = s.process_index * s.local_batch_size
    indices = self.indices(step)
    mine = None
    if self.random_flip:
      flips = _uniform24(_bit_generator(s.seed, FLIP, step), (s.global_batch_size,)) < 0.5
      mine = flips[offset:offset + s.local_batch_size]
    shape = (indices.size,) + tuple(self.source.shape)
    # transforms.horizontal_flip's result without its np.where over every pixel: shards
    # decode each record straight into the batch, mirrored or not; other sources mirror
    # the flipped images of the batch they read, in place.
    read_into = getattr(self.source, "read_into", None)
    if read_into is not None:
      images = _new_array(shape, np.uint8, shared=not self.uniform_dequantization)
      labels = read_into(indices, images, mine)
    else:
      images, labels = self.source.read(indices)
      if mine is not None:
        if not (images.flags.writeable and images.flags.c_contiguous):
          images = np.array(images, order="C")  # a writeable contiguous copy
        transforms.mirror_in_place(images, mine)
    if self.uniform_dequantization:
      images = _to_float(images, True, s.seed, NOISE, step, offset,
                         out=_new_array(shape, np.float32, shared=True))
    if self.with_labels:
      return {"image": images, "label": labels.astype(np.int32)}
    return {"image": images}


# Set in grain's worker processes (`_worker_init`): batches are built in shared memory.
_SHARED_MEMORY_OUTPUT = False


def _worker_init(worker_index: int, worker_count: int) -> None:
  global _SHARED_MEMORY_OUTPUT
  _SHARED_MEMORY_OUTPUT = True


def _new_array(shape: tuple[int, ...], dtype, shared: bool) -> np.ndarray:
  """An empty array: with `shared` in a grain worker process, grain's SharedMemoryArray
  (grain hands it to the parent by name, without the copy into shared memory it makes of
  other arrays; the parent unlinks it when released), else ordinary memory."""
  if shared and _SHARED_MEMORY_OUTPUT:
    from grain.multiprocessing import SharedMemoryArray
    return SharedMemoryArray(shape, dtype)
  return np.empty(shape, dtype)


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
  (`_BatchReader`: read the records, flip, dequantize; k / 255 is taken in this process,
  once per batch, from the uint8 batch) in `num_workers` worker processes,
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
    # With workers, their output queues are the prefetch buffer: a worker builds one
    # batch at a time, so a batch it has built in shared memory is always either handed
    # over or unlinked by grain when the pipeline stops (none leaks).
    it_ds = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=0 if self.num_workers else self.prefetch))
    if self.num_workers:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.num_workers, per_worker_buffer_size=self.prefetch),
          worker_init_fn=_worker_init)
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
    x = out["image"]
    if x.dtype == np.uint8:  # k / 255 here, once per batch (`_BatchReader`)
      x = _to_float(x, False, self.seed, NOISE, self.step, 0)
    self.step += 1
    return {"image": x, "label": out["label"]} if self.reader.with_labels else x

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
  (data.images.get_source), global batch config.training.batch_size, seed config.seed,
  config.data.random_flip / uniform_dequantization, config.data.num_workers (default 2)
  and prefetch (default 2); labels with a class-conditional model
  (config.model.num_classes > 0), checked to lie in [0, num_classes)."""
  from data import images
  source = images.get_source(config, "train")
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
