"""`main.py --mode reflow_data`: coupled (z, x) pairs from the trained rectified flow's ODE,
written to <workdir>/reflow_pairs-<key>/ (training/reflow.py; the key: common.io.result_dir)."""
from __future__ import annotations

import jax

import data as data_lib
import sde_lib
from common.errors import UserError
from common.io import result_dir
from common.keys import stream_key
from evaluation.samples import sample_settings
from training.restore import restore_model_fn
from training.reflow import PAIRS_SUBDIR, generate_pairs, reflow_settings


def run(config, workdir: str) -> list[str]:
  """Writes the pairs of the latest checkpoint (config.reflow: training/reflow.py's
  reflow_settings) to `<workdir>/reflow_pairs-<key>`, keyed by the checkpoint's contents,
  the data, the process, the dtype, config.reflow and the end time eps (another model or
  setting: another folder); resumes an interrupted run; returns the shard paths."""
  # The pairs are the coupling of any process's probability-flow map, but reflow trains
  # a rectified flow on them (Liu et al. 2023, Sec. 2.2): the model must be a velocity.
  if sde_lib.get_sde(config).native != "velocity":
    raise UserError(f"reflow needs a rectified flow (a velocity model: config.training"
                    f".sde = 'rectified_flow'), got {config.training.sde!r}")
  sde, model_fn, step = restore_model_fn(config, workdir, purpose="ode")
  s = reflow_settings(config)
  base = sample_settings(config, step, s["num_pairs"])
  settings = {k: base[k] for k in ("step", "sde", "continuous", "process", "data",
                                   "dtype")}
  out_dir = result_dir(workdir, PAIRS_SUBDIR, {
      **settings, "reflow": s, "eps": float(config.sampling.get("eps", 1e-3))})
  paths = generate_pairs(
      sde, model_fn, stream_key(s["seed"], "reflow"), out_dir, s["num_pairs"],
      s["shard_size"], data_lib.get_data_shape(config), s["solver"], s["rtol"], s["atol"],
      s["num_steps"], eps=float(config.sampling.get("eps", 1e-3)))
  if jax.process_index() == 0:  # one line however many processes run
    print(f"wrote {len(paths)} shards of reflow pairs from step {step} to {out_dir}")
  return paths

