"""`main.py --mode sample`: draw samples from the latest EMA checkpoint."""
from __future__ import annotations

import os
import time

from absl import logging

from evaluation.samples import (check_finite_samples, draw_samples, positive_int,
                                sample_settings, save_samples)
from modes import controlled_sample
from common.io import result_dir
from common.keys import stream_key
from training.restore import restore_model_fn


def run(config, workdir: str) -> str:
  """Draws config.eval.num_samples samples (or runs config.sampling.task: inpaint,
  colorize, class) and returns the path of samples.npz.

  Writes `<workdir>/samples/<method>_step<step>-<hash>/samples.npz` (array `samples`, data
  space, plus `nfe`) and `samples.png` beside it: a scatter plot for 2-D data, an image grid
  for images. `<hash>` keys every setting that affects the samples (`sample_settings`:
  checkpoint step, config.sampling, the count, the batch size, the seed, the process), with
  a manifest.json of them (common.io.result_dir): a rerun with other settings
  writes a new result and leaves the old one untouched. Batch i uses key
  fold_in(stream_key(config.seed, "sample"), i) (common/keys.py). Samples that are not
  all finite are an error, and nothing is written.
  """
  if config.sampling.get("task", "sample") != "sample":
    return controlled_sample.run(config, workdir)
  method = config.sampling.method
  num_samples = positive_int(config.eval.num_samples, "config.eval.num_samples")
  positive_int(config.eval.batch_size, "config.eval.batch_size")
  sde, model_fn, step = restore_model_fn(config, workdir, purpose=method)
  t0 = time.time()
  samples, nfe = draw_samples(config, sde, model_fn,
                              stream_key(int(config.seed), "sample"), num_samples)
  check_finite_samples(samples, f"the checkpoint at step {step} ({method})")
  out = result_dir(workdir, f"samples/{method}_step{step}",
                          sample_settings(config, step, num_samples))
  stem = os.path.join(out, "samples")
  pic = save_samples(config, samples, nfe, stem)
  logging.info("%d samples with %s (NFE %.0f) in %.1fs -> %s", len(samples), method, nfe,
               time.time() - t0, pic)
  print(f"wrote {stem}.npz and {pic}")
  return stem + ".npz"
