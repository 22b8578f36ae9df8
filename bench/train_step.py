"""Training-step throughput: ms/step, images/s, FLOPs, MFU, peak memory, compile time
(usage and figures: `main`)."""
from __future__ import annotations

import sys

import jax
import numpy as np

from bench import common

NAME = "train_step"


def build(config, n_steps: int):
  """(train_fn, state, batches, mesh): the jitted n-step function training.loop runs
  (training.step.get_train_fn, host batches), a fresh state on the mesh, and n host
  batches on the mesh."""
  import data as data_lib
  from common.mesh import make_mesh
  from training import step as step_lib
  from training.state import create_train_state

  mesh = make_mesh()
  train_fn = step_lib.get_train_fn(config, mesh, host_batches=True)
  state = step_lib.put_state(create_train_state(config), mesh)
  shape = (n_steps, int(config.training.batch_size)) + data_lib.get_data_shape(config)
  host = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
  return train_fn, state, step_lib.put_batches(host, mesh), mesh


def parser():
  p = common.base_parser("Benchmark the compiled training step.")
  p.add_argument("--n_jitted_steps", type=int, default=1,
                 help="steps per device call (lax.scan); time is divided by it")
  p.add_argument("--cache_dir", default=None,
                 help="JAX persistent compilation cache folder (bench.compile_cache)")
  p.add_argument("--compile_only", action="store_true",
                 help="only compile (first_compile_s); no timing, no FLOPs")
  return p


def main(argv=None) -> dict:
  """python -m bench.train_step --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128 --dtype bfloat16
      python -m bench.train_step --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128 --dtype float32
      python -m bench.train_step --config configs/ve/cifar10_ncsnpp_continuous.py --batch 128 --dtype bfloat16
      python -m bench.train_step --config configs/vp/cifar10_ddpmpp_continuous.py --tiny --out /tmp/b  # CPU smoke

  The step is the one `training.loop.train` runs, built by `training.step.get_train_fn`
  (loss, optimizer, EMA, scanned `--n_jitted_steps` times) on a mesh over all devices, with
  host batches (uniform [0, 1] data of the config's shape, put on the mesh by
  `put_batches` and scaled on the device) and the donated state placed by `put_state`.

  Figures (one JSON line):
    ms_per_step     median over --iters timed calls (after --warmup), / n_jitted_steps
    images_per_s    batch / (ms_per_step / 1000)
    flops_per_step  XLA cost analysis of a compiled one-step program (the n-step program's
                    loop body would be counted once, so n > 1 compiles a one-step program
                    for the count); per device
    mfu             flops_per_step / step time / peak FLOP/s of the device at the network's
                    matmul precision (bf16, TF32 for float32 on a GPU); null where the
                    device kind has no entry in bench.common.PEAK_FLOPS (CPUs)
    peak_memory_bytes  device.memory_stats()['peak_bytes_in_use'], null where unavailable
    first_compile_s    trace + lower + compile of the timed program
  """
  args = parser().parse_args(argv)
  common.init_cache(args.cache_dir)
  config = common.load_config(args)
  n = int(args.n_jitted_steps)
  if n < 1:
    raise ValueError(f"--n_jitted_steps must be >= 1, got {n}")
  config.training.n_jitted_steps = n
  device = jax.devices()[0]

  train_fn, state, batches, _ = build(config, n)
  compiled, compile_s = common.compile_timed(train_fn, state, batches, n)
  record = {"figure": NAME, **common.config_summary(args, config), "n_jitted_steps": n,
            "first_compile_s": compile_s, "cache_dir": args.cache_dir}
  if args.compile_only:
    record.update(common.environment())
    return common.emit(record, NAME, args.out)

  if n == 1:
    flops = common.cost_flops(compiled)
  else:
    one = common.compile_timed(train_fn, state, jax.tree.map(lambda b: b[:1], batches),
                               1)[0]
    flops = common.cost_flops(one)

  holder = {"state": state}

  def call():
    # The state is donated: carry the new one into the next call.
    holder["state"], metrics = compiled(holder["state"], batches)
    return metrics["loss"]

  seconds, times = common.median_seconds(call, args.warmup, args.iters)
  loss = np.asarray(jax.device_get(call()))
  step_s = seconds / n
  precision = common.matmul_precision_key(args.dtype, device)
  peak = common.peak_flops(device, precision)
  record.update({
      "ms_per_step": 1e3 * step_s,
      "images_per_s": args.batch / step_s,
      "flops_per_step": flops,
      "peak_flops": peak,
      "peak_flops_precision": precision,
      "mfu": flops / step_s / peak if (flops and peak) else None,
      "peak_memory_bytes": common.peak_memory_bytes(device),
      "loss_finite": bool(np.all(np.isfinite(loss))),
      "warmup": args.warmup, "iters": args.iters,
      "call_ms": [1e3 * t for t in times],
  })
  record.update(common.environment())
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main(sys.argv[1:])
