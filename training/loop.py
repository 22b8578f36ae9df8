"""The one training loop (`run_loop`; `train` for score models): resumable from the latest
checkpoint, steps on a fixed grid of n_jitted_steps, logs, held-out loss, snapshots and
checkpoints; `run_loop`'s docstring gives the data sources and the schedule."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from common import io as cio
from common import lock
from common.errors import UserError
import data as data_lib
from common.images import save_png
from common.io import append_record_to, atomic_file
from common.mesh import make_mesh, state_sharding
from training import checkpoint, monitor, optim, run_record
from training import step as step_lib
from training.state import TrainState, abstract_train_state, create_train_state

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
DAMAGED_SUBDIR = "damaged_checkpoints"
LOSS_CURVE_FILE = "loss_curve.png"


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or inf; `step` is the first offending step (0-based update
  index: the state had taken `step` updates when it produced the loss)."""

  def __init__(self, step: int, loss: float, checkpoint_step: int | None,
               directory: str):
    self.step, self.loss, self.checkpoint_step = step, loss, checkpoint_step
    kept = (f"the latest checkpoint (step {checkpoint_step}) in {directory} is intact"
            if checkpoint_step is not None else f"no checkpoint was saved in {directory}")
    super().__init__(f"non-finite loss {loss} at step {step}; stopped without saving, "
                     f"{kept}")


class NonFiniteStateError(UserError, FloatingPointError):
  """The state to be saved holds NaN or inf (parameters, EMA or optimizer moments)
  although the losses were finite; nothing was saved."""

  def __init__(self, step: int, parts: str, checkpoint_step: int | None, directory: str):
    self.step, self.checkpoint_step = step, checkpoint_step
    kept = (f"the latest checkpoint (step {checkpoint_step}) in {directory} is finite"
            if checkpoint_step is not None else f"no checkpoint was saved in {directory}")
    super().__init__(f"the {parts} at step {step} are not all finite (a diverging run: "
                     f"lower config.optim.lr?); stopped without saving, {kept}")


class WorkdirError(UserError, OSError):
  """The workdir cannot be created or written."""


def check_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks that files can be written in it; returns its
  absolute path (an object-store URL as it is: common.io.join). Raises WorkdirError
  naming the path otherwise."""
  if cio.is_remote(workdir):
    from etils import epath
    path = cio.join(workdir)
    try:
      epath.Path(path).mkdir(parents=True, exist_ok=True)
      probe = epath.Path(cio.join(path, f".write_test_{os.getpid()}"))
      probe.write_text("")
      probe.unlink()
    except Exception as e:  # noqa: BLE001 - each object store raises its own errors
      raise WorkdirError(f"workdir {path} is not writable: {e.__class__.__name__}: "
                         f"{e}") from None
    return path
  path = os.path.abspath(os.fspath(workdir))
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
      pass
  except OSError as e:
    raise WorkdirError(f"workdir {path} is not writable: "
                       f"{e.strerror or e.__class__.__name__}") from None
  return path


def check_shared_workdir(workdir: str, process_index: int | None = None,
                         process_count: int | None = None, barrier=None) -> None:
  """With several processes, orbax needs a workdir every host sees. Each process writes
  workdir/.processes/<index>, waits at a barrier, then checks it sees every other
  process's marker; raises WorkdirError otherwise (one line naming the workdir)."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count <= 1 or cio.is_remote(workdir):  # every process sees an object store
    return
  if barrier is None:
    from jax.experimental import multihost_utils

    def barrier(name):
      multihost_utils.sync_global_devices(name)
  markers = os.path.join(workdir, ".processes")
  os.makedirs(markers, exist_ok=True)
  with atomic_file(os.path.join(markers, str(index)), "w") as f:
    f.write(str(index))
  barrier("workdir markers written")
  missing = [i for i in range(count) if not os.path.exists(os.path.join(markers, str(i)))]
  barrier("workdir markers checked")
  if missing:
    raise WorkdirError(f"workdir {workdir} is not on a filesystem every process sees "
                       f"(process {index} does not see the files of processes "
                       f"{', '.join(map(str, missing))}): orbax checkpoints need a shared "
                       "filesystem (NFS, Lustre, GCS via a gs:// path); README 'Scaling out'")


def _crossed(before: int, after: int, freq: int) -> bool:
  """Whether a multiple of freq lies in (before, after]."""
  return freq > 0 and after // freq > before // freq


def _field(config, path: str):
  section, name = path.split(".")
  return config[section].get(name) if section in config else None


