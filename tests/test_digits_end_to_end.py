"""A small-image run end to end on the CPU: a tiny NCSN++ (DDPM++ blocks, VP SDE) on the bundled 8x8 digits,
trained for a few steps through the CLI's train mode, checkpointed, sampled with the PC
sampler into an image grid, and evaluated in bits/dim on a few test images."""
import json
import os

import numpy as np

from configs.vp.digits_ddpmpp_small import get_config


def test_digits_train_checkpoint_sample_bpd(tmp_path):
  from modes.eval import evaluate
  from modes.sample import run as sample
  from training.checkpoint import all_steps
  from modes.train import run as train_from_config

  config = get_config()
  config.training.n_iters = 20
  config.training.batch_size = 16
  config.training.snapshot_freq_for_preemption = 10
  config.model.num_scales = 20  # PC steps
  config.eval.num_samples = 16
  config.eval.batch_size = 8
  config.eval.max_batches = 1
  config.eval.bpd_num_repeats = 1  # one pass (score_sde's protocol: 5 over the test split)
  # Smaller still than the config: compiling even a tiny NCSN++ costs minutes on 2 cores.
  config.model.nf = 8
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  # An untrained model's flow is rough: loose tolerances keep the solve short.
  config.eval.rtol = 1e-2
  config.eval.atol = 1e-2
  workdir = str(tmp_path)

  train_from_config(config, workdir)
  assert all_steps(workdir)[-1] == 20
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert losses and all(np.isfinite(losses))

  path = sample(config, workdir)
  with np.load(path) as d:
    x = d["samples"]
  assert x.shape == (16, 8, 8, 1) and np.all(np.isfinite(x))
  assert os.path.getsize(path.replace(".npz", ".png")) > 500

  summary = evaluate(config, workdir)
  assert summary["n"] == 8 and summary["num_batches"] == 1
  assert np.isfinite(summary["mean_bpd"]) and summary["mean_nfe"] > 0
