"""`main.py --mode rf_eval`: straightness and the NFE-versus-quality table of a rectified
flow on toy data (evaluation/rf_eval.py); writes <workdir>/rf_eval-<key>/."""
from __future__ import annotations

import os
from typing import Any

import jax

import data as data_lib
import sde_lib
from common.errors import UserError
from evaluation import plots
from evaluation.rf_eval import (RF_EVAL_SUBDIR, eval_settings, flow_report, plot_nfe_vs_sw,
                                print_table)
from common.io import result_dir, write_json
from evaluation.samples import sample_settings
from common.keys import stream_key
from training.restore import restore_model_fn


def run(config, workdir: str) -> dict[str, Any]:
  """Straightness and the NFE-versus-SW table of the flow in `workdir` (evaluation/
  rf_eval.py); writes rf_eval.json, nfe_vs_sw.png and, for 2-D data, samples.png to
  `<workdir>/rf_eval-<key>` (common.io.result_dir: the key covers the checkpoint's
  contents, the data, the process, the dtype, the seed and `eval_settings`, so another
  model or setting gives another folder), and returns the JSON's content.

  Raises UserError for a process that is not a rectified flow or for non-toy data.
  """
  name = config.data.dataset
  if not data_lib.is_toy(config):
    raise UserError(f"rf_eval compares samples with exact draws of the data, which only "
                    f"the toy datasets ({', '.join(data_lib.toy.TOY_DATASETS)}) have; "
                    f"got dataset {name!r}. For images use --mode eval (FID/IS) with "
                    f"config.sampling.ode_steps set")
  if sde_lib.get_sde(config).native != "velocity":
    raise UserError(f"rf_eval needs a rectified flow (a velocity model: config.training"
                    f".sde = 'rectified_flow'), got {config.training.sde!r}")
  s = eval_settings(config)
  sde, model_fn, step = restore_model_fn(config, workdir, purpose="flow")
  event_shape = data_lib.get_data_shape(config)
  dim = int(config.data.dim)
  report = flow_report(stream_key(int(config.seed), "rf_eval"), sde, model_fn,
                       lambda key, n: data_lib.toy.sample(key, name, n, dim), event_shape,
                       s, data_lib.get_data_inverse_scaler(config))
  base = sample_settings(config, step, s["num_samples"])
  out_dir = result_dir(workdir, RF_EVAL_SUBDIR, {
      **{k: base[k] for k in ("step", "seed", "sde", "continuous", "process", "data",
                              "dtype")}, "rf_eval": s})
  result = {"step": int(step), "dataset": name, "straightness": report["straightness"],
            "straightness_steps": s["straightness_steps"],
            "num_samples": s["num_samples"], "sw_projections": s["sw_projections"],
            "sw_noise_floor": report["sw_noise_floor"], "rows": report["rows"],
            "rtol": s["rtol"], "atol": s["atol"]}
  json_path = write_json(os.path.join(out_dir, "rf_eval.json"), result)
  plot_nfe_vs_sw(report["rows"], report["sw_noise_floor"],
                 os.path.join(out_dir, "nfe_vs_sw.png"),
                 title=f"{name}, step {step}, S = {report['straightness']:.3g}")
  if len(event_shape) == 1 and event_shape[0] == 2:
    samples = report["samples"]
    keys = [k for k in samples if k == f"euler {s['nfe'][0]}"] + list(samples)[-2:]
    shown = {"data": report["data"], **{k: samples[k] for k in dict.fromkeys(keys)}}
    plots.scatter(shown, os.path.join(out_dir, "samples.png"))
  if jax.process_index() == 0:  # one copy of the report however many processes run
    print_table(step, report, s["straightness_steps"])
    print(f"wrote {json_path}")
  return result
