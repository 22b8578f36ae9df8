"""`main.py --mode rf_eval`: straightness and the NFE-versus-quality table of a rectified
flow on toy data (evaluation/rf_eval.py); writes <workdir>/rf_eval/."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

import data as data_lib
from common.errors import UserError
from evaluation import plots
from evaluation.metrics import sliced_wasserstein
from evaluation.rf_eval import RF_EVAL_SUBDIR, _eval_settings, nfe_table, plot_nfe_vs_sw
from evaluation.straightness import straightness
from common.io import write_json
from common.keys import stream_key
from training.restore import restore_model_fn


def evaluate_rectified_flow(config, workdir: str) -> dict[str, Any]:
  """Straightness and the NFE-versus-SW table of the flow in `workdir`; writes
  rf_eval/rf_eval.json and rf_eval/nfe_vs_sw.png and returns the JSON's content.

  Raises sde_lib.UserError for a process that is not a rectified flow or for non-toy data.
  """
  name = config.data.dataset
  if not data_lib.is_toy(config):
    raise UserError(f"rf_eval compares samples with exact draws of the data, which only "
                    f"the toy datasets ({', '.join(data_lib.toy.TOY_DATASETS)}) have; "
                    f"got dataset {name!r}. For images use --mode eval (FID/IS) with "
                    f"config.sampling.ode_steps set")
  if str(config.training.sde).lower() != "rectified_flow":
    raise UserError(f"rf_eval needs a rectified flow (config.training.sde = "
                    f"'rectified_flow'), got {config.training.sde!r}")
  s = _eval_settings(config)
  sde, model_fn, step = restore_model_fn(config, workdir, purpose="flow")
  event_shape = data_lib.get_data_shape(config)
  dim = int(config.data.dim)
  base = stream_key(int(config.seed), "rf_eval")
  k_straight, k_table, k_data, k_floor, k_sw = jax.random.split(base, 5)

  straight = float(straightness(k_straight, sde, model_fn,
                                (s["batch_size"],) + event_shape, s["straightness_steps"]))
  data = np.asarray(data_lib.toy.sample(k_data, name, s["num_samples"], dim))
  rows, samples = nfe_table(
      k_table, sde, model_fn, data, event_shape, nfe=s["nfe"],
      adaptive_solver=s["adaptive_solver"], rtol=s["rtol"], atol=s["atol"], eps=s["eps"],
      batch_size=s["batch_size"], sw_projections=s["sw_projections"],
      inverse_scaler=data_lib.get_data_inverse_scaler(config))
  # The table's projection key (split inside nfe_table) scores the floor too.
  floor_data = np.asarray(data_lib.toy.sample(k_floor, name, s["num_samples"], dim))
  _, sw_key = jax.random.split(k_table)
  floor = float(sliced_wasserstein(sw_key, floor_data, data, s["sw_projections"]))

  out_dir = os.path.join(workdir, RF_EVAL_SUBDIR)
  os.makedirs(out_dir, exist_ok=True)
  result = {"step": int(step), "dataset": name, "straightness": straight,
            "straightness_steps": s["straightness_steps"],
            "num_samples": s["num_samples"], "sw_projections": s["sw_projections"],
            "sw_noise_floor": floor, "rows": rows,
            "rtol": s["rtol"], "atol": s["atol"]}
  json_path = write_json(os.path.join(out_dir, "rf_eval.json"), result)
  plot_nfe_vs_sw(rows, floor, os.path.join(out_dir, "nfe_vs_sw.png"),
                 title=f"{name}, step {step}, S = {straight:.3g}")
  if len(event_shape) == 1 and event_shape[0] == 2:
    keys = [k for k in samples if k == f"euler {s['nfe'][0]}"] + list(samples)[-2:]
    shown = {"data": data, **{k: samples[k] for k in dict.fromkeys(keys)}}
    plots.scatter(shown, os.path.join(out_dir, "samples.png"))

  print(f"rectified flow at step {step}: straightness {straight:.4g} "
        f"({s['straightness_steps']} Euler steps)")
  print(f"{'solver':>10} {'NFE':>7} {'SW2':>9}")
  for r in rows:
    label = f"euler {r['steps']}" if r["method"] == "euler" else r["method"]
    print(f"{label:>10} {r['nfe']:7.1f} {r['sw']:9.4f}")
  print(f"{'data':>10} {'':>7} {floor:9.4f}  (noise floor)")
  print(f"wrote {json_path}")
  return result


run = evaluate_rectified_flow
