"""Probability-flow likelihood speed: ms per model evaluation (NFE) with the Rademacher
trace (usage and method: `main`)."""
from __future__ import annotations

import sys

import jax
import numpy as np
from flax import nnx

from bench import common

NAME = "likelihood"


def build(config, rtol: float, atol: float, solver: str):
  """(jitted fn(key, params, x) -> (bpd, nfe), params, x) for `config`."""
  import data as data_lib
  import models
  import sde_lib
  from training.restore import model_fn_for
  from solvers.likelihood import get_likelihood_fn

  sde = sde_lib.get_sde(config)
  likelihood = get_likelihood_fn(
      sde, data_lib.get_data_inverse_scaler(config), trace="rademacher", rtol=rtol,
      atol=atol, solver=solver, eps=1e-5)
  model = models.get_model(config, nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  @jax.jit
  def bpd_fn(key, params, x):
    model_fn = model_fn_for(config, sde, nnx.merge(graphdef, params), "likelihood")
    bpd, _, nfe = likelihood(key, model_fn, x)
    return bpd, nfe

  shape = (int(config.training.batch_size),) + data_lib.get_data_shape(config)
  data = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
  x = data_lib.get_data_scaler(config)(jax.numpy.asarray(data))
  return bpd_fn, params, x


def parser():
  p = common.base_parser("Benchmark the probability-flow likelihood (ms per NFE).")
  p.add_argument("--rtol", type=float, default=1e-3)
  p.add_argument("--atol", type=float, default=1e-3)
  p.add_argument("--solver", default="tsit5", help="an adaptive diffrax solver")
  p.set_defaults(iters=3, warmup=1)
  return p


def main(argv=None) -> dict:
  """python -m bench.likelihood --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128
      python -m bench.likelihood --config configs/ve/cifar10_ncsnpp_continuous.py --batch 128
      python -m bench.likelihood --config configs/vp/cifar10_ddpmpp_continuous.py --tiny --out /tmp/b

  Times `get_likelihood_fn(sde, inverse_scaler, trace="rademacher")` (bits/dim by
  the probability-flow ODE, one Hutchinson probe, the divergence by a jvp) on the initial
  network and uniform data, with loose tolerances (--rtol, --atol; default 1e-3) so a timed
  solve takes few steps, and divides the median time of one whole solve by its NFE (the
  solver's count: vector-field evaluations, each one model evaluation plus its jvp). The
  solver traces the network under float32 matmul precision whatever --dtype says
  (solvers/likelihood.py), so on a GPU this figure is at true float32, not TF32.
  """
  args = parser().parse_args(argv)
  config = common.load_config(args)
  device = jax.devices()[0]

  bpd_fn, params, x = build(config, args.rtol, args.atol, args.solver)
  key = jax.random.key(0)
  compiled, compile_s = common.compile_timed(bpd_fn, key, params, x)
  seconds, times = common.median_seconds(lambda: compiled(key, params, x), args.warmup,
                                         args.iters)
  bpd, nfe = jax.device_get(compiled(key, params, x))
  nfe = int(nfe)  # the same key and data every call: the same solve, the same NFE
  record = {"figure": NAME, **common.config_summary(args, config),
            "trace": "rademacher", "solver": args.solver, "rtol": args.rtol,
            "atol": args.atol, "matmul_precision": "float32", "nfe": nfe,
            "ms_per_nfe": 1e3 * seconds / nfe, "ms_per_solve": 1e3 * seconds,
            "bpd_finite": bool(np.all(np.isfinite(bpd))),
            "first_compile_s": compile_s,
            "peak_memory_bytes": common.peak_memory_bytes(device),
            "warmup": args.warmup, "iters": args.iters,
            "call_ms": [1e3 * t for t in times]}
  record.update(common.environment())
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main(sys.argv[1:])
