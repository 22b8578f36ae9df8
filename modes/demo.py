"""`main.py --mode demo` (what `make demo` runs): the whole pipeline on toy data."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import sde_lib
from data import toy
from evaluation import metrics, plots
from common.choices import check_choice
from solvers.fast import get_fast_sampler
from solvers.from_config import get_sampling_fn
from solvers.likelihood import get_log_likelihood_fn
from common.io import result_dir, write_json
from common.keys import stream_key
from training.restore import model_fn_for, restore_model
from training import checkpoint
from evaluation.samples import sample_batches
from modes import train as train_mode

#: The fast sampler when the config has no sampling.fast block: DPM-Solver++(2M), 10
#: steps on the log-SNR grid.
DEFAULT_FAST = {"method": "dpm_solver++", "steps": 10, "order": 2, "schedule": "logSNR"}
#: Panel and summary labels of the samplers.
SAMPLERS = ("pc", "ode", "fast")


def fast_label(config) -> str:
  """'dpm_solver++ 10 steps' for config.sampling.fast (or DEFAULT_FAST)."""
  f = config.sampling.get("fast", None) or DEFAULT_FAST
  return f"{f['method']} {int(f['steps'])} steps"


def _sampler(config, sde, shape: tuple[int, ...], method: str):
  """`sampler(key, model_fn, x_T=...) -> (x, nfe)` for 'pc', 'ode' or 'fast'."""
  if method == "fast" and config.sampling.get("fast", None) is None:
    f = DEFAULT_FAST
    return get_fast_sampler(sde, shape, f["method"], f["steps"], order=f["order"],
                            schedule=f["schedule"], eps=float(config.sampling.eps))
  return get_sampling_fn(config, sde, shape, method=method)


def sample_from_prior(config, sde, model_fn, key: jax.Array, x_T: np.ndarray,
                      method: str) -> tuple[np.ndarray, float]:
  """Samples in data space (numpy) from the given prior draws, and the mean NFE per batch.

  x_T: (n_batches * batch, ...) with batch = min(config.eval.batch_size, len(x_T)); batch i
  starts from x_T[i * batch:(i + 1) * batch] with key fold_in(key, i) (used by the
  stochastic samplers only), split over the devices (common.mesh.shard_outputs); one compile.
  """
  batch = min(int(config.eval.batch_size), len(x_T))
  if len(x_T) % batch:
    raise ValueError(f"{len(x_T)} prior draws are not whole batches of {batch}")
  return sample_batches(config, _sampler(config, sde, (batch,) + x_T.shape[1:], method),
                        model_fn, key, len(x_T), batch, x_T=x_T, desc=f"demo ({method})")


def run_demo(config, workdir: str) -> dict:
  """The whole pipeline on toy data; returns demo_summary.json's content:

  1. train the configured toy model (resumes if the workdir already has checkpoints);
  2. sample it from the same prior draws x_T with three samplers: predictor-corrector,
     the adaptive probability-flow ODE, and a few-step fast sampler (config.sampling.fast,
     by default DPM-Solver++(2M), 10 steps on the logSNR grid: solvers/fast/);
  3. score the samples against fresh data (sliced Wasserstein distance, and the same
     distance between two fresh data sets as the noise floor), each with its NFE;
  4. compute the model's negative log-likelihood (nats) on fresh data with the
     probability-flow ODE, next to the true density's, where the toy density is known;
  5. write plots and `demo_summary.json` to `<workdir>/demo-<key>` (common.io.result_dir:
     the key covers the checkpoint's contents, the seed and the whole config, so a rerun
     with another seed or setting writes another folder).

  Every draw comes from stream_key(config.seed, "demo") (common/keys.py), split 9 ways
  (fresh data, a second data set, SW projections, the shared prior draws, PC, ODE, fast,
  likelihood, test points).
  """
  check_choice(config.data.dataset, toy.TOY_DATASETS,
               "toy dataset for the demo (config.data.dataset)")
  saved_before = checkpoint.all_steps(workdir)
  t0 = time.time()
  train_mode.run(config, workdir)  # the train mode itself: resumes, or trains anew
  t_train = time.time() - t0
  sde = sde_lib.get_sde(config)
  model, step = restore_model(config, workdir)
  name, dim = config.data.dataset, int(config.data.dim)
  n = int(config.eval.num_samples)
  key = stream_key(int(config.seed), "demo")
  (k_data, k_ref, k_sw, k_prior, k_pc, k_ode, k_fast, k_ll,
   k_test) = jax.random.split(key, 9)
  fresh = np.asarray(toy.sample(k_data, name, n, dim))
  summary = {"dataset": name, "sde": config.training.sde, "train_steps": int(step),
             # This run's steps, which train_seconds timed (the rest were resumed).
             "steps_this_run": int(step) - (saved_before[-1] if saved_before else 0),
             "seed": int(config.seed),
             "config": json.loads(json.dumps(config.to_dict(), default=str)),
             "train_seconds": round(t_train, 1), "fast_sampler": fast_label(config),
             "sw_data_vs_data": float(metrics.sliced_wasserstein(
                 k_sw, fresh, toy.sample(k_ref, name, n, dim)))}
  samples = {f"data\nsliced W. {summary['sw_data_vs_data']:.3f} (noise floor)": fresh}
  # One set of prior draws for all three samplers, so their differences are the
  # samplers' alone (whole batches; the samples are cut to n).
  batch = min(int(config.eval.batch_size), n)
  x_T = np.asarray(sde.prior_sampling(k_prior, (-(-n // batch) * batch, dim)))
  labels = {"pc": "predictor-corrector", "ode": "probability-flow ODE (adaptive)",
            "fast": fast_label(config)}
  # Every process has a PC sampler: rectified flow's SDE has the same marginals.
  for method, k in (("pc", k_pc), ("ode", k_ode), ("fast", k_fast)):
    t1 = time.time()
    model_fn = model_fn_for(config, sde, model, purpose=method)
    x, nfe = sample_from_prior(config, sde, model_fn, k, x_T, method)
    x = x[:n]
    sw = float(metrics.sliced_wasserstein(k_sw, x, fresh))
    samples[f"{labels[method]}\nNFE {nfe:.0f}, sliced W. {sw:.3f}"] = x
    summary[f"{method}_nfe"] = nfe
    summary[f"{method}_seconds"] = round(time.time() - t1, 1)
    summary[f"sw_{method}_vs_data"] = sw

  # Likelihood of fresh test points under the model (probability-flow ODE, exact trace).
  n_ll = min(int(config.eval.num_eval_points), 1000)
  x_test = toy.sample(k_test, name, n_ll, dim)
  loglik = get_log_likelihood_fn(sde, trace="exact", rtol=config.eval.rtol,
                                 atol=config.eval.atol, eps=1e-5)
  logp, _, ll_nfe = loglik(k_ll, model_fn_for(config, sde, model, "likelihood"),
                           x_test)
  summary["model_nll_nats"] = float(-jnp.mean(logp))
  summary["model_nll_stderr"] = float(jnp.std(logp) / np.sqrt(n_ll))
  summary["likelihood_nfe"] = float(ll_nfe)
  if toy.has_density(name):
    summary["true_nll_nats"] = float(-jnp.mean(toy.log_density(name, x_test)))

  out = result_dir(workdir, "demo", {"step": int(step), "seed": int(config.seed),
                                     "data": summary["config"]["data"],
                                     "config": summary["config"]})
  lim = float(np.percentile(np.abs(fresh), 99.5)) * 1.15
  summary["plot_samples"] = plots.scatter(samples, os.path.join(out, "samples.png"), lim=lim)
  write_json(os.path.join(out, "demo_summary.json"), summary)
  _report(summary)
  return summary


def _report(s: dict) -> None:
  print(f"\n== demo: {s['sde']} on {s['dataset']}, {s['train_steps']} steps "
        f"({s['steps_this_run']} trained in this run, {s['train_seconds']} s; seed "
        f"{s['seed']}) ==")
  names = {"pc": "PC", "ode": "ODE", "fast": s.get("fast_sampler", "fast")}
  print(f"sliced Wasserstein to fresh data (same prior draws for every sampler): "
        f"data {s['sw_data_vs_data']:.4f} (noise floor)"
        + "".join(f", {names[m]} {s[f'sw_{m}_vs_data']:.4f} (NFE {s[f'{m}_nfe']:.0f})"
                  for m in SAMPLERS if f"sw_{m}_vs_data" in s))
  line = f"NLL on fresh data: model {s['model_nll_nats']:.3f} +- {s['model_nll_stderr']:.3f} nats"
  if "true_nll_nats" in s:
    line += f", true density {s['true_nll_nats']:.3f} nats"
  print(line)
  print(f"plots: {s['plot_samples']}")


run = run_demo
