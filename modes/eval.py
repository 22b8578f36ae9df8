"""`main.py --mode eval`: score_sde's evaluation of EMA checkpoints (see `evaluate`):
the evaluation loss (config.eval.enable_loss), bits/dim (enable_bpd) and samples
(enable_sampling; FID and IS are computed from them by evaluation/sample_quality.py), for
checkpoints config.eval.begin_ckpt..end_ckpt (or the latest, end_ckpt = 0)."""
from __future__ import annotations

import os

import numpy as np

import data as data_lib
import sde_lib
from common.errors import UserError
from common.io import result_dir, write_json
from common.keys import stream_key
from evaluation.bpd_eval import run_bpd_eval
from evaluation.eval_protocol import (bpd_batches, bpd_protocol, bpd_settings,
                                      check_eval_config, checkpoint_steps, eval_loss,
                                      eval_set_settings, get_bpd_likelihood_fn,
                                      loss_settings, process_settings)
from evaluation.samples import check_finite_samples, draw_samples, sample_settings, save_samples
from training.restore import model_fn_for, restore_model


def evaluate(config, workdir: str) -> dict:
  """score_sde's evaluate: for each checkpoint of `checkpoint_steps`, with
  config.eval.enable_loss the evaluation loss (eval/loss_step<s>-<hash>/loss.json), with
  enable_bpd bits/dim (eval/bpd_step<s>-<hash>/, resumable), with enable_sampling
  config.eval.num_samples samples of the configured sampler
  (eval/samples_step<s>_<method>-<hash>/samples.npz and a picture; <hash> keys the
  settings, result_dir, keys fold_in(stream_key(seed,
  "sample"), i)). Returns the last checkpoint's results: the bits/dim summary's fields,
  "eval_loss", "samples" (a path) and "step".

  The model function is the checkpoint's EMA network for purpose "likelihood"
  (training/restore.py: a discrete-trained network is evaluated through the continuous
  parameterization, as score_sde does, unless config.eval.discrete_as_continuous = False).

  Bits/dim follow score_sde's protocol (evaluation.eval_protocol.bpd_protocol); the
  evaluation set is evaluation.eval_protocol.eval_batches'.
  """
  e = config.eval
  if not (e.enable_bpd or e.enable_loss or e.enable_sampling):
    raise UserError("config.eval.enable_loss, enable_bpd and enable_sampling are all "
                    "False: nothing to evaluate")
  check_eval_config(config)
  sde = sde_lib.get_sde(config)
  likelihood_fn, metric = get_bpd_likelihood_fn(config, sde) if e.enable_bpd else (None, "")
  if e.enable_bpd:
    _, num_repeats = bpd_protocol(config)
  result: dict = {}
  for step in checkpoint_steps(config, workdir):
    model, step = restore_model(config, workdir, step=step)
    result = {"step": step}
    if e.enable_loss:
      loss = eval_loss(config, model, step)
      loss_dir = result_dir(workdir, f"eval/loss_step{step}",
                                   {"step": step, **process_settings(config),
                                    **eval_set_settings(config),
                                    **loss_settings(config)})
      write_json(os.path.join(loss_dir, "loss.json"), loss)
      result["eval_loss"] = loss["eval_loss"]
      print(f"evaluation loss at step {step}: {loss['eval_loss']:.5f} over "
            f"{loss['num_batches']} batches")
    if e.enable_bpd:
      # Keyed by every setting that affects it: other settings, another directory.
      out_dir = result_dir(workdir, f"eval/bpd_step{step}",
                                  bpd_settings(config, step))
      num_records, records = bpd_batches(config, num_repeats)
      summary = run_bpd_eval(likelihood_fn,
                             model_fn_for(config, sde, model, "likelihood"),
                             records, out_dir,
                             stream_key(int(config.seed), "bpd"),
                             num_batches=num_records, metric=metric)
      if metric == "nll":
        dim = int(np.prod(data_lib.get_data_shape(config)))
        summary["mean_nll_per_dim"] = summary["mean_nll"] / dim
        summary["stderr_nll_per_dim"] = summary["stderr_nll"] / dim
        write_json(os.path.join(out_dir, "bpd_summary.json"), summary)
        print(f"negative log-likelihood at step {step}: {summary['mean_nll']:.4f} +- "
              f"{summary['stderr_nll']:.4f} nats ({summary['mean_nll_per_dim']:.4f} "
              f"nats/dim) over {summary['n']} points (mean NFE "
              f"{summary['mean_nfe']:.0f}) -> {out_dir}")
      else:
        print(f"bits/dim at step {step}: {summary['mean_bpd']:.4f} +- "
              f"{summary['stderr_bpd']:.4f} over {summary['n']} examples "
              f"({num_repeats} pass(es)) (mean NFE {summary['mean_nfe']:.0f}) -> {out_dir}")
      result.update(summary)
    if e.enable_sampling:
      method = config.sampling.method
      samples, nfe = draw_samples(config, sde, model_fn_for(config, sde, model, method),
                                  stream_key(int(config.seed), "sample"),
                                  int(e.num_samples))
      check_finite_samples(samples, f"the checkpoint at step {step} ({method})")
      stem = os.path.join(result_dir(
          workdir, f"eval/samples_step{step}_{method}",
          sample_settings(config, step, int(e.num_samples))), "samples")
      save_samples(config, samples, nfe, stem)
      result["samples"] = stem + ".npz"
      print(f"{len(samples)} samples ({method}, NFE {nfe:.0f}) -> {stem}.npz")
  return result


run = evaluate
