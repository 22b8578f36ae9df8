"""`main.py --mode stats`: FID reference statistics of a data set split, resumable."""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

import data as data_lib
from common.errors import UserError
from common.io import result_dir, save_npz
from evaluation import inception
from evaluation import sample_quality as sq
from evaluation.quality import (IS_SPLITS, STATS_FILE, Features, gather, require_images,
                                run_chunks, stats_kind, stats_settings, weights_file)


def run(config, workdir: str) -> str:
  """Reference statistics of config.eval.stats_split (below); returns the
  path of stats.npz.

      python main.py --config <cfg> --workdir <w> --mode stats \
          --config.eval.inception_path=pt_inception-2015-12-05-6726825d.pth

  The reference statistics of split config.eval.stats_split
  ('train' or 'test', as score_sde's cifar10_stats.npz of the training set) of the
  configured image data set: all its images (the first config.eval.max_batches chunks when
  that is > 0, for smoke runs; recorded). Real images are read as the data set's own uint8
  pixels (no float round trip). Writes

      <workdir>/stats/<dataset>_<split>-<hash>/stats.npz

  with `mu` (2048,) and `sigma` (2048, 2048) float64 (pytorch-fid's keys), the streaming
  moments `count`, `sum`, `outer`, `shift` (sample_quality.Moments, which combine), the
  features `pool_3` (N, 2048) and `logits` (N, 1008) float32 (KID and the data's own IS need
  them; score_sde's file keeps pool_3 too) and `info` (a JSON string of the settings). The
  hash covers every setting that affects the file (data set, data_dir, size, channels,
  split, chunk size, max_batches, the weights file's sha256).

  The Inception, the chunks and their resumption: modes/sample_quality.run.
  """
  require_images(config, "FID reference statistics (--mode stats)")
  weights, weights_sha = weights_file(config)
  settings = stats_settings(config, weights_sha)
  images = data_lib.images.split_images(config, settings["split"])  # shards: read per chunk
  bs = settings["chunk_size"]
  n = len(images)
  if settings["max_batches"] > 0:
    n = min(n, settings["max_batches"] * bs)
  if n < 2:
    raise UserError(f"{settings['dataset']} {settings['split']} split has {n} image(s) to "
                    "use; statistics need at least 2")
  num_chunks = -(-n // bs)
  info = {**settings, "inception_path": weights, "num_images": n}
  out_dir = result_dir(workdir, stats_kind(settings), settings,
                       manifest_extra={"inception_path": weights, "num_images": n})
  features = Features(inception.load(weights), bs)

  def size(i):
    return min(bs, n - i * bs)

  def compute(i):
    pool3, logits = features(images[i * bs:i * bs + size(i)])
    return {"pool_3": pool3, "logits": logits}, {"n": int(pool3.shape[0])}

  t0 = time.time()
  run_chunks(out_dir, num_chunks, compute, n, size,
             f"stats {settings['dataset']} {settings['split']}")
  out = os.path.join(out_dir, STATS_FILE)
  if jax.process_index() != 0:
    return out  # process 0 wrote the chunks and combines them
  m, pool3, logits = gather(out_dir, num_chunks)
  stats = sq.stats_from_moments(m)
  save_npz(out, mu=stats.mu, sigma=stats.sigma, count=np.int64(m.count), sum=m.sum,
           outer=m.outer, shift=m.shift, pool_3=pool3, logits=logits,
           info=np.asarray(json.dumps(info, sort_keys=True)))
  is_mean, is_std = sq.inception_score(logits, splits=min(IS_SPLITS, n))
  print(f"reference statistics of {n} {settings['dataset']} {settings['split']} images "
        f"(IS of the data {is_mean:.3f} +- {is_std:.3f}) in {time.time() - t0:.1f}s "
        f"-> {out}")
  return out
