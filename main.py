"""Command-line entry point.

    python main.py --config configs/default_toy.py --workdir runs/toy --mode train

Modes:
  train        train (resumes from the latest checkpoint in --workdir)
  sample       draw config.eval.num_samples with the configured sampler; .npz + picture
               (config.sampling.task: inpaint, colorize or class for controllable
               generation, modes/controlled_sample.py)
  eval         bits/dim over the evaluation set (config.eval.enable_bpd), resumable
  demo         train; PC, ODE and 10-step DPM-Solver++ samples; likelihood; plots (toy data)
  reflow_data  solve the trained rectified flow's ODE from noise: coupled (z, x) pairs
  rf_eval      straightness and the NFE-vs-quality table of a rectified flow (toy data)
  stats        FID reference statistics of a data set split (Inception), resumable
  sample_quality  FID/KID/IS of config.eval.num_samples samples, resumable (README)
  import       a released score_sde / score_sde_pytorch / RectifiedFlow checkpoint
               (config.eval.import_path) written as this workdir's checkpoint
  train_classifier  a noise-conditional classifier for classifier guidance
               (config.classifier) in --workdir/classifier, resumable
  convert      the config's data set as ArrayRecord shards in --workdir, resumable
               (train on them with --config.data.source=grain)
  check        validate the config and exit (no network built, nothing written)

Config fields are overridden on the command line: --config.training.n_iters=100.
A user error (bad config value or flag, unknown name, missing file: common.errors.UserError)
prints one line on stderr and exits with code 2; any other exception keeps its traceback.
"""
from __future__ import annotations

import functools
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from common import lock
from common.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training/evaluation config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and metrics.")


# One function per mode, each importing its driver when called, so `--help` stays fast.
# Each runs inside lock.scope(): the result folders a mode locks are released when it
# returns, also when a test or notebook calls MODES[...] in-process.
def _scoped(run):
  @functools.wraps(run)
  def scoped(config, workdir):
    with lock.scope():
      return run(config, workdir)
  return scoped


@_scoped
def _train(config, workdir):
  from modes import train
  return train.run(config, workdir)


@_scoped
def _sample(config, workdir):
  from modes import sample
  return sample.run(config, workdir)


@_scoped
def _eval(config, workdir):
  from modes import eval as eval_mode
  return eval_mode.run(config, workdir)


@_scoped
def _demo(config, workdir):
  from modes import demo
  return demo.run(config, workdir)


@_scoped
def _reflow_data(config, workdir):
  from modes import reflow_data
  return reflow_data.run(config, workdir)


@_scoped
def _rf_eval(config, workdir):
  from modes import rf_eval
  return rf_eval.run(config, workdir)


@_scoped
def _stats(config, workdir):
  from modes import stats
  return stats.run(config, workdir)


@_scoped
def _sample_quality(config, workdir):
  from modes import sample_quality
  return sample_quality.run(config, workdir)


@_scoped
def _import(config, workdir):
  from modes import import_checkpoint
  return import_checkpoint.run(config, workdir)


@_scoped
def _train_classifier(config, workdir):
  from modes import train_classifier
  return train_classifier.run(config, workdir)


@_scoped
def _convert(config, workdir):
  from modes import convert
  return convert.run(config, workdir)


@_scoped
def _check(config, workdir):
  from modes import check
  return check.run(config, workdir)


MODES = {"train": _train, "sample": _sample, "eval": _eval, "demo": _demo,
         "reflow_data": _reflow_data, "rf_eval": _rf_eval, "stats": _stats,
         "sample_quality": _sample_quality, "import": _import,
         "train_classifier": _train_classifier, "convert": _convert, "check": _check}
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_bool("accept_unverified_checkpoint", False,
                  "Restore a checkpoint without its checksum file (sha256.json) when no "
                  "verified one exists (never while one does).")
flags.DEFINE_bool("new_model", False,
                  "train, demo: start a new model in a --workdir that holds one; the old "
                  "checkpoints, record, metrics and results move to "
                  "<workdir>/previous-<UTC time>/ (nothing is deleted).")
flags.DEFINE_string(
    "compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "score_flow_jax"),
    "JAX persistent compilation cache ('' to disable): a second run skips compiling.")
flags.DEFINE_bool("multihost", False,
                  "Start JAX's multi-process runtime (jax.distributed): the coordinator, "
                  "process count and process id from the flags below, else from "
                  "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, else from "
                  "the cluster (SLURM, Open MPI, TPU pods); README 'Scaling out'.")
