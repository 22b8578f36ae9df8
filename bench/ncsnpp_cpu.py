"""CPU speed of a reduced NCSN++, one network evaluation and one training step, at the size
score_sde_pytorch's CPU figures were quoted for (usage, size and figures: `main`)."""
from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import common

NAME = "ncsnpp_cpu"
CONFIG = "configs/ve/cifar10_ncsnpp_continuous.py"
# The reduced NCSN++ of the VE CIFAR-10 config (score_sde_pytorch's CPU figures are for it).
REDUCED = {"model.nf": 32, "model.ch_mult": (1, 2, 2), "model.num_res_blocks": 2,
           "model.attn_resolutions": (16,), "data.image_size": 32}
REDUCED_BATCH = 16


def parser():
  p = common.base_parser("CPU speed of the reduced NCSN++ of BENCHMARKS.md (forward and "
                         "training step).", default_batch=REDUCED_BATCH)
  p.set_defaults(config=CONFIG, iters=10, warmup=2)
  for action in p._actions:  # --config has a default here
    if action.dest == "config":
      action.required = False
  p.add_argument("--skip_train", action="store_true", help="time the forward pass only")
  p.add_argument("--fir_impl", default="shifted_sums", choices=("shifted_sums", "reference"),
                 help="FIR resampling: the library's (shifted sums) or the previous "
                      "depthwise-convolution one kept in tests/reference_upfirdn.py, for "
                      "before/after figures in one tree")
  p.add_argument("--norm_impl", default="models", choices=("models", "reference"),
                 help="GroupNorm: the library's (per-channel sums first) or the previous "
                      "one-pass reduction kept in tests/reference_layers.py")
  p.add_argument("--proj_impl", default="models", choices=("models", "tensordot"),
                 help="attention projections (NIN): the library's (models/matmul.py) or "
                      "the previous plain tensordot kept in tests/reference_layers.py")
  p.add_argument("--cpu_devices", default=None,
                 help="devices of JAX's CPU backend ('auto': one per core, as main.py "
                      "--cpu_devices auto; default JAX's: one); the batch of the forward "
                      "and of the training step is split over them")
  p.add_argument("--conv_impl", default="models", choices=("models", "lax"),
                 help="convolutions: the library's (models/conv.py, gradients in the form "
                      "XLA's CPU backend runs fast inside loops) or plain "
                      "lax.conv_general_dilated, for before/after figures in one tree")
  return p


def use_reference_fir() -> None:
  """Swaps the previous FIR code (tests/reference_upfirdn.py) into the library module.

  upsample_2d, downsample_2d, conv_downsample_2d and Conv2d look up `upfirdn2d` and
  `upsample_conv_2d` in the module at call time, so this swaps every FIR path.
  """
  tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
  sys.path.insert(0, tests)
  import reference_upfirdn as ref
  from models import up_or_down_sampling as updown
  updown.upfirdn2d = ref.upfirdn2d
  updown.upsample_conv_2d = ref.upsample_conv_2d


def use_reference_layers(norm: bool, proj: bool) -> None:
  """Swaps the previous GroupNorm and/or NIN call (tests/reference_layers.py) into
  models.layers; the networks built afterwards use them."""
  tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
  sys.path.insert(0, tests)
  import reference_layers as ref
  from models import layers
  if norm:
    layers.GroupNorm.__call__ = ref.group_norm_call
  if proj:
    layers.NIN.__call__ = ref.nin_call


