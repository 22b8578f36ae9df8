"""Sample quality against NFE for the fast samplers (solvers/fast/) on a trained toy model.

    python -m bench.fast_samplers --config configs/toy/checkerboard_vpsde.py --workdir runs/checkerboard_vpsde
    python -m bench.fast_samplers --config configs/toy/checkerboard_vpsde.py --workdir /tmp/fs --train_steps 300 --n 1000

Trains the config's toy model in `--workdir` if it has no checkpoint (`--train_steps`
overrides config.training.n_iters), then draws `--n` samples from ONE prior draw x_T with
every method at NFE 5, 10, 20, 50 (edm_heun: steps = (NFE + 1) // 2, so NFE = 2 steps - 1;
orders above steps are lowered), with score_sde's 1000-step PC sampler and with the
adaptive probability-flow ODE (tsit5, rtol = atol = 1e-5) as references, and reports the
sliced Wasserstein distance (evaluation.metrics.sliced_wasserstein, 256 projections, one
projection key for all) of each to fresh data, and between two fresh data sets (the noise
floor). One JSON line per sampler run to `<out>/fast_samplers.jsonl`.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from bench import common

NAME = "fast_samplers"

# (label, method, knobs): the methods at their references' recommended settings.
METHODS = (
    ("ddim", "ddim", {}),
    ("dpm_solver-2M", "dpm_solver", dict(order=2)),
    ("dpm_solver-3M", "dpm_solver", dict(order=3)),
    ("dpm_solver-fast-3S", "dpm_solver", dict(order=3, multistep=False)),
    ("dpm_solver++-2M", "dpm_solver++", dict(order=2)),
    ("dpm_solver++-3M", "dpm_solver++", dict(order=3)),
    ("dpm_solver++-2S", "dpm_solver++", dict(order=2, multistep=False)),
    ("unipc-bh1-2", "unipc", dict(order=2, variant="bh1")),
    ("unipc-bh2-3", "unipc", dict(order=3, variant="bh2")),
    ("ipndm-4", "ipndm", dict(order=4)),
    ("edm_heun", "edm_heun", dict(schedule="edm")),
)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--train_steps", type=int, default=None)
  p.add_argument("--n", type=int, default=2000, help="samples per sampler")
  p.add_argument("--nfes", default="5,10,20,50")
  p.add_argument("--schedule", default="logSNR",
                 help="schedule of every method but edm_heun (rectified flow: time_uniform)")
  p.add_argument("--out", default=common.RESULTS_DIR)
  args = p.parse_args(argv)

  import sde_lib
  import solvers
  from configs.tiny import load as load_config_file
  from data import toy
  from evaluation import metrics
  from training import runner
  from training.loop import train

  config = load_config_file(args.config)
  if args.train_steps is not None:
    config.training.n_iters = int(args.train_steps)
    config.training.snapshot_freq = int(args.train_steps)
  t0 = time.time()
  train(config, args.workdir)
  train_s = time.time() - t0
  sde = sde_lib.get_sde(config)
  model, step = runner.restore_model(config, args.workdir)
  name, dim, n = config.data.dataset, int(config.data.dim), int(args.n)
  key = jax.random.PRNGKey(0)
  k_data, k_ref, k_sw, k_prior, k_run = jax.random.split(key, 5)
  fresh = toy.sample(k_data, name, n, dim)
  floor = float(metrics.sliced_wasserstein(k_sw, fresh, toy.sample(k_ref, name, n, dim)))
  x_T = sde.prior_sampling(k_prior, (n, dim))
  base = dict(config=os.path.basename(args.config), sde=config.training.sde,
              train_steps=int(step), train_seconds=round(train_s, 1), n=n,
              sw_data_vs_data=floor, device=jax.devices()[0].device_kind)

  def record(label, sampler, purpose, **extra):
    model_fn = runner.model_fn_for(config, sde, model, purpose)
    t1 = time.time()
    x, nfe = sampler(k_run, model_fn, x_T=x_T)
    x = jax.block_until_ready(x)
    sw = float(metrics.sliced_wasserstein(k_sw, x, fresh))
    common.emit(dict(base, sampler=label, nfe=int(nfe), sw=sw,
                     sw_above_floor=sw - floor, seconds=round(time.time() - t1, 2),
                     finite=bool(np.all(np.isfinite(np.asarray(x)))), **extra),
                NAME, args.out)

  record("pc-1000", solvers.get_pc_sampler(sde, (n, dim), eps=float(config.sampling.eps)),
         "pc")
  record("ode-adaptive", solvers.get_ode_sampler(sde, (n, dim), rtol=1e-5, atol=1e-5,
                                                 eps=float(config.sampling.eps)), "ode")
  for nfe in (int(s) for s in args.nfes.split(",")):
    for label, method, knobs in METHODS:
      knobs = dict(knobs)
      steps = (nfe + 1) // 2 if method == "edm_heun" else nfe
      knobs.setdefault("schedule", args.schedule)
      if "order" in knobs:
        knobs["order"] = min(knobs["order"], steps)
      try:
        sampler = solvers.get_fast_sampler(sde, (n, dim), method, steps,
                                           eps=float(config.sampling.eps), **knobs)
      except sde_lib.UserError as e:  # e.g. singlestep on rectified flow
        print(f"skip {label} at NFE {nfe}: {e}")
        continue
      record(label, sampler, "ode", target_nfe=nfe,
             **{k: v for k, v in knobs.items()})


if __name__ == "__main__":
  main()
