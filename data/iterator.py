"""Host-sharded batch iterators over in-memory arrays: endless, resumable training batches
(`ShuffledBatches`, `BatchIterator`, `ArrayBatches`) and one padded evaluation pass
(`EvalBatches`)."""
from __future__ import annotations

from typing import Iterator, Mapping

import jax
import numpy as np

from data import transforms
from common.errors import UserError

# Domain tags that keep the random streams of different purposes apart.
SHUFFLE, FLIP, NOISE, EVAL_NOISE = 0, 1, 2, 3


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process_index {index} is not in 0..{count - 1} "
                     f"(process_count {count})")
  return index, count


def _check_images(images: np.ndarray) -> None:
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (N, H, W, C); got {images.dtype} of shape "
                     f"{images.shape}")


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise UserError(f"global batch size {global_batch_size} must be a positive multiple "
                    f"of the number of hosts {process_count}")
  return global_batch_size // process_count


def _bit_generator(seed: int, tag: int, counter: int) -> np.random.PCG64:
  return np.random.PCG64(np.random.SeedSequence([seed, tag, counter]))


def _uniform24(bitgen: np.random.PCG64, shape: tuple[int, ...]) -> np.ndarray:
  """float32 uniforms on the grid k / 2**24 in [0, 1), one 64-bit output each.

  Built from the raw PCG64 outputs, whose stream numpy keeps fixed across versions
  (Generator methods may change their algorithms); 24 bits are exact in float32, so the
  value never rounds up to 1.
  """
  raw = bitgen.random_raw(int(np.prod(shape)))
  return ((raw >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)


def _noise(seed: int, tag: int, step: int, start: int, shape: tuple[int, ...]) -> np.ndarray:
  """U[0, 1) float32 of shape (n, H, W, C): blocks start..start+n-1 of the (seed, tag, step)
  stream, one block of H*W*C outputs per example of the global batch."""
  bitgen = _bit_generator(seed, tag, step)
  bitgen.advance(start * int(np.prod(shape[1:])))
  return _uniform24(bitgen, shape)


def _to_float(images: np.ndarray, dequantize: bool, seed: int, tag: int, step: int,
              start: int, out: np.ndarray | None = None) -> np.ndarray:
  """uint8 images (n, H, W, C) -> float32: transforms.to_float's k / 255, or
  transforms.dequantize's (k + u) / 256 with u = blocks start..start+n-1 of the (seed, tag,
  step) stream (`_noise`). Bit for bit those functions' results, computed in place in one
  float32 array (`out` if given: e.g. a shared-memory batch), without their temporaries:
  4-byte float arrays dominate the host's cost per 256 px image."""
  x = np.empty(images.shape, np.float32) if out is None else out
  if not dequantize:
    # k / 255 in float32, the division itself (k * (1 / 255) rounds differently).
    return np.divide(images, np.float32(255.0), out=x, dtype=np.float32)
  n, per = images.shape[0], int(np.prod(images.shape[1:]))
  bitgen = _bit_generator(seed, tag, step)
  bitgen.advance(start * per)
  pixels, flat = images.reshape(n, per), x.reshape(n, per)
  # The stream in runs of whole examples (~2 MB of raw outputs): the same values as one
  # draw, without a fresh 8-byte-per-value array for the whole batch each time.
  run = max(1, (1 << 18) // max(per, 1))
  for a in range(0, n, run):
    raw = bitgen.random_raw((min(n, a + run) - a) * per).reshape(-1, per)
    raw >>= np.uint64(40)
    u = flat[a:a + run]
    # _uniform24's k / 2^24 (exact: 24-bit integers and a power of two), then
    # dequantize's clip at 1 - 2^-16, (k + u) and / 256 (a power of two), in its order.
    np.multiply(raw, np.float32(2.0 ** -24), out=u, dtype=np.float32)
    np.minimum(u, np.float32(1.0 - 2.0 ** -16), out=u)
    np.add(pixels[a:a + run], u, out=u, dtype=np.float32)
    u *= np.float32(1.0 / 256.0)
  return x


class ShuffledBatches:
  """The order and position of an endless, resumable, host-sharded stream of batches over
  N examples (the rules below); subclasses say what a batch holds
  (`batch(epoch, index)` for this host's indices `indices(epoch, index)`).

  Args:
    num_examples: N.
    global_batch_size: B, examples per step over all hosts; a multiple of process_count
      and at most N.
    seed: non-negative int; the whole stream is a function of it.
    process_index, process_count: this host and the number of hosts; default
      jax.process_index() and jax.process_count().

  Training (`BatchIterator`; `ArrayBatches` for arrays used as they are, such as coupled
  pairs, in the same order): an endless stream of float32 batches (B / P, H, W, C) for this
  host, P = number of hosts (processes). Epoch e visits the N examples in the order of a
  permutation drawn from (seed, e); its batches are consecutive runs of B = global batch
  size indices of that permutation (the last N mod B of an epoch are dropped, as score_sde's
  tf.data pipeline does with drop_remainder), and host h takes the h-th run of B / P of each
  global batch. So the hosts' shards are disjoint and together make up the global batch, and
  the global batch does not depend on P.

  Everything random is a function of (seed, position), never of global or host state:
    * the order of epoch e: from the PCG64 stream of SeedSequence([seed, SHUFFLE, e]);
    * whether example j of global batch s (s = e * batches_per_epoch + index) is flipped:
      output j of the stream of SeedSequence([seed, FLIP, s]);
    * its dequantization noise: the j-th block of H*W*C outputs of the stream of
      SeedSequence([seed, NOISE, s]); each host jumps to its block with PCG64.advance, so
      it draws only its own share.
  Only raw PCG64 outputs are used (turned into uniforms and permutations here), because
  numpy keeps that bit stream fixed across versions but not its Generator methods: a saved
  position replays the same batches after a numpy upgrade.
  The position `state()` = {'epoch', 'index'} (with seed, N and B to catch a mismatched
  restore) is JSON-serialisable; `restore(state)` makes the next batch exactly (bitwise) the
  one an uninterrupted run would have produced next.
  """

  def __init__(self, num_examples: int, global_batch_size: int, seed: int, *,
               process_index: int | None = None, process_count: int | None = None):
    self.process_index, self.process_count = _host(process_index, process_count)
    self.local_batch_size = _local_batch(global_batch_size, self.process_count)
    if global_batch_size > num_examples:
      raise UserError(f"global batch size {global_batch_size} exceeds the "
                      f"{num_examples} examples of the data set")
    if int(seed) < 0:
      raise ValueError(f"seed must be a non-negative int; got {seed}")
    self.num_examples = int(num_examples)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.batches_per_epoch = self.num_examples // self.global_batch_size
    self.epoch, self.index = 0, 0
    self._order: tuple[int, np.ndarray] | None = None

  @property
  def step(self) -> int:
    """Global batches produced so far (the step of the next batch)."""
    return self.epoch * self.batches_per_epoch + self.index

  def order(self, epoch: int) -> np.ndarray:
    """The permutation (N,) of example indices that epoch `epoch` visits."""
    if self._order is None or self._order[0] != epoch:
      # argsort of raw 64-bit outputs: a uniform permutation (ties have probability
      # ~N^2 / 2^65) that, unlike Generator.permutation, numpy keeps stable across versions.
      raw = _bit_generator(self.seed, SHUFFLE, epoch).random_raw(self.num_examples)
      self._order = (epoch, np.argsort(raw, kind="stable"))
    return self._order[1]

  def indices(self, epoch: int, index: int) -> np.ndarray:
    """This host's example indices (B / P,) of batch `index` of epoch `epoch`."""
    if not 0 <= index < self.batches_per_epoch:
      raise ValueError(f"batch index {index} not in 0..{self.batches_per_epoch - 1}")
    start = index * self.global_batch_size + self.process_index * self.local_batch_size
    return self.order(epoch)[start:start + self.local_batch_size]

  def batch(self, epoch: int, index: int):
    """This host's share of batch `index` of epoch `epoch`: a pure function of (seed,
    epoch, index, host), independent of the iterator's position."""
    raise NotImplementedError

  def __iter__(self):
    return self

  def __next__(self):
    out = self.batch(self.epoch, self.index)
    self.index += 1
    if self.index == self.batches_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    return out

  def state(self) -> dict[str, int]:
    """The position, JSON-serialisable: {'epoch', 'index'} of the next batch, plus the seed,
    N and B that restore() checks so a position is not applied to a different stream."""
    return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
            "num_examples": self.num_examples, "global_batch_size": self.global_batch_size}

  def restore(self, state: Mapping[str, int]) -> None:
    """Continue from a position saved by state(): the next batch is the one that followed it.

    Raises ValueError if the saved seed, N or B differ from this iterator's (the saved
    position would then name a different batch), or the position is out of range.
    """
    missing = {"epoch", "index"} - set(state)
    if missing:
      raise ValueError(f"data iterator state {dict(state)} lacks {sorted(missing)}")
    mine = self.state()
    for key in ("seed", "num_examples", "global_batch_size"):
      if key in state and int(state[key]) != mine[key]:
        raise UserError(f"data iterator state was saved with {key} = {state[key]}, but "
                        f"this iterator has {key} = {mine[key]}; resuming would not "
                        "reproduce the interrupted run")
    epoch, index = int(state["epoch"]), int(state["index"])
    if epoch < 0 or not 0 <= index < self.batches_per_epoch:
      raise ValueError(f"data iterator state epoch {epoch}, index {index} out of range "
                       f"(index in 0..{self.batches_per_epoch - 1})")
    self.epoch, self.index = epoch, index


class BatchIterator(ShuffledBatches):
  """Endless, resumable, host-sharded training batches of images (ShuffledBatches' rules).

  Args:
    images: uint8 (N, H, W, C), the whole split (every host holds all of it).
    global_batch_size, seed, process_index, process_count: as ShuffledBatches.
    random_flip: mirror each example left-right with probability 1/2.
    uniform_dequantization: (k + U[0, 1)) / 256 instead of k / 255 (transforms.dequantize).

  `next(it)` returns float32 (B / process_count, H, W, C) in [0, 1].
  """

  def __init__(self, images: np.ndarray, global_batch_size: int, seed: int, *,
               random_flip: bool = False, uniform_dequantization: bool = False,
               process_index: int | None = None, process_count: int | None = None):
    _check_images(images)
    super().__init__(images.shape[0], global_batch_size, seed,
                     process_index=process_index, process_count=process_count)
    self.images = images
    self.random_flip = bool(random_flip)
    self.uniform_dequantization = bool(uniform_dequantization)

  def batch(self, epoch: int, index: int) -> np.ndarray:
    """This host's share (B / P, H, W, C) float32 of batch `index` of epoch `epoch`."""
    idx = self.indices(epoch, index)
    step = epoch * self.batches_per_epoch + index
    offset = self.process_index * self.local_batch_size
    images = self.images[idx]  # a copy (fancy indexing): mirrored in place
    if self.random_flip:
      flips = _uniform24(_bit_generator(self.seed, FLIP, step), (self.global_batch_size,)) < 0.5
      transforms.mirror_in_place(images, flips[offset:offset + self.local_batch_size])
    return _to_float(images, self.uniform_dequantization, self.seed, NOISE, step, offset)


class ArrayBatches(ShuffledBatches):
  """Endless, resumable, host-sharded batches of several arrays that share their first
  axis (e.g. coupled pairs {"x0": x, "z": z}), in the order of ShuffledBatches: `next(it)`
  = {name: array[indices]} with (B / P, ...) rows of each, unchanged (no flip or noise).
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, seed: int,
               *, process_index: int | None = None, process_count: int | None = None):
    lengths = {name: len(a) for name, a in arrays.items()}
    if not lengths or len(set(lengths.values())) != 1:
      raise ValueError(f"arrays must share their first axis; got lengths {lengths}")
    super().__init__(next(iter(lengths.values())), global_batch_size, seed,
                     process_index=process_index, process_count=process_count)
    self.arrays = dict(arrays)

  def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    """This host's rows of batch `index` of epoch `epoch`, by array name."""
    idx = self.indices(epoch, index)
    return {name: a[idx] for name, a in self.arrays.items()}


class EvalBatches:
  """One ordered pass over a split, padded to whole batches (below).

  Args:
    images: uint8 (N, H, W, C) in memory, or a random-access source (data/sources.py:
      `len(src)`, `src.shape`, `src.read(indices)` -> (uint8 images, int32 labels)), from
      which each batch reads only this host's examples (the split is never held whole).
    global_batch_size: B over all hosts.
    labels: int32 (N,) with in-memory images (default -1); a source has its own.
    seed, uniform_dequantization, process_index, process_count: below.

  Iterating yields dicts, for this host:
    'image': float32 (B / P, H, W, C) in [0, 1]; zeros in padded slots;
    'label': int32 (B / P,); -1 in padded slots;
    'mask':  bool (B / P,); True for real examples.
  len() is ceil(N / B), the same on every host. Each pass yields the same batches, the
  same (bitwise) from memory and from a source of the same images.

  Evaluation (`EvalBatches`): one pass over all N examples in stored order, no shuffle, no
  flips; batches of B / P per host. The last, partial global batch is PADDED, not dropped:
  every batch has the same shape (one compile), padded slots hold zero images and label -1,
  and `mask` (B / P,) bool is True exactly for real examples. Every host gets the same number
  of batches, ceil(N / B), which collective evaluation steps need. Dequantization noise (when
  enabled: score_sde's evaluation loss follows data.uniform_dequantization) is drawn as above
  with EVAL_NOISE and the batch index. Bits/dim never take dequantized batches from here:
  the likelihood dequantizes once itself, with fresh noise per repeat (solvers/likelihood.py).
  """

  def __init__(self, images, global_batch_size: int, *,
               labels: np.ndarray | None = None, seed: int = 0,
               uniform_dequantization: bool = False, process_index: int | None = None,
               process_count: int | None = None):
    self.process_index, self.process_count = _host(process_index, process_count)
    self.local_batch_size = _local_batch(global_batch_size, self.process_count)
    if hasattr(images, "read"):
      if labels is not None:
        raise ValueError("labels come from the source; pass labels only with arrays")
      self.source, n = images, len(images)
      self.shape = tuple(images.shape)
    else:
      _check_images(images)
      n = images.shape[0]
      if labels is not None and np.shape(labels) != (n,):
        raise ValueError(f"labels have shape {np.shape(labels)}; expected ({n},)")
      self.source = _Arrays(images, np.full(n, -1, np.int32) if labels is None
                            else np.asarray(labels, np.int32))
      self.shape = tuple(images.shape[1:])
    self.num_examples = int(n)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.uniform_dequantization = bool(uniform_dequantization)

  def __len__(self) -> int:
    return -(-self.num_examples // self.global_batch_size)

  def batch(self, index: int) -> dict[str, np.ndarray]:
    """This host's share of evaluation batch `index` (0 <= index < len(self))."""
    offset = self.process_index * self.local_batch_size
    idx = index * self.global_batch_size + offset + np.arange(self.local_batch_size)
    mask = idx < self.num_examples
    real = int(mask.sum())  # the real examples are a prefix of the host's slots
    images = np.zeros((self.local_batch_size,) + self.shape, np.uint8)
    labels = np.full(self.local_batch_size, -1, np.int32)
    if real:
      images[:real], labels[:real] = self.source.read(idx[:real])
    # The noise is drawn for every slot (padded ones too), so a batch is the same
    # whichever examples are real; padded slots are zeroed after.
    x = _to_float(images, self.uniform_dequantization, self.seed, EVAL_NOISE, index, offset)
    x[~mask] = 0.0
    return {"image": x, "label": labels, "mask": mask}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    for index in range(len(self)):
      yield self.batch(index)


class _Arrays:
  """In-memory images and labels behind the source interface (`read(indices)`)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]
