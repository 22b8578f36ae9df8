"""`main.py --mode demo` (what `make demo` runs): the whole pipeline on toy data.

1. train the configured toy model (resumes if the workdir already has checkpoints);
2. sample it with the predictor-corrector sampler and the probability-flow ODE sampler;
3. score the samples against fresh data (sliced Wasserstein distance, and the same
   distance between two fresh data sets as the noise floor);
4. compute the model's negative log-likelihood (nats) on fresh data with the
   probability-flow ODE, next to the true density's, where the toy density is known;
5. write plots and `demo_summary.json` under the workdir.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import data as data_lib
from data import toy
from evaluation import metrics, plots
from evaluation.sample_run import draw_samples, load_model_fn


def run_demo(config, workdir: str) -> dict:
  from solvers.likelihood import get_log_likelihood_fn
  from training.loop import train

  if not data_lib.is_toy(config):
    raise ValueError(f"the demo runs on toy data; config.data.dataset is "
                     f"{config.data.dataset!r}, choices: {', '.join(toy.TOY_DATASETS)}")
  t0 = time.time()
  train(config, workdir)
  t_train = time.time() - t0
  sde, model_fn, step = load_model_fn(config, workdir)
  name, dim = config.data.dataset, int(config.data.dim)
  n = int(config.eval.num_samples)
  key = jax.random.PRNGKey(config.seed + 7)
  k_data, k_ref, k_sw, k_pc, k_ode, k_ll, k_test = jax.random.split(key, 7)
  fresh = np.asarray(toy.sample(k_data, name, n, dim))
  summary = {"dataset": name, "sde": config.training.sde, "train_steps": int(step),
             "train_seconds": round(t_train, 1),
             "sw_data_vs_data": float(metrics.sliced_wasserstein(
                 k_sw, fresh, toy.sample(k_ref, name, n, dim)))}
  samples = {"data": fresh}
  methods = ["ode"] if sde.native == "velocity" else ["pc", "ode"]
  for method, k in zip(methods, [k_pc, k_ode] if len(methods) == 2 else [k_ode]):
    t1 = time.time()
    x, nfe = draw_samples(config, sde, model_fn, k, n, method=method)
    samples[f"{method} (NFE {nfe:.0f})"] = x
    summary[f"{method}_nfe"] = nfe
    summary[f"{method}_seconds"] = round(time.time() - t1, 1)
    summary[f"sw_{method}_vs_data"] = float(metrics.sliced_wasserstein(k_sw, x, fresh))

  # Likelihood of fresh test points under the model (probability-flow ODE, exact trace).
  n_ll = min(int(config.eval.num_eval_points), 1000)
  x_test = toy.sample(k_test, name, n_ll, dim)
  loglik = get_log_likelihood_fn(sde, trace="exact", rtol=config.eval.rtol,
                                 atol=config.eval.atol, eps=1e-5)
  logp, _, ll_nfe = loglik(k_ll, model_fn, x_test)
  summary["model_nll_nats"] = float(-jnp.mean(logp))
  summary["model_nll_stderr"] = float(jnp.std(logp) / np.sqrt(n_ll))
  summary["likelihood_nfe"] = float(ll_nfe)
  if toy.has_density(name):
    summary["true_nll_nats"] = float(-jnp.mean(toy.log_density(name, x_test)))

  out = os.path.join(workdir, "demo")
  lim = float(np.percentile(np.abs(fresh), 99.5)) * 1.15
  summary["plot_samples"] = plots.scatter(samples, os.path.join(out, "samples.png"), lim=lim)
  with open(os.path.join(out, "demo_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _report(summary)
  return summary


def _report(s: dict) -> None:
  print(f"\n== demo: {s['sde']} on {s['dataset']}, {s['train_steps']} steps "
        f"({s['train_seconds']} s) ==")
  print(f"sliced Wasserstein to fresh data: data {s['sw_data_vs_data']:.4f} (noise floor)"
        + "".join(f", {m} {s[f'sw_{m}_vs_data']:.4f} (NFE {s[f'{m}_nfe']:.0f})"
                  for m in ("pc", "ode") if f"sw_{m}_vs_data" in s))
  line = f"NLL on fresh data: model {s['model_nll_nats']:.3f} +- {s['model_nll_stderr']:.3f} nats"
  if "true_nll_nats" in s:
    line += f", true density {s['true_nll_nats']:.3f} nats"
  print(line)
  print(f"plots: {s['plot_samples']}")
