"""Sample quality against NFE for the fast samplers (solvers/fast/) on a trained model: sliced
Wasserstein distance to data, over chunks, against a noise floor (usage and method:
`main`)."""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from common.choices import check_choice
from common.errors import UserError

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


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--train_steps", type=int, default=None)
  p.add_argument("--n", type=int, default=50000,
                 help="samples per sampler (DIGITS: a multiple of 360, e.g. 1440)")
  p.add_argument("--chunk", type=int, default=10000,
                 help="toy data: the distance is the mean over chunks of this size")
  p.add_argument("--nfes", default="5,10,20,50")
  p.add_argument("--skip_references", action="store_true",
                 help="do not run the PC and adaptive ODE references (a second run with "
                      "other schedules or NFEs; the references do not depend on them)")
  p.add_argument("--methods", default="",
                 help="comma-separated labels of METHODS to run (default: all)")
  p.add_argument("--pc_steps", type=int, default=1000,
                 help="steps of the PC reference (continuous-time models)")
  p.add_argument("--schedule", default="logSNR",
                 help="schedule of every method but edm_heun (rectified flow: time_uniform)")
  p.add_argument("--out", default=common.RESULTS_DIR)
  return p


def _selected_methods(methods: str) -> list[tuple]:
  """The METHODS rows named by --methods (comma-separated labels; empty: all)."""
  labels = [m for m in methods.split(",") if m]
  for label in labels:
    check_choice(label, [row[0] for row in METHODS], "--methods label")
  return [m for m in METHODS if not labels or m[0] in labels]


def _train_and_restore(config, args) -> tuple:
  """Trains the config's model in --workdir (resuming; a no-op when it is done) and
  restores it: (model, step, training seconds)."""
  import data as data_lib
  from training.loop import train
  from training.restore import restore_model

  if args.train_steps is not None:
    config.training.n_iters = int(args.train_steps)
    config.training.snapshot_freq = int(args.train_steps)
  t0 = time.time()
  if data_lib.is_toy(config):
    train(config, args.workdir)
  else:
    from training.data_source import get_data_source
    train(config, args.workdir, data_source=get_data_source(config))
  train_s = time.time() - t0
  model, step = restore_model(config, args.workdir)
  return model, step, train_s


