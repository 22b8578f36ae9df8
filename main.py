"""Command-line entry point.

    python main.py --config configs/default_toy.py --workdir runs/toy --mode train

Modes:
  train        train (resumes from the latest checkpoint in --workdir)
  sample       draw config.eval.num_samples with the configured sampler; .npz + picture
  eval         bits/dim over the evaluation set (config.eval.enable_bpd), resumable
  demo         train, sample with the PC and the ODE sampler, likelihood, plots (toy data)
  reflow_data  solve the trained rectified flow's ODE from noise: coupled (z, x) pairs
  rf_eval      straightness and the NFE-vs-quality table of a rectified flow (toy data)

Config fields are overridden on the command line: --config.training.n_iters=100.
"""
from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training/evaluation config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and metrics.")
# mode -> (module, function): imported lazily so `--help` stays fast.
MODES = {
    "train": ("training.data_source", "train_from_config"),
    "sample": ("evaluation.sample_run", "sample"),
    "eval": ("evaluation.eval_run", "evaluate"),
    "demo": ("evaluation.demo", "run_demo"),
    "reflow_data": ("training.reflow", "generate_reflow_data"),
    "rf_eval": ("evaluation.rf_eval", "evaluate_rectified_flow"),
}
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_string(
    "compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "score_flow_jax"),
    "JAX persistent compilation cache ('' to disable): a second run skips compiling.")
flags.DEFINE_bool("multihost", False,
                  "Call jax.distributed.initialize() (one process per host).")
flags.mark_flags_as_required(["config", "workdir"])


def _setup_jax() -> None:
  import jax
  if FLAGS.multihost:
    jax.distributed.initialize()
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _setup_jax()
  module, fn = MODES[FLAGS.mode]
  run = getattr(importlib.import_module(module), fn)
  try:
    run(FLAGS.config, FLAGS.workdir)
  except (ValueError, OSError, FloatingPointError) as e:
    # User errors: one clear line, no traceback.
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except AttributeError as e:
    if "ConfigDict" not in str(e) and "config" not in str(e).lower():
      raise
    print(f"error: the config is missing a required field: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
