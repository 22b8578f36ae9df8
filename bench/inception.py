"""FID Inception feature throughput: images/s through `evaluation.inception` (usage and
method: `main`)."""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from bench import common

NAME = "inception"
GPU_BATCH = 500
CPU_BATCH = 16


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="Benchmark FID Inception feature throughput.")
  p.add_argument("--batch", type=int, default=None,
                 help=f"images per call (default {GPU_BATCH}; {CPU_BATCH} on a CPU)")
  p.add_argument("--image_size", type=int, default=32, help="input height = width")
  p.add_argument("--weights", default=None,
                 help="a .pth/.npz of the FID Inception (default: random weights)")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  p.add_argument("--iters", type=int, default=10, help="timed calls (the median is kept)")
  p.add_argument("--out", default=common.RESULTS_DIR,
                 help="folder of the .jsonl results (default bench/results)")
  return p


def main(argv=None) -> dict:
  """python -m bench.inception                        # batch 500 (GPU), random weights
      python -m bench.inception --weights pt_inception-2015-12-05-6726825d.pth
      python -m bench.inception --batch 16 --iters 3   # a CPU figure for the record

  Times the jitted forward of the loaded network (`Inception.apply`: uint8 -> /255 ->
  bilinear resize to 299 x 299 -> 2x - 1 -> Inception-v3 -> pool3 (B, 2048) and logits
  (B, 1008)) on a device-resident batch of uint8 images of --image_size (default 32, i.e.
  CIFAR-10 samples), with convolutions at float32 precision (HIGHEST, not TF32). The weights
  do not change the speed, so without --weights random ones of the right shapes are used.
  The target is >= 3,000 images/s at batch 500 on one H100, so that 50k samples'
  features take under 20 s. Without --batch, a CPU backend runs batch 16 instead of 500
  (a full 500-image batch takes minutes on a CPU); the record says which batch ran.
  """
  from evaluation import inception

  args = parser().parse_args(argv)
  device = jax.devices()[0]
  batch = args.batch
  if batch is None:
    batch = CPU_BATCH if device.platform == "cpu" else GPU_BATCH
  if args.weights:
    net = inception.load(args.weights)
  else:
    net = inception.Inception(inception.from_state_dict(inception.random_state_dict(0)))
  images = jax.device_put(np.random.default_rng(0).integers(
      0, 256, (batch, args.image_size, args.image_size, 3), dtype=np.uint8))

  fn = jax.jit(inception.Inception.apply, static_argnums=0)
  compiled, compile_s = common.compile_timed(fn, net.graphdef, net.state, images)
  seconds, times = common.median_seconds(lambda: compiled(net.state, images),
                                         args.warmup, args.iters)
  pool3, logits = jax.device_get(compiled(net.state, images))
  flops = common.cost_flops(compiled)
  peak = common.peak_flops(device, "float32")
  record = {
      "figure": NAME, "batch": int(batch), "image_size": int(args.image_size),
      "default_batch_replaced": bool(args.batch is None and batch != GPU_BATCH),
      "weights": "random" if not args.weights else args.weights,
      "conv_precision": "float32 (HIGHEST)",
      "images_per_s": batch / seconds, "ms_per_batch": 1e3 * seconds,
      "seconds_per_50k": 50_000 * seconds / batch,
      "first_compile_s": compile_s, "flops_per_batch": flops,
      "mfu_float32": (flops / seconds / peak) if (flops and peak) else None,
      "outputs_finite": bool(np.isfinite(pool3).all() and np.isfinite(logits).all()),
      "call_ms": [1e3 * t for t in times],
      "peak_memory_bytes": common.peak_memory_bytes(device),
      **common.environment()}
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main(sys.argv[1:])
