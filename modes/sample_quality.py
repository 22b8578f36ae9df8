"""`main.py --mode sample_quality`: FID, KID and IS of a checkpoint's samples (and the
chunked, resumable protocol that `--mode stats` shares)."""
from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

import data as data_lib
import sde_lib
from common.errors import UserError
from common.io import file_sha256, join, plain_json, result_dir, settings_key, write_json
from common.keys import stream_key
from common.mesh import shard_outputs
from evaluation import inception
from evaluation.quality import (RESULTS_DIR, Features, quantization, reference_file,
                                require_images, sample_chunks, sample_settings, scores,
                                solver_steps, weights_file)
from solvers.from_config import get_sampling_fn
from training.restore import restore_model_fn, saved_steps


def run(config, workdir: str) -> dict:
  """FID/KID/IS of config.eval.num_samples samples of the latest checkpoint; returns
  the result dict (also written to result_<ref hash>.json, whose path is under "path").

      python main.py --config <cfg> --workdir <w> --mode stats \
          --config.eval.inception_path=pt_inception-2015-12-05-6726825d.pth
      python main.py --config <cfg> --workdir <w> --mode sample_quality \
          --config.eval.inception_path=pt_inception-2015-12-05-6726825d.pth

  The Inception over resumable chunks: evaluation.quality.run_chunks.

  `--mode sample_quality` draws config.eval.num_samples samples of the EMA
  weights of the latest checkpoint (training.restore.restore_model_fn) with the configured
  sampler (solvers.get_sampling_fn; batch i of config.eval.batch_size with key
  fold_in(stream_key(seed, "sample"), i), the same draws as `--mode sample` and `--mode
  eval` with the same batch size), mapped to [0, 1] by the data's inverse scaler, quantized
  to uint8 as config.eval.quantize says ('truncate': score_sde's
  `np.clip(samples * 255., 0, 255).astype(np.uint8)`, the default; 'round': EDM's), and run
  through the Inception. Non-finite samples raise. The chunks live in

      <workdir>/sample_quality/step<step>_<method>-<hash>/   (manifest.json, chunks.jsonl,
                                                              chunk_<i>.npz: samples uint8,
                                                              pool_3, logits, nfe)

  whose hash covers every setting that affects the samples or their features (checkpoint
  step, all of config.sampling, the process and network config, data shape and scaling,
  seed, number of samples, chunk size, quantization, the weights file's sha256); the
  manifest lists them. A rerun with other settings makes a new directory and never touches
  another's. The numbers against reference file R are written to `result_<hash of R>.json`
  in that directory (another reference adds a file and reuses the samples): the scores
  (evaluation.quality.scores) with every setting recorded: sampler (all of config.sampling), eps, noise removal, solver
  steps and measured NFE, number of samples, checkpoint step, weights file (path, sha256),
  reference file (path, sha256, kind, size), quantization.

  With several processes (main.py --multihost) each samples and runs the Inception on
  its devices' share of every chunk; process 0 writes the chunks and the result and
  returns it (the others return only "path" and "result_dir"). The numbers do not depend
  on the process or device count (chunk i's key is fold_in(key, i) whatever the split).

  The reference (config.eval.ref_stats_path): our stats.npz, pytorch-fid's `.npz` (`mu`,
  `sigma`) or score_sde's `cifar10_stats.npz` (`pool_3`). Empty: the `--mode stats` output
  of this config in this workdir.
  """
  require_images(config, "FID/KID/IS (--mode sample_quality)")
  quant = quantization(config)
  weights, weights_sha = weights_file(config)
  ref_path = reference_file(config, workdir, weights_sha)
  ref_sha = file_sha256(ref_path)
  method = str(config.sampling.method)
  step = saved_steps(workdir)[-1]
  sde = sde_lib.get_sde(config)
  settings = sample_settings(config, step, weights_sha)
  n = int(config.eval.num_samples)
  if n < 2:
    raise UserError(f"config.eval.num_samples = {n}; FID needs at least 2 samples")
  out_dir = result_dir(workdir, f"{RESULTS_DIR}/step{step}_{method}", settings,
                       manifest_extra={"inception_path": weights})
  bs = min(int(config.eval.batch_size), n)
  lazy: dict[str, Callable] = {}

  def parts():
    # Restored and built on first use: a fully recorded run (another reference) neither
    # restores the checkpoint nor compiles a network.
    if not lazy:
      _, lazy["model_fn"], _ = restore_model_fn(config, workdir, purpose=method, step=step)
      shape = (bs,) + data_lib.get_data_shape(config)
      lazy["sampler"] = shard_outputs(get_sampling_fn(config, sde, shape),
                                      n_batched=1, n_outputs=2, batch_size=bs)
      lazy["features"] = Features(inception.load(weights), bs)
    return lazy["sampler"], lazy["model_fn"], lazy["features"]

  records = sample_chunks(out_dir, n, bs, parts, stream_key(int(config.seed), "sample"),
                          quant, data_lib.get_data_inverse_scaler(config),
                          f"checkpoint step {step}, {method} sampler")
  num_chunks = -(-n // bs)
  path = os.path.join(out_dir, f"result_{ref_sha[:12]}.json")
  if jax.process_index() != 0:
    # Process 0 wrote the chunks and scores them.
    return {"path": path, "result_dir": out_dir}
  result, ref_info = scores(out_dir, num_chunks, ref_path)
  s = config.sampling
  result.update({
      "num_samples": n, "checkpoint_step": step, "workdir": join(workdir),
      "sampler": {"method": method, "config": plain_json(s)},
      "eps": float(s.get("eps", 1e-3)),
      "noise_removal": bool(s.get("noise_removal", False)),
      "solver_steps": solver_steps(config, sde),
      "nfe_mean": float(np.mean([float(records[i]["nfe"]) for i in range(num_chunks)])),
      "quantization": quant,
      "inception_weights": {"path": weights, "sha256": weights_sha},
      "reference": {"path": ref_path, "sha256": ref_sha, **ref_info},
      "settings_hash": settings_key(settings), "result_dir": out_dir})
  write_json(path, result)
  result["path"] = path
  kid_text = (f"KID {result['kid']:.5f} +- {result['kid_std']:.5f}"
              if result["kid"] is not None else "KID n/a (reference has no features)")
  print(f"FID {result['fid']:.3f}, {kid_text}, IS {result['inception_score']:.3f} +- "
        f"{result['inception_score_std']:.3f} over {n} samples ({method}, NFE "
        f"{result['nfe_mean']:.0f}, step {step}) -> {path}")
  return result