def check_number(config, path: str, *, low=None, high=None, low_open=False,
                 high_open=False, integer=False) -> None:
  """Raises UserError naming config.<path> unless its value is a number (an integer
  with integer=True) in the range given by low/high (closed unless *_open)."""
  value = _field(config, path)
  ok_type = (isinstance(value, (int, np.integer)) if integer
             else isinstance(value, (int, float, np.number)))
  if isinstance(value, bool) or not ok_type:
    raise UserError(f"config.{path} = {value!r} must be "
                    f"{'an integer' if integer else 'a number'}")
  bad = ((low is not None and (value <= low if low_open else value < low))
         or (high is not None and (value >= high if high_open else value > high))
         or (not integer and not math.isfinite(float(value))))
  if bad:
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    raise UserError(f"config.{path} = {value!r} is out of range: it must be "
                    f"{' and '.join(x for x in (lo, hi) if x)}")


def check_config(config, n_devices: int) -> None:
  """Every training field the loop reads, checked, each bad one named in its message."""
  check_number(config, "training.batch_size", low=1, integer=True)
  # n_iters = 0 would train nothing and say nothing.
  check_number(config, "training.n_iters", low=1, integer=True)
  check_number(config, "training.n_jitted_steps", low=1, integer=True)
  check_number(config, "training.log_freq", low=1, integer=True)
  for name in ("snapshot_freq", "snapshot_freq_for_preemption", "eval_freq",
               "keep_checkpoints"):
    if _field(config, f"training.{name}") is not None:
      check_number(config, f"training.{name}", low=0, integer=True)
  check_number(config, "model.ema_rate", low=0.0, high=1.0, high_open=True)
  check_number(config, "optim.lr", low=0.0, low_open=True)
  if _field(config, "optim.grad_clip") is not None:
    check_number(config, "optim.grad_clip", low=None)
  if _field(config, "optim.warmup") is not None:
    check_number(config, "optim.warmup", low=0, integer=True)
  tc = config.training
  if tc.batch_size % n_devices:
    raise UserError(f"config.training.batch_size = {tc.batch_size} must be divisible "
                    f"by the number of devices ({n_devices})")
  for name in ("snapshot_freq", "snapshot_freq_for_preemption"):
    freq = int(tc.get(name, 0))
    if freq > 0 and freq % tc.n_jitted_steps:
      logging.warning("config.training.%s = %d is not a multiple of n_jitted_steps = %d: "
                      "checkpoints land at the end of the call that passes it",
                      name, freq, tc.n_jitted_steps)


class _MetricsWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl (process 0 only), and
  the same scalars to TensorBoard event files in workdir/tensorboard when tensorboardX
  is installed.

  On creation it repairs the file for a run that continues from the checkpoint at
  `restored_step` (0 for a fresh start): records past that step were logged by a run
  that died before saving them and will be logged again, and a last line without its
  newline is a write cut short by a kill; both are dropped (the file is rewritten
  atomically).
  """

  def __init__(self, workdir: str, restored_step: int = 0):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = jax.process_index() == 0
    self.tb = None
    if self.enabled:
      repair_metrics(self.path, restored_step)
      self.tb = _tensorboard_writer(workdir, restored_step)

  def write(self, record: dict[str, Any]) -> None:
    if self.enabled:
      append_record_to(self.path, record)  # a whole line, fsynced: a kill tears at most it
      if self.tb is not None:
        for name, value in record.items():
          if name not in ("step", "time"):
            self.tb.add_scalar(name, value, record["step"], walltime=record.get("time"))
        self.tb.flush()

  def image(self, tag: str, png_path: str, step: int) -> None:
    """Adds the PNG at `png_path` (a snapshot grid or scatter) to TensorBoard's images."""
    if self.tb is not None and cio.exists(png_path):
      from PIL import Image
      pixels = np.asarray(Image.open(io.BytesIO(cio.read_bytes(png_path))).convert("RGB"))
      self.tb.add_image(tag, pixels, step, dataformats="HWC")
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
      self.tb = None


def _tensorboard_writer(workdir: str, restored_step: int):
  """A tensorboardX SummaryWriter on workdir/tensorboard (None without tensorboardX).
  purge_step drops events past the restored step, as repair_metrics does."""
  return monitor.tensorboard_writer(cio.join(workdir, TENSORBOARD_SUBDIR),
                                    purge_step=restored_step if restored_step > 0 else None)