def _data_sets(config, args, k_data: jax.Array, k_ref: jax.Array) -> tuple:
  """(reference set, floor sets, chunk size) (main's docstring: toy data or DIGITS)."""
  import data as data_lib
  from data import toy

  if data_lib.is_toy(config):
    name, dim = config.data.dataset, int(config.data.dim)
    chunk = int(args.chunk)
    # A reference set 20x the chunk: its quantiles at the chunk's levels are nearly
    # exact, so the distance's noise is the chunk's own.
    reference = toy.sample(k_ref, name, 20 * chunk, dim)
    floor_sets = [toy.sample(k, name, chunk, dim)
                  for k in jax.random.split(k_data, max(2, int(args.n) // chunk))]
    return reference, floor_sets, chunk
  from data.digits import load_digits
  reference = load_digits("train")[0].astype(np.float32) / 255.0
  test_x = load_digits("test")[0].astype(np.float32) / 255.0
  return reference, [test_x], len(test_x)


class _Recorder:
  """Runs a sampler from the shared x_T and emits its distance to the reference set,
  chunk by chunk, as one JSON line."""

  def __init__(self, args, k_sw, k_run, reference, floor_sets, chunk, x_T, inverse,
               base: dict):
    from evaluation import metrics

    self.args, self.k_run, self.chunk, self.x_T, self.inverse = (args, k_run, chunk, x_T,
                                                                 inverse)
    self.to_reference = jax.jit(metrics.sliced_wasserstein_to(k_sw, jnp.asarray(reference),
                                                              chunk))
    self.floors = self.chunk_distances(np.concatenate(floor_sets))
    self.floor = float(np.mean(self.floors))
    floors = self.floors
    self.base = dict(base, n_reference=len(reference), sw_data_vs_data=self.floor,
                     sw_data_vs_data_sd=(float(np.std(floors, ddof=1)) if len(floors) > 1
                                         else None),
                     device=jax.devices()[0].device_kind)

  def chunk_distances(self, x) -> list[float]:
    x = jnp.asarray(x)
    return [float(self.to_reference(x[i:i + self.chunk]))
            for i in range(0, len(x), self.chunk)]

  def __call__(self, label: str, sampler, model_fn, **extra) -> None:
    t1 = time.time()
    x, nfe = sampler(self.k_run, model_fn, x_T=self.x_T)
    x = jax.block_until_ready(x)
    d = self.chunk_distances(self.inverse(x))
    sw, sw_sd = float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else None
    # Per chunk: every sampler starts from the same x_T, so chunk i of two samplers is a
    # paired comparison (their difference is far less noisy than either distance).
    common.emit(dict(self.base, sampler=label, nfe=int(nfe), sw=sw, sw_sd=sw_sd,
                     sw_chunks=d, floor_chunks=self.floors,
                     sw_above_floor=sw - self.floor, seconds=round(time.time() - t1, 2),
                     finite=bool(np.all(np.isfinite(np.asarray(x)))), **extra),
                NAME, self.args.out)


def _run_references(record: _Recorder, config, sde, shape, model, ode_fn, args) -> None:
  """score_sde's PC sampler at --pc_steps steps and the adaptive probability-flow ODE."""
  import sde_lib
  import solvers
  from training.restore import model_fn_for

  # The PC reference at --pc_steps steps (score_sde's 1000 for VP/sub-VP), whatever the
  # config's N, when the model is continuous-time.
  pc_config = config.copy_and_resolve_references()
  if bool(config.training.continuous):
    pc_config.model.num_scales = int(args.pc_steps)
  pc_sde = sde_lib.get_sde(pc_config)
  record(f"pc-{pc_sde.N}", solvers.get_pc_sampler(pc_sde, shape,
                                                  eps=float(config.sampling.eps)),
         model_fn_for(config, pc_sde, model, "pc"))
  record("ode-adaptive", solvers.get_ode_sampler(sde, shape, rtol=1e-5, atol=1e-5,
                                                 eps=float(config.sampling.eps)), ode_fn)


def _run_fast(record: _Recorder, config, sde, shape, ode_fn, methods, args) -> None:
  """Every selected method at every --nfes (edm_heun: (NFE + 1) // 2 steps; orders above
  the steps lowered); a method undefined for the process is skipped with a line."""
  import solvers

  for nfe in (int(s) for s in args.nfes.split(",")):
    for label, method, knobs in methods:
      knobs = dict(knobs)
      steps = (nfe + 1) // 2 if method == "edm_heun" else nfe
      knobs.setdefault("schedule", args.schedule)
      if "order" in knobs:
        knobs["order"] = min(knobs["order"], steps)
      try:
        sampler = solvers.get_fast_sampler(sde, shape, method, steps,
                                           eps=float(config.sampling.eps), **knobs)
      except UserError as e:  # e.g. singlestep on rectified flow
        print(f"skip {label} at NFE {nfe}: {e}")
        continue
      record(label, sampler, ode_fn, target_nfe=nfe, **knobs)


def main(argv=None) -> None:
  """python -m bench.fast_samplers --config configs/default_toy.py --workdir runs/demo
      python -m bench.fast_samplers --config configs/vp/digits_ddpmpp_small.py --workdir runs/digits_vp
      python -m bench.fast_samplers --config configs/toy/checkerboard_vpsde.py --workdir /tmp/fs --train_steps 300 --n 1000

  Trains the config's model in `--workdir` if it has no checkpoint (`--train_steps`
  overrides config.training.n_iters; `make demo`'s model is configs/default_toy.py in
  runs/demo), then draws `--n` samples from ONE prior draw x_T with every method at NFE 5,
  10, 20, 50 (edm_heun: steps = (NFE + 1) // 2, so NFE = 2 steps - 1; orders above steps are
  lowered), with score_sde's PC sampler (`--pc_steps` 1000, reverse diffusion + Langevin)
  and with the adaptive probability-flow ODE (tsit5, rtol = atol = 1e-5) as references, and
  reports the sliced Wasserstein distance (evaluation.metrics.sliced_wasserstein, 256
  projections, one projection key for all) of each to data. One JSON line per sampler run
  to `<out>/fast_samplers.jsonl`.

  Data, distance and noise floor (a finite-sample distance is biased upward by the
  samples' own randomness, the more so where the density is low, so every figure is a mean
  over chunks of equal size, against one reference set):
    * toy data: `--n` samples in chunks of `--chunk` (default 50,000 in 5 chunks of
      10,000), each against one reference set of 20 x chunk fresh points (its quantiles are
      then nearly exact); the floor is the same figure for chunks of fresh data (what an
      exact sampler would score), with its standard deviation over chunks.
    * DIGITS (8x8, 64 dimensions, in [0, 1]): only 1,797 images exist, so the samples
      (`--n 1440`: 4 chunks of 360, the test split's size) are compared with the 1,437
      training images; the floor is the distance of the 360 held-out test images to them.
      A model that memorized its training set could go below that floor.
  """
  args = _parser().parse_args(argv)

  import data as data_lib
  import sde_lib
  from configs.tiny import load as load_config_file
  from training.restore import model_fn_for

  methods = _selected_methods(args.methods)
  config = load_config_file(args.config)
  is_toy = data_lib.is_toy(config)
  if not is_toy and str(config.data.dataset).upper() != "DIGITS":
    raise UserError(f"config.data.dataset = {config.data.dataset!r}: this benchmark "
                    "runs on toy data and DIGITS; use --mode sample_quality (FID) "
                    "for other image data")
  model, step, train_s = _train_and_restore(config, args)
  sde = sde_lib.get_sde(config)
  n = int(args.n)
  key = jax.random.PRNGKey(0)
  k_data, k_ref, k_sw, k_prior, k_run = jax.random.split(key, 5)
  reference, floor_sets, chunk = _data_sets(config, args, k_data, k_ref)
  if n % chunk:
    raise UserError(f"--n = {n} must be a multiple of the chunk size {chunk}")
  shape = (n,) + ((int(config.data.dim),) if is_toy else data_lib.get_data_shape(config))
  x_T = sde.prior_sampling(k_prior, shape)
  base = dict(config=os.path.basename(args.config), sde=config.training.sde,
              dataset=str(config.data.dataset), train_steps=int(step),
              train_seconds=round(train_s, 1), n=n, chunk=chunk)
  record = _Recorder(args, k_sw, k_run, reference, floor_sets, chunk, x_T,
                     data_lib.get_data_inverse_scaler(config), base)
  ode_fn = model_fn_for(config, sde, model, "ode")
  if not args.skip_references:
    _run_references(record, config, sde, shape, model, ode_fn, args)
  _run_fast(record, config, sde, shape, ode_fn, methods, args)


if __name__ == "__main__":
  main()
