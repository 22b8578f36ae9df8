"""`main.py --mode eval`: bits/dim over an evaluation set from the latest EMA checkpoint.

With config.eval.enable_bpd. Batches of config.eval.batch_size go through
solvers.get_likelihood_fn (trace config.eval.trace, tolerances config.eval.rtol/atol) and
evaluation.bpd_eval.run_bpd_eval, which appends one line per batch to
`<workdir>/eval/bpd_step<step>/bpd_batches.jsonl`, writes `bpd_summary.json` (mean bpd,
standard error, mean NFE), and on a rerun skips the batches already done.

The evaluation set: for toy data, config.eval.num_eval_points fresh points from a fixed
key (the same on every run); for images, split config.eval.bpd_dataset ('test' or
'train') of the configured data set, the final padded batch trimmed to its real examples.
"""
from __future__ import annotations

import os

import jax
import numpy as np

import data as data_lib
from data import toy
from evaluation.bpd_eval import run_bpd_eval
from evaluation.sample_run import load_model_fn
from evaluation.sharding import put_batch


def eval_batches(config):
  """Yields (batch_index, x in model space) over the evaluation set."""
  scaler = data_lib.get_data_scaler(config)
  bs = int(config.eval.batch_size)
  if data_lib.is_toy(config):
    n = int(config.eval.num_eval_points)
    key = jax.random.PRNGKey(int(config.seed) + 12345)
    for i in range(-(-n // bs)):
      m = min(bs, n - i * bs)
      x = toy.sample(jax.random.fold_in(key, i), config.data.dataset, m,
                     int(config.data.dim))
      yield i, put_batch(scaler(x))
    return
  from data.images import get_eval_batches
  for i, batch in enumerate(get_eval_batches(config, split=config.eval.bpd_dataset)):
    x = batch["image"][np.asarray(batch["mask"], bool)]
    yield i, put_batch(scaler(x))


def num_eval_batches(config) -> int | None:
  """All batches of the evaluation set, or the first config.eval.max_batches (if > 0)."""
  limit = int(config.eval.get("max_batches", 0))
  if data_lib.is_toy(config):
    n = -(-int(config.eval.num_eval_points) // int(config.eval.batch_size))
    return min(n, limit) if limit > 0 else n
  return limit if limit > 0 else None


def evaluate(config, workdir: str) -> dict:
  from solvers.likelihood import get_likelihood_fn
  if not config.eval.enable_bpd:
    raise ValueError("config.eval.enable_bpd is False: nothing to evaluate "
                     "(set --config.eval.enable_bpd=True)")
  sde, model_fn, step = load_model_fn(config, workdir)
  likelihood_fn = get_likelihood_fn(
      sde, data_lib.get_data_inverse_scaler(config), trace=config.eval.trace,
      rtol=float(config.eval.rtol), atol=float(config.eval.atol), eps=1e-5,
      dequantize=bool(config.data.uniform_dequantization),
      scaler=data_lib.get_data_scaler(config))
  out_dir = os.path.join(workdir, "eval", f"bpd_step{step}")
  summary = run_bpd_eval(likelihood_fn, model_fn, eval_batches(config), out_dir,
                         jax.random.PRNGKey(int(config.seed) + 99),
                         num_batches=num_eval_batches(config))
  print(f"bits/dim at step {step}: {summary['mean_bpd']:.4f} +- "
        f"{summary['stderr_bpd']:.4f} over {summary['n']} examples "
        f"(mean NFE {summary['mean_nfe']:.0f}) -> {out_dir}")
  return summary