def repair_metrics(path: str, restored_step: int) -> list[dict]:
  """Keeps the complete records of the JSONL file `path` whose step is at most
  `restored_step`; rewrites the file (atomically) if anything was dropped. Returns the
  kept records."""
  if not cio.exists(path):
    return []
  raw = cio.read_bytes(path)
  kept, changed = [], False
  lines = raw.split(b"\n")
  if lines and lines[-1] == b"":
    lines = lines[:-1]
  elif lines:
    changed = True  # torn last line
    lines = lines[:-1]
  for line in lines:
    try:
      record = json.loads(line)
      keep = int(record["step"]) <= restored_step
    except (ValueError, KeyError, TypeError):
      keep = False
    if keep:
      kept.append(record)
    else:
      changed = True
  if changed:
    logging.info("%s: kept the %d records up to step %d (dropped later or torn ones)",
                 path, len(kept), restored_step)
    with atomic_file(path, "w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
  return kept


def _next_batches(data_source, n: int, local_batch: int):
  """n batches from the host iterator, stacked on a leading axis."""
  try:
    batches = [next(data_source) for _ in range(n)]
  except StopIteration:
    raise UserError("data_source ran out of batches; it must yield batches for all "
                    "config.training.n_iters steps (repeat the data set)") from None
  first = jax.tree.leaves(batches[0])[0]
  if first.shape[0] != local_batch:
    raise UserError(f"data_source gave a batch of {first.shape[0]} examples; this "
                    f"process needs {local_batch} (config.training.batch_size / "
                    f"{jax.process_count()} processes)")
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


def train(config, workdir: str, *, data_source=None, distributed: bool = False
          ) -> TrainState:
  """Trains the model of `config` until config.training.n_iters steps, resuming from
  the latest checkpoint in `workdir` if there is one; returns the final state.

  distributed: start JAX's multi-process runtime first, as main.py --multihost does
  (common.distributed.initialize_distributed: JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID or the cluster's variables). Raises WorkdirError for an unwritable workdir and
  NonFiniteLossError if the loss becomes NaN or inf (nothing is saved then).
  """
  if distributed:
    from common.distributed import initialize_distributed
    initialize_distributed()
  workdir = check_workdir(workdir)
  # One writer per workdir (common/lock.py): a second training stops here, exit code 2.
  with lock.hold(workdir, "training", enabled=jax.process_index() == 0):
    return _train_locked(config, workdir, data_source)


def _train_locked(config, workdir: str, data_source) -> TrainState:
  check_shared_workdir(workdir)
  # config.training.fsdp > 1: parameters, optimizer state and EMA split over that many
  # devices (common/mesh.py); 1: replicated.
  mesh = make_mesh(fsdp=int(config.training.get("fsdp", 1)))
  check_config(config, mesh.size)
  if data_source is None and not data_lib.is_toy(config):
    raise UserError(f"dataset {config.data.dataset!r} (config.data.dataset) is not a toy "
                    "dataset; pass a host data_source (an iterator of batches) to train()")

  host = data_source is not None
  if host and not (hasattr(data_source, "state") and hasattr(data_source, "restore")):
    logging.warning("data_source has no state()/restore(): a resumed run restarts the "
                    "data stream from its beginning instead of where it stopped")
  train_fn = step_lib.get_train_fn(config, mesh, host_batches=host)
  # The workdir's record (training/run_record.py): written for a new model once its
  # config has built the step; on resume another process, data set or network stops
  # here with exit code 2.
  run_record.start_training(config, workdir, write_enabled=jax.process_index() == 0)
  return run_loop(config, workdir, mesh, train_fn, data_source=data_source)


def run_loop(config, workdir: str, mesh, train_fn, *, data_source=None,
             log_record: Callable[[TrainState, dict], dict] | None = None) -> TrainState:
  """The training loop of any model (score model, noise-conditional classifier): creates
  or restores the TrainState of `config` (its model, training, optim and seed sections)
  in `workdir`, then runs train_fn until config.training.n_iters with the module
  grid, logging, checks and checkpoints below; returns the final state.

  Rerunning after the process died continues from the latest checkpoint in
  `workdir/checkpoints` with the same step count, optimizer state, EMA, PRNG stream and
  data position (training/checkpoint.py has the layout). Data come from one of two
  sources: toy data, sampled on the device inside the compiled step from the step's key
  (no host transfer); or a host iterator `data_source`, where `next(data_source)` gives
  this process's share of one step's batch, a numpy array (B / process_count, ...) in
  data space ([0, 1] for images; the scaler runs on the device) or a dict of arrays in
  model space (reflow pairs {"x0", "z"}), with `state()` / `restore(state)` for exact
  resumption (the position is saved with every checkpoint). The loop runs
  `config.training.n_jitted_steps` updates per device call, on a grid of multiples of
  n_jitted_steps (an interrupted and a resumed run group the steps the same way), checks
  the losses after each call, logs every `log_freq` steps (absl logging and
  metrics.jsonl), saves every `snapshot_freq_for_preemption` and `snapshot_freq` steps
  and at the end; every `eval_freq` steps it logs the EMA parameters' held-out loss, and
  with `snapshot_sampling` writes a sample snapshot every `snapshot_freq` steps
  (training/monitor.py).

  train_fn: `train_fn(state, n)` when the batches are drawn on the device (data_source
  None), else `train_fn(state, batches, n)` with n stacked host batches; either returns
  (state, {"loss": (n,), "grad_norm": (n,)}). log_record(state, record): the
  metrics.jsonl record to write at a logged step, given the default one (step, loss,
  grad_norm, lr, ...); None writes the default.
  """
  optimizer = optim.get_optimizer(config)
  schedule = optim.get_lr_schedule(config)
  host = data_source is not None
  manager = checkpoint.make_manager(config, workdir)
  try:
    if manager.latest_step() is None:
      state = step_lib.put_state(create_train_state(config, optimizer), mesh)
      logging.info("starting training in %s on %d %s device(s), %d process(es)", workdir,
                   jax.device_count(), jax.default_backend(), jax.process_count())
    else:
      # The newest intact, finite checkpoint (training/checkpoint.py: damaged newer
      # ones are reported and skipped).
      abstract = abstract_train_state(config, optimizer)
      state, data_state = checkpoint.restore(
          manager, abstract, sharding=state_sharding(abstract, mesh))
      if host and data_state and hasattr(data_source, "restore"):
        data_source.restore(data_state)
      _set_aside_newer(manager, workdir, int(jax.device_get(state.step)))
      logging.info("resumed from the checkpoint at step %d in %s",
                   int(jax.device_get(state.step)), checkpoint.checkpoint_dir(workdir))
    return _run(config, state, train_fn, manager, workdir, mesh, data_source, schedule,
                log_record)
  finally:
    manager.close()


def _set_aside_newer(manager, workdir: str, restored: int) -> None:
  """Moves the checkpoints newer than the restored one (damaged: restore skipped them)
  to workdir/damaged_checkpoints/, so that the resumed run can save those steps again
  and nothing of them is deleted."""
  newer = [s for s in manager.all_steps() if s > restored]
  if not newer or jax.process_index() != 0:
    return
  for s in newer:
    src = checkpoint.step_dir(manager.directory, s)
    dst = os.path.join(workdir, DAMAGED_SUBDIR, str(s))
    n = 1
    while cio.exists(dst):
      dst, n = os.path.join(workdir, DAMAGED_SUBDIR, f"{s}.{n}"), n + 1
    checkpoint.move_step(src, dst)  # an object store's copy + delete, through epath
    logging.warning("moved the damaged checkpoint %s to %s", src, dst)
  manager.reload()


def _run(config, state, train_fn, manager, workdir, mesh, data_source, schedule,
         log_record=None) -> TrainState:
  metrics_out = _MetricsWriter(workdir, int(jax.device_get(state.step)))
  try:
    return _loop(config, state, train_fn, manager, workdir, mesh, data_source, schedule,
                 metrics_out, log_record)
  finally:
    metrics_out.close()
    if jax.process_index() == 0:
      try:
        _loss_curve(workdir)
      except Exception as e:  # noqa: BLE001 - a picture never hides the run's outcome
        logging.warning("no loss curve: %s", e)


def _loss_curve(workdir: str) -> str | None:
  """workdir/loss_curve.png from metrics.jsonl (training and held-out loss against the
  step); None when there is nothing to plot or no matplotlib."""
  records = repair_metrics(os.path.join(workdir, METRICS_FILE), 2**62)
  train = [(r["step"], r["loss"]) for r in records if "loss" in r]
  held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
  if not train:
    return None
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(*zip(*train), label="training loss")
  if held:
    ax.plot(*zip(*held), marker="o", label="held-out loss (EMA)")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  if all(v > 0 for _, v in train + held):
    ax.set_yscale("log")
  ax.legend()
  try:
    return save_png(os.path.join(workdir, LOSS_CURVE_FILE),
                    lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
  finally:
    plt.close(fig)


def _loop(config, state, train_fn, manager, workdir, mesh, data_source, schedule,
          metrics_out, log_record=None) -> TrainState:
  tc = config.training
  n_iters, n_jit = int(tc.n_iters), int(tc.n_jitted_steps)
  log_freq = int(tc.log_freq)
  save_freqs = (int(tc.get("snapshot_freq_for_preemption", 0)),
                int(tc.get("snapshot_freq", 0)))
  local_batch = int(tc.batch_size) // jax.process_count()
  has_position = data_source is not None and hasattr(data_source, "state")

  eval_freq = int(tc.get("eval_freq", 0))
  held_out = monitor.HeldOutLoss(config) if eval_freq > 0 else None
  snapshot_freq = int(tc.get("snapshot_freq", 0))
  snapshots = (monitor.Snapshots(config, workdir)
               if tc.get("snapshot_sampling", False) and snapshot_freq > 0 else None)

  step = int(jax.device_get(state.step))
  last_saved = step if manager.latest_step() is not None else None
  t_log, step_log = time.time(), step
  waited = 0.0  # seconds spent waiting for host batches since the last log line
  compile_seconds = None  # the first device call's time: compiling plus its steps
  compile_logged = False
  while step < n_iters:
    # Stay on the grid of multiples of n_jit, so that a resumed run groups steps as an
    # uninterrupted one does (one compile per distinct n).
    n = min(n_jit - step % n_jit, n_iters - step)
    if data_source is not None:
      t_wait = time.time()
      host_batches = _next_batches(data_source, n, local_batch)
      waited += time.time() - t_wait
      batches = step_lib.put_batches(host_batches, mesh)
      state, metrics = train_fn(state, batches, n)
    else:
      state, metrics = train_fn(state, n)
    step_losses = np.asarray(jax.device_get(metrics["loss"]))
    bad = np.flatnonzero(~np.isfinite(step_losses))
    if bad.size:
      raise NonFiniteLossError(step + int(bad[0]), float(step_losses[bad[0]]),
                               last_saved, checkpoint.checkpoint_dir(workdir))
    before, step = step, step + n
    if compile_seconds is None:
      # The first call compiles: its time is reported alone and left out of the rate.
      compile_seconds = time.time() - t_log
      logging.info("first device call (compile + %d steps): %.1f s", n, compile_seconds)
      t_log, step_log, waited = time.time(), step, 0.0

    if _crossed(before, step, log_freq) or step == n_iters:
      now = time.time()
      rate = (step - step_log) / max(now - t_log, 1e-9) if step > step_log else None
      eta = (n_iters - step) / rate if rate else math.inf
      # The mean over the last device call's steps: less noisy than one step's loss.
      loss = float(step_losses.mean())
      logging.info("step %d/%d  loss %.5f  %s  ETA %s", step, n_iters, loss,
                   f"{rate:.1f} steps/s" if rate else "rate after the first call",
                   _format_eta(eta))
      record = {"step": step, "loss": loss,
                "grad_norm": float(np.asarray(metrics["grad_norm"])[-1]),
                "lr": float(schedule(step - 1)), "time": now}
      # With no step since the first call, its rate (compile included) stands in.
      record["steps_per_sec"] = rate or n / max(compile_seconds, 1e-9)
      if not compile_logged:  # the first record of this run carries it
        record["compile_seconds"], compile_logged = compile_seconds, True
      if data_source is not None:
        # Near 1: the input pipeline, not the device, sets the pace (more workers).
        record["data_wait_fraction"] = waited / max(now - t_log, 1e-9)
      if log_record is not None:
        record = log_record(state, record)
      metrics_out.write(record)
      t_log, step_log, waited = now, step, 0.0

    if any(_crossed(before, step, f) for f in save_freqs) or step == n_iters:
      bad = checkpoint.non_finite_parts(state)
      if bad:
        raise NonFiniteStateError(step, checkpoint.describe_parts(bad), last_saved,
                                  checkpoint.checkpoint_dir(workdir))
      # Returns once the state is on the host; orbax writes and commits it in the
      # background, and manager.close() (run_training's finally) waits for the last.
      checkpoint.save(manager, state, data_source.state() if has_position else None,
                      block=False)
      last_saved = step
      logging.info("saved checkpoint at step %d", step)

    if held_out is not None and _crossed(before, step, eval_freq):
      eval_loss = held_out(state, step)
      if eval_loss is not None:
        logging.info("step %d  held-out loss %.5f (EMA parameters)", step, eval_loss)
        metrics_out.write({"step": step, "eval_loss": eval_loss, "time": time.time()})
    if snapshots is not None and _crossed(before, step, snapshot_freq):
      png = snapshots(state, step)
      logging.info("sample snapshot at step %d: %s", step, png)
      metrics_out.image("samples", png, step)
  return state


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
