"""How long the training loop stands still per checkpoint (usage and method: `main`)."""
from __future__ import annotations

import argparse
import inspect
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bench import common
from training import checkpoint
from training.state import TrainState

NAME = "checkpoint_stall"


def make_state(param_mb: float, n_arrays: int = 8) -> TrainState:
  """A TrainState with `param_mb` MB of float32 parameters in `n_arrays` arrays, their
  EMA and Adam's two moments (4 x param_mb MB in all), filled with random values (not
  zeros: nothing compresses them)."""
  size = int(param_mb * 2**20 / 4 / n_arrays)
  keys = jax.random.split(jax.random.key(0), n_arrays)
  params = {f"w{i}": jax.random.normal(k, (size,)) for i, k in enumerate(keys)}
  ema = jax.tree.map(lambda p: p * 0.5, params)
  opt_state = optax.adam(1e-3).init(params)
  opt_state = jax.tree.map(lambda x: x + 0.25 if x.dtype == jnp.float32 else x, opt_state)
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params, model_state={},
                    opt_state=opt_state, ema_params=ema,
                    key=jax.random.key_data(jax.random.key(1)), graphdef=None)


def main(argv=None) -> dict:
  """python -m bench.checkpoint_stall --param_mb 32 --saves 7

  Saves the same state `--saves` times (steps 1, 2, ...) into a fresh temporary workdir
  through training.checkpoint as the training loop does (`non_finite_parts`, then
  `save`, non-blocking where `save` has `block`). `stall_s`: the seconds the caller is
  blocked per save (median and all); `commit_s`: from the start of a save until it is
  committed with its checksum file (the background write included). Between saves the
  previous one is waited for outside the timed region, as when the saves are further
  apart than a save takes; the first save is left out (it compiles the finiteness
  check).
  """
  p = argparse.ArgumentParser(description="Per-checkpoint stall of the training loop.")
  p.add_argument("--param_mb", type=float, default=32.0,
                 help="MB of float32 parameters (the state is 4x: EMA, Adam mu and nu)")
  p.add_argument("--saves", type=int, default=7)
  p.add_argument("--out", default=common.RESULTS_DIR)
  args = p.parse_args(argv)
  state = make_state(args.param_mb)
  state_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  non_blocking = "block" in inspect.signature(checkpoint.save).parameters
  config = ml_collections.ConfigDict({"training": {"keep_checkpoints": 2,
                                                   "snapshot_freq": 0}})
  workdir = tempfile.mkdtemp(prefix="ckpt_stall_")
  stalls, commits = [], []
  try:
    manager = checkpoint.make_manager(config, workdir)
    try:
      for i in range(args.saves + 1):
        s = state.replace(step=jnp.asarray(i + 1, jnp.int32))
        jax.block_until_ready(s)
        t0 = time.perf_counter()
        bad = checkpoint.non_finite_parts(s)
        assert not bad
        if non_blocking:
          checkpoint.save(manager, s, block=False)
        else:
          checkpoint.save(manager, s)
        t1 = time.perf_counter()
        manager.wait_until_finished()
        t2 = time.perf_counter()
        if i:
          stalls.append(t1 - t0)
          commits.append(t2 - t0)
    finally:
      manager.close()
    assert checkpoint.verify_checksums(
        checkpoint.step_dir(checkpoint.checkpoint_dir(workdir), args.saves + 1)) is None
    assert checkpoint.is_verified(
        checkpoint.step_dir(checkpoint.checkpoint_dir(workdir), args.saves + 1))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  record = {"name": NAME, "state_mb": round(state_mb, 1), "saves": args.saves,
            "non_blocking": non_blocking,
            "stall_s_median": round(statistics.median(stalls), 4),
            "stall_s": [round(x, 4) for x in stalls],
            "commit_s_median": round(statistics.median(commits), 4),
            **common.environment()}
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main()