def timed(fn, warmup: int, iters: int) -> dict:
  """Median wall ms and median process CPU ms (all threads) of `fn()` over `iters` calls
  after `warmup`, each waited for. On a shared machine the wall time grows with the other
  jobs' load while the CPU time mostly does not, so both are kept."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  wall, cpu = [], []
  for _ in range(max(1, iters)):
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    wall.append(1e3 * (time.perf_counter() - t0))
    cpu.append(1e3 * (time.process_time() - c0))
  return {"ms": statistics.median(wall), "cpu_ms": statistics.median(cpu), "call_ms": wall}


def load(args):
  """The reduced config (REDUCED; with --tiny configs/tiny.py's shrink instead), then
  --set (common.load_config)."""
  fields = {} if args.tiny else REDUCED  # --tiny: configs/tiny.py's shrink instead
  args.set = [f"{field}={value!r}" for field, value in fields.items()] + list(args.set)
  return common.load_config(args)


def forward_fn(config):
  """(jitted f(params, x, labels), params, x, labels, n_params) for the config's network."""
  import models
  model = models.get_model(config, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  @jax.jit
  def f(params, x, labels):
    return nnx.merge(graphdef, params, rest)(x, labels, train=False)

  b, s = int(config.training.batch_size), int(config.data.image_size)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(b, s, s, 3)).astype(np.float32)
  # VE noise levels between sigma_min and sigma_max, log-uniform as in training.
  labels = np.exp(rng.uniform(np.log(0.01), np.log(50.0), size=(b,))).astype(np.float32)
  # On several devices (--cpu_devices) the batch is split over them, the parameters
  # replicated, as main.py's modes place them.
  from common.mesh import make_mesh, put_batch, replicated
  mesh = make_mesh()
  params = jax.device_put(params, replicated(mesh))
  if b % jax.device_count() == 0:
    x, labels = put_batch(x, mesh), put_batch(labels, mesh)
  return f, params, jnp.asarray(x), jnp.asarray(labels), n_params


def main(argv=None) -> dict:
  """python -m bench.ncsnpp_cpu --out /tmp/ncsnpp_cpu                 # fir=True
      python -m bench.ncsnpp_cpu --set model.fir=False --out /tmp/ncsnpp_cpu
      python -m bench.ncsnpp_cpu --fir_impl reference --out /tmp/ncsnpp_cpu  # FIR before
      python -m bench.ncsnpp_cpu --conv_impl lax --out /tmp/ncsnpp_cpu  # conv before
      python -m bench.ncsnpp_cpu --norm_impl reference --proj_impl tensordot \
          --out /tmp/ncsnpp_cpu   # GroupNorm and attention projections before
      python -m bench.ncsnpp_cpu --cpu_devices auto --out /tmp/ncsnpp_cpu  # a device per core
      python -m bench.ncsnpp_cpu --tiny --iters 2 --warmup 1 --out /tmp/b  # smoke run

  The network is configs/ve/cifar10_ncsnpp_continuous.py reduced to the size for which
  score_sde_pytorch's CPU figures were quoted (BENCHMARKS.md): nf=32, ch_mult (1, 2, 2),
  2 residual blocks per resolution, attention at 16x16, FIR [1, 3, 3, 1], BigGAN blocks,
  Fourier embedding, batch 16 of 32x32x3 (1,777,635 parameters). `--tiny` uses
  configs/tiny.py's shrink instead, for a smoke run; `--set FIELD=VALUE` overrides any field.

  Figures (one JSON line, also appended to <out>/ncsnpp_cpu.jsonl):
    forward_ms      median wall time over --iters calls (after --warmup) of the jitted network
                    evaluation `net(x, labels, train=False)` on a (batch, 32, 32, 3) input
                    with VE noise levels as labels: what one sampler step costs
    train_step_ms   the same for the compiled training step of training.loop (DSM loss,
                    backward, Adam, EMA; bench.train_step.build with one step per call,
                    inside the loop's lax.scan)
    bare_step_ms    the same step jitted alone, outside any loop
    *_cpu_ms        median process CPU time (user + system, all threads) of those calls:
                    on a loaded machine the wall time grows with the load, this much less
    n_params        trainable parameters
    threads         CPUs this process may run on (XLA's CPU thread pool uses them all),
                    with XLA_FLAGS and the machine's load average at the start and end
  """
  args = parser().parse_args(argv)
  if args.cpu_devices is not None:
    from common.cpu_devices import set_cpu_devices
    set_cpu_devices(args.cpu_devices)  # before JAX starts its backends
  config = load(args)
  if args.fir_impl == "reference":
    use_reference_fir()
  if args.norm_impl == "reference" or args.proj_impl == "tensordot":
    use_reference_layers(args.norm_impl == "reference", args.proj_impl == "tensordot")
  if args.conv_impl == "lax":
    # The layers look models.conv.conv_general_dilated up at call time.
    from jax import lax
    from models import conv as conv_lib
    conv_lib.conv_general_dilated = lax.conv_general_dilated
  load0 = os.getloadavg()
  f, params, x, labels, n_params = forward_fn(config)
  compiled, fwd_compile_s = common.compile_timed(f, params, x, labels)
  fwd = timed(lambda: compiled(params, x, labels), args.warmup, args.iters)
  record = {"figure": NAME, **common.config_summary(args, config),
            "fir": bool(config.model.fir), "fir_impl": args.fir_impl,
            "conv_impl": args.conv_impl, "norm_impl": args.norm_impl,
            "proj_impl": args.proj_impl,
            "n_params": n_params, "forward_ms": fwd["ms"], "forward_cpu_ms": fwd["cpu_ms"],
            "forward_call_ms": fwd["call_ms"], "forward_compile_s": fwd_compile_s}
  if not args.skip_train:
    from bench import train_step
    train_fn, state, batches, _ = train_step.build(config, 1)
    step, step_compile_s = common.compile_timed(train_fn, state, batches, 1)
    holder = {"state": state}

    def call():
      holder["state"], metrics = step(holder["state"], batches)  # the state is donated
      return metrics["loss"]

    tr = timed(call, args.warmup, args.iters)
    record.update({"train_step_ms": tr["ms"], "train_step_cpu_ms": tr["cpu_ms"],
                   "train_step_call_ms": tr["call_ms"],
                   "train_step_compile_s": step_compile_s})
    # The same step jitted alone, outside the loop's lax.scan: with --conv_impl lax,
    # XLA's CPU backend runs convolution gradients inside a while loop ~20x slower
    # (BENCHMARKS.md); with the library's convolutions the two should agree.
    from training import step as step_lib
    from training.state import create_train_state
    _, _, _, mesh = train_step.build(config, 1)
    single = jax.jit(step_lib.build_train_step(config, mesh, host_batches=True),
                     donate_argnums=(0,))
    bare = {"state": step_lib.put_state(create_train_state(config), mesh)}
    batch = jax.tree.map(lambda a: a[0], batches)

    def call_bare():
      bare["state"], metrics = single(bare["state"], batch)
      return metrics["loss"]

    tb = timed(call_bare, args.warmup, args.iters)
    record.update({"bare_step_ms": tb["ms"], "bare_step_cpu_ms": tb["cpu_ms"]})
  record.update({"threads": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                 "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_devices": args.cpu_devices,
                 "loadavg_start": load0[0], "loadavg_end": os.getloadavg()[0],
                 "warmup": args.warmup, "iters": args.iters})
  record.update(common.environment())
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main(sys.argv[1:])
