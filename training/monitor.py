"""What the training loop watches besides the training loss (score_sde's run_lib.train): a
held-out loss every config.training.eval_freq steps (`HeldOutLoss`) and sample snapshots
every config.training.snapshot_freq steps (`Snapshots`), and TensorBoard's event files
(`tensorboard_writer`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging

import data as data_lib
import sde_lib
from data.images import get_eval_batches
from common.errors import UserError
from solvers.from_config import get_sampling_fn
from common.images import save_snapshot_png
from common import io as cio
from common.io import save_npz
from common.keys import stream_key
from common.mesh import put_batch
from training import losses
from training.restore import model_fn_for
from training.state import TrainState

SNAPSHOT_SUBDIR = "samples"
MAX_SNAPSHOT_SAMPLES = 64


class HeldOutLoss:
  """`loss(state, step) -> float | None`: the EMA parameters' loss on held-out data.

  The held-out loss is the training objective (config.training's loss, without dropout) of
  the EMA parameters on one evaluation batch, logged to metrics.jsonl as
  {"step": s, "eval_loss": ...}. For toy data the batch (config.training.batch_size fresh
  points) and the loss's noise come from key fold_in(stream_key(seed, "eval_loss"), s); for
  images it is the next full batch of config.eval.batch_size examples of the test split
  (cycled); reflow pairs have no held-out split, so there is no held-out loss for them.
  """

  def __init__(self, config):
    self.config = config
    self.sde = sde_lib.get_sde(config)
    self.key = stream_key(int(config.seed), "eval_loss")
    loss_fn = losses.get_loss_fn(self.sde, config, train=False)
    scaler = data_lib.get_data_scaler(config)
    self._batches: Iterator[np.ndarray] | None = None
    self.enabled = not config.training.get("pairs_dir", "")
    if data_lib.is_toy(config):
      name, dim, n = config.data.dataset, int(config.data.dim), int(config.training.batch_size)

      def eval_loss(state: TrainState, key):
        data_key, loss_key = jax.random.split(key)
        x = scaler(data_lib.toy.sample(data_key, name, n, dim))
        return loss_fn(state.model(ema=True), x, loss_key)

      self._fn = jax.jit(lambda state, key: eval_loss(state, key))
      self._toy = True
    else:
      self._fn = jax.jit(
          lambda state, x, key: loss_fn(state.model(ema=True), scaler(x), key))
      self._toy = False

  def _next_image_batch(self) -> np.ndarray | None:
    if self._batches is None:
      config = self.config

      def full_batches():
        for batch in get_eval_batches(config, split="test"):
          if np.all(batch["mask"]):  # a padded last batch would compile a second shape
            yield np.asarray(batch["image"])

      self._batches = _cycle(full_batches)
    try:
      return next(self._batches)
    except (UserError, FileNotFoundError, StopIteration) as e:
      logging.warning("no held-out loss (config.training.eval_freq): %s",
                      str(e) or "the test split has no full batch of "
                      "config.eval.batch_size examples")
      self.enabled = False
      return None

  def __call__(self, state: TrainState, step: int) -> float | None:
    if not self.enabled:
      return None
    key = jax.random.fold_in(self.key, step)
    if self._toy:
      return float(self._fn(state, key))
    x = self._next_image_batch()
    if x is None:
      return None
    return float(self._fn(state, put_batch(x), key))


def _cycle(make_iter) -> Iterator[Any]:
  """make_iter()'s items, over and over; stops if one pass yields nothing."""
  while True:
    empty = True
    for item in make_iter():
      empty = False
      yield item
    if empty:
      return


class Snapshots:
  """`snapshots(state, step) -> picture path`: the sample snapshot of `step` (see
  below). The sampler is built once; the EMA network is its argument, so new
  parameters do not recompile it.

  Taken when config.training.snapshot_sampling: config.training.batch_size samples (at
  most 64) drawn with the configured sampler (config.sampling) from the EMA parameters,
  with key fold_in(stream_key(seed, "snapshot"), s); written to
  workdir/samples/snapshot_step<s>.npz (data space) and a .png beside it (an image grid,
  or a scatter for 2-D data). score_sde writes the same grid per snapshot.
  """

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.sde = sde_lib.get_sde(config)
    n = min(int(config.training.batch_size), MAX_SNAPSHOT_SAMPLES)
    self.sampler = get_sampling_fn(config, self.sde, (n,) + data_lib.get_data_shape(config))
    self.key = stream_key(int(config.seed), "snapshot")
    self.inverse_scaler = data_lib.get_data_inverse_scaler(config)

  def __call__(self, state: TrainState, step: int) -> str:
    model_fn = model_fn_for(self.config, self.sde, state.model(ema=True))
    x, nfe = self.sampler(jax.random.fold_in(self.key, step), model_fn)
    x = np.asarray(self.inverse_scaler(x))
    stem = os.path.join(self.workdir, SNAPSHOT_SUBDIR, f"snapshot_step{step}")
    if jax.process_index() != 0:
      return stem + ".png"
    save_npz(stem + ".npz", samples=x, nfe=float(nfe))
    if x.ndim == 4 or (x.ndim == 2 and x.shape[1] == 2):
      return save_snapshot_png(np.clip(x, 0, 1) if x.ndim == 4 else x, stem + ".png")
    return stem + ".npz"


def tensorboard_writer(directory: str, purge_step: int | None = None,
                       sync_seconds: float = 60.0) -> Any:
  """A tensorboardX SummaryWriter writing event files into `directory` (None without
  tensorboardX). purge_step: TensorBoard hides the events past it that an earlier run
  wrote (a resumed run logs those steps again).

  tensorboardX writes `gs://` through its own client, not etils.epath; for an
  object-store `directory` (common.io.is_remote) the writer writes into a local temporary
  folder and copies its event files to `directory` through common.io, at a flush at most
  every `sync_seconds` and at close (docs/ARCHITECTURE.md, "Object stores")."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  if not cio.is_remote(directory):
    return SummaryWriter(directory, purge_step=purge_step)
  return _UploadingWriter(SummaryWriter, directory, purge_step, sync_seconds)


class _UploadingWriter:
  """A SummaryWriter on a local temporary folder whose event files are copied to an
  object-store `directory` (each file written whole: objects cannot be appended to)."""

  def __init__(self, writer_cls, directory: str, purge_step: int | None,
               sync_seconds: float):
    self.directory, self.sync_seconds = directory, sync_seconds
    self.local = tempfile.mkdtemp(prefix="tensorboard-")
    self.writer = writer_cls(self.local, purge_step=purge_step)
    self.uploaded: dict[str, int] = {}
    self.last_sync = time.monotonic()

  def add_scalar(self, *args, **kwargs) -> None:
    self.writer.add_scalar(*args, **kwargs)

  def add_image(self, *args, **kwargs) -> None:
    self.writer.add_image(*args, **kwargs)

  def flush(self) -> None:
    self.writer.flush()
    if time.monotonic() - self.last_sync >= self.sync_seconds:
      self._sync()

  def _sync(self) -> None:
    for name in sorted(os.listdir(self.local)):
      if not os.path.isfile(os.path.join(self.local, name)):
        continue  # add_scalars' per-tag folders: not used by the loop
      size = os.path.getsize(os.path.join(self.local, name))
      if self.uploaded.get(name) != size:
        with open(os.path.join(self.local, name), "rb") as src, \
             cio.atomic_file(cio.join(self.directory, name), "wb") as dst:
          shutil.copyfileobj(src, dst)
        self.uploaded[name] = size
    self.last_sync = time.monotonic()

  def close(self) -> None:
    self.writer.close()
    try:
      self._sync()
    finally:
      shutil.rmtree(self.local, ignore_errors=True)
