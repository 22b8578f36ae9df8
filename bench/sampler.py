"""Predictor-corrector sampler speed: ms per model evaluation (NFE) (usage and method:
`main`)."""
from __future__ import annotations

import sys

import jax
from flax import nnx

from bench import common

NAME = "sampler"


def build(config, predictor: str, corrector: str, snr: float, n_steps: int):
  """(jitted fn(key, params) -> x, params, traced) for a PC sampler of `config`;
  traced["nfe"] is the sampler's NFE once the function has been traced."""
  import data as data_lib
  import models
  import sde_lib
  from training.restore import model_fn_for
  from solvers.pc_sampler import get_pc_sampler

  sde = sde_lib.get_sde(config)
  shape = (int(config.training.batch_size),) + data_lib.get_data_shape(config)
  sampler = get_pc_sampler(sde, shape, predictor=predictor, corrector=corrector,
                                   snr=snr, n_steps=n_steps, probability_flow=False,
                                   denoise=True, eps=float(config.sampling.eps))
  model = models.get_model(config, nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  traced = {}

  @jax.jit
  def sample(key, params):
    model_fn = model_fn_for(config, sde, nnx.merge(graphdef, params), "pc")
    x, traced["nfe"] = sampler(key, model_fn)  # nfe: a Python int, known at trace time
    return x

  return sample, params, traced


def parser():
  p = common.base_parser("Benchmark the PC sampler (ms per model evaluation).")
  p.add_argument("--num_scales", type=int, default=50,
                 help="grid points of the timed sampler (config.model.num_scales)")
  p.add_argument("--predictor", default="reverse_diffusion")
  p.add_argument("--corrector", default="langevin")
  p.add_argument("--snr", type=float, default=0.16)
  p.add_argument("--n_steps", type=int, default=1, help="corrector steps per grid point")
  p.set_defaults(iters=5)
  return p


def main(argv=None) -> dict:
  """python -m bench.sampler --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128 --dtype bfloat16
      python -m bench.sampler --config configs/ve/cifar10_ncsnpp_continuous.py --batch 128 --dtype bfloat16
      python -m bench.sampler --config configs/vp/cifar10_ddpmpp_continuous.py --tiny --num_scales 4 --out /tmp/b

  Times `solvers.get_pc_sampler` (reverse diffusion predictor + Langevin corrector, one
  corrector step, as score_sde's PC sampler) with `--num_scales` grid points instead of the
  config's 1000, on the initial network, and divides the median time of one whole sampling
  call by its NFE (= num_scales * 2). The network's parameters are arguments of the jitted
  function (not constants folded into it), as with a trained checkpoint.
  """
  args = parser().parse_args(argv)
  config = common.load_config(args)
  config.model.num_scales = int(args.num_scales)
  device = jax.devices()[0]

  sample, params, traced = build(config, args.predictor, args.corrector, args.snr,
                                 args.n_steps)
  key = jax.random.key(0)
  compiled, compile_s = common.compile_timed(sample, key, params)
  nfe = int(traced["nfe"])
  seconds, times = common.median_seconds(lambda: compiled(key, params), args.warmup,
                                         args.iters)
  record = {"figure": NAME, **common.config_summary(args, config),
            "predictor": args.predictor, "corrector": args.corrector,
            "n_steps": args.n_steps, "num_scales": args.num_scales, "nfe": nfe,
            "ms_per_nfe": 1e3 * seconds / nfe, "ms_per_sample_call": 1e3 * seconds,
            "first_compile_s": compile_s,
            "peak_memory_bytes": common.peak_memory_bytes(device),
            "warmup": args.warmup, "iters": args.iters,
            "call_ms": [1e3 * t for t in times]}
  record.update(common.environment())
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main(sys.argv[1:])