flags.DEFINE_string("coordinator_address", None,
                    "With --multihost: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "With --multihost: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --multihost: this process's id, 0..n-1.")
flags.DEFINE_integer("initialization_timeout", 300,
                     "With --multihost: seconds to wait for every process to connect.")
flags.DEFINE_integer("heartbeat_timeout", 60,
                     "With --multihost: seconds without a heartbeat after which a process "
                     "is declared dead and every other process stops with an error.")
flags.DEFINE_enum("processes", "per_device", ["per_device", "per_host"],
                  "With --multihost: one process per accelerator (SLURM's default, "
                  "--ntasks-per-node = GPUs per node; TPU pods) or one per host using all "
                  "of its local GPUs (--ntasks-per-node=1).")
flags.DEFINE_string("cpu_devices", None,
                    "Devices of JAX's CPU backend: 'auto' is one per CPU core, so that each "
                    "batch is split over the cores (faster on CPU-only machines; batches "
                    "must divide by the count); a number sets the count. Unset: JAX's "
                    "default (one, or XLA_FLAGS' --xla_force_host_platform_device_count). "
                    "No effect on GPU or TPU devices.")
flags.mark_flags_as_required(["config", "workdir"])


def _setup_jax() -> None:
  import logging
  # "Unable to initialize backend 'tpu'" and the like: JAX's INFO notes about platforms
  # this machine does not have are noise in every run's output.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  import jax
  if FLAGS.cpu_devices is not None:
    from common.cpu_devices import set_cpu_devices
    try:
      set_cpu_devices(FLAGS.cpu_devices)
    except UserError as e:
      _fail(e)
  if FLAGS.multihost:
    from common.distributed import initialize_distributed
    try:
      initialize_distributed(
          FLAGS.processes, coordinator_address=FLAGS.coordinator_address,
          num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
          initialization_timeout=FLAGS.initialization_timeout,
          heartbeat_timeout=FLAGS.heartbeat_timeout)
    except UserError as e:
      _fail(e)
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


def _fail(message: str) -> None:
  """A user error: one line on stderr, exit code 2; other errors keep their traceback."""
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  _exit(2)


def _exit(code: int) -> None:
  """Ends the process with `code`. In a --multihost run, at once (os._exit after
  flushing): a normal exit would first wait in jax.distributed's shutdown barrier for up
  to its timeout (300 s) while still sending heartbeats, and the other processes, blocked
  in a collective this one will never join, would wait that long too. Stopping the
  heartbeats makes the coordination service stop every other process with an error
  within --heartbeat_timeout. A checkpoint being written is lost, never half-kept: orbax
  commits a step only when it is complete."""
  if FLAGS.is_parsed() and FLAGS.multihost:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def _override_error(e: Exception, argv: list[str]) -> str:
  """One line for a bad --config.<field> override, keeping ml_collections' suggestion
  ('Did you mean "n_iters" instead of "n_iter"?')."""
  text = e.args[0] if e.args else str(e)
  text = str(text).replace("\\n", " ").strip("'\"")
  text = " ".join(text.replace("\\'", "'").split())
  overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  # The unknown name is the quoted word the message starts with ('snapshot_fre'), not
  # any field name that merely contains it.
  quoted = re.findall(r"""['"]([^'"]+)['"]""", text)
  unknown = quoted[0] if quoted else None
  bad = [o for o in overrides if o.rsplit(".", 1)[-1] == unknown]
  where = f"{bad[0]}: " if bad else ""
  return f"{where}no such config field: {text}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with user errors as one line and exit code 2, and --help
  exiting 0 (absl's own exits 1)."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    app.usage(shorthelp="--helpfull" not in argv[1:], writeto_stdout=True, exitcode=0)
  try:
    args = FLAGS(argv)
    if FLAGS["config"].present:
      # config_flags defers a config file that failed to load until first use.
      FLAGS.config.keys()
    return args
  except OSError as e:
    _fail(f"--config: {e}")
  except flags.Error as e:
    _fail(e)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field the config lacks.
    _fail(_override_error(e, argv))
  return []  # unreachable: _fail exits


def _check_dataset(config) -> None:
  """A toy config (config.data.dim: 2-D data, no images) with a name that is not a toy
  distribution: list the toy names, not the image data sets."""
  if "data" not in config or "dim" not in config.data:
    return
  from common.choices import check_choice
  from data import toy
  check_choice(config.data.dataset, toy.TOY_DATASETS,
               "toy dataset (config.data.dataset; or use an image config)")


# Modes that do not use the workdir's model: no record to check.
_NO_MODEL_MODES = ("stats", "convert", "train_classifier", "check")


def _recorded(config, workdir: str, mode: str):
  """The config checked against the workdir's record of its model, with the recorded
  values a mode takes from it (training/run_record.py)."""
  from training import checkpoint, run_record
  checkpoint.accept_unverified(FLAGS.accept_unverified_checkpoint)
  run_record.set_invocation(FLAGS["config"].config_filename,
                            config_flags.get_override_values(FLAGS["config"]),
                            new_model=FLAGS.new_model and mode in ("train", "demo"))
  if mode in _NO_MODEL_MODES or (FLAGS.new_model and mode in ("train", "demo")):
    return config
  config = run_record.resolve(config, workdir, "train" if mode == "demo" else mode)
  if mode not in ("train", "demo", "import"):
    run_record.check_data(config, workdir)
  return config


def main(argv) -> None:
  if len(argv) > 1:
    # One line, not absl's usage text (the whole module docstring).
    _fail(f"unexpected argument(s) {' '.join(argv[1:])!r}: every setting is a flag, "
          "e.g. --mode=sample or --config.training.n_iters=100 (--help lists them)")
  _setup_jax()
  try:
    _check_dataset(FLAGS.config)
    from modes.check import check_numbers, check_override_types
    check_override_types(FLAGS["config"].parser.parse(FLAGS["config"].config_filename),
                         config_flags.get_override_values(FLAGS["config"]))
    check_numbers(FLAGS.config)
    config = _recorded(FLAGS.config, FLAGS.workdir, FLAGS.mode)
    if FLAGS.mode not in _NO_MODEL_MODES:
      # The network's fields, before any mode builds or compiles it.
      from models.config_check import check_model_config
      check_model_config(config)
    from training import run_record
    had_model = run_record.has_model(FLAGS.workdir)
    MODES[FLAGS.mode](config, FLAGS.workdir)
    if FLAGS.mode == "import":
      run_record.record_import(config, FLAGS.workdir, had_model)
  except UserError as e:
    # Exactly the project's user errors are one line; anything else keeps its traceback.
    _fail(e)
  except BaseException as e:
    if not FLAGS.multihost or (isinstance(e, SystemExit) and not e.code):
      raise
    # The traceback, then the immediate exit of a multi-process run (see _exit).
    import traceback
    traceback.print_exc()
    _exit(e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
