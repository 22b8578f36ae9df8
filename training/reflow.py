"""Reflow (Liu, Gong and Liu, ICLR 2023, Algorithm 1): coupled pairs (z, x = Phi(z)) from
a trained flow's ODE, written in resumable shards (`generate_pairs`), read back
(`load_pairs`; `find_pairs_dir` picks the folder of the config's settings) and served as a
training data source (`pairs_source`) for the (k+1)-rectified flow
(config.training.pairs_dir) or a k-step distillation (config.training.rf_distill_steps = k;
training/losses.py).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from common.progress import progress as tqdm  # a bar on a terminal, else log lines

import data as data_lib
from data.iterator import ArrayBatches
from common.errors import MissingFileError, UserError
from common.mesh import shard_outputs
from solvers.ode_sampler import get_ode_sampler
from common.io import (MANIFEST_FILE, exists, glob, isdir, load_npz, makedirs, plain_json,
                       read_text, save_npz, write_json)

#: The pairs' result folders are <workdir>/reflow_pairs-<key> (common.io.result_dir);
#: a bare <workdir>/reflow_pairs is an older workdir's.
PAIRS_SUBDIR = "reflow_pairs"


def reflow_settings(config) -> dict:
  r = config.get("reflow", None)
  get = (lambda k, d: r.get(k, d)) if r is not None else (lambda k, d: d)
  return {"num_pairs": int(get("num_pairs", 20000)), "shard_size": int(get("shard_size", 5000)),
          "solver": str(get("solver", "dopri5")), "rtol": float(get("rtol", 1e-5)),
          "atol": float(get("atol", 1e-5)), "num_steps": int(get("num_steps", 0)),
          "seed": int(get("seed", 0))}


def generate_pairs(sde, model_fn, key: jax.Array, out_dir: str, num_pairs: int,
                   shard_size: int, event_shape: tuple[int, ...], solver: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, num_steps: int = 0,
                   eps: float = 1e-3, stop_after: int | None = None) -> list[str]:
  """Writes ceil(num_pairs / shard_size) shards of (z, x) pairs; skips finished shards.

  Each pair is z ~ N(0, I) (drawn by the ODE sampler from fold_in(key, shard)) and the
  flow's image x = Phi_{1 -> 0}(z): the ODE dx/dt = v(x, t) solved with `solver` (adaptive
  with rtol/atol, or num_steps > 0 fixed steps) from t = 1 to eps, then one Euler step
  from eps to 0 (x - eps v(x, eps), one more evaluation), so x is the flow's value at
  t = 0. Every shard is solved at the batch shape (shard_size, ...) (one compile), split
  over the devices of every process (common.mesh.shard_outputs; process 0 writes); the
  last shard is cut to num_pairs in all. The settings are recorded in PAIRS_MANIFEST
  before the first shard, and a resumed run with different settings is refused rather
  than mixing two couplings.

  Shards are `out_dir/pairs_00000.npz, ...` (arrays `z` and `x`, model space); shard i
  uses the key fold_in(key, i) and is written atomically (common.io.save_npz), so an
  interrupted run resumed later produces exactly the pairs of an uninterrupted one.

  `stop_after` (tests) stops after writing that many new shards, as an interruption.
  Returns the shard paths in order (those not yet written included when stopped early).
  """
  if num_pairs < 1 or shard_size < 1:
    raise UserError(f"need config.reflow.num_pairs >= 1 and shard_size >= 1, got "
                    f"{num_pairs}, {shard_size}")
  makedirs(out_dir)
  n_shards = -(-num_pairs // shard_size)
  shape = (shard_size,) + tuple(event_shape)
  manifest = {"num_pairs": int(num_pairs), "shard_size": int(shard_size),
              "event_shape": [int(d) for d in event_shape], "solver": solver,
              "rtol": float(rtol), "atol": float(atol), "num_steps": int(num_steps),
              "eps": float(eps),
              "key": np.asarray(jax.random.key_data(key)).ravel().tolist()}
  _check_manifest(out_dir, manifest)
  # The state at T is the prior draw z, so the saved trajectory gives the pair; the
  # Tweedie step of a rectified flow, x - t v(x, t), is the Euler step from eps to 0.
  sampler = shard_outputs(
      get_ode_sampler(sde, shape, solver=solver, rtol=rtol, atol=atol, eps=eps,
                      denoise=True, num_steps=num_steps or None, trajectory_times=[sde.T]),
      n_batched=1, n_outputs=3, batch_size=shard_size)
  paths = [os.path.join(out_dir, f"pairs_{i:05d}.npz") for i in range(n_shards)]
  written = 0
  for i in tqdm(range(n_shards), desc="reflow pairs"):
    if exists(paths[i]):
      continue
    if stop_after is not None and written >= stop_after:
      break
    x, nfe, traj = sampler(jax.random.fold_in(key, i), model_fn)
    n = min(shard_size, num_pairs - i * shard_size)
    save_npz(paths[i], z=np.asarray(traj[0])[:n], x=np.asarray(x)[:n], nfe=float(nfe))
    written += 1
  return paths


#: The pairs' own settings (beside the result folder's manifest.json, which keys it).
PAIRS_MANIFEST = "reflow_settings.json"


def _check_manifest(out_dir: str, manifest: dict) -> None:
  """Writes out_dir/PAIRS_MANIFEST, or checks that an existing one has the same settings."""
  path = os.path.join(out_dir, PAIRS_MANIFEST)
  if exists(path):
    old = json.loads(read_text(path))
    diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
    if diff:
      raise UserError(f"{out_dir} holds reflow pairs made with other settings "
                      f"(setting: (on disk, now)) {diff}; use a new directory or the "
                      "same settings to resume")
    return
  write_json(path, manifest)


def find_pairs_dir(pairs_dir: str, config=None) -> str:
  """The folder of pairs that `pairs_dir` names: itself if it holds pairs_*.npz, else
  the one among its reflow_pairs-<key>/ (and an older reflow_pairs/) whose keyed
  settings have config.reflow's `reflow_settings` and config.sampling.eps (any one of
  them when `config` is None). None or several matching raise UserError naming them."""
  pairs_dir = os.path.expanduser(str(pairs_dir))
  if glob(pairs_dir, "pairs_*.npz"):
    return pairs_dir
  found = sorted(glob(pairs_dir, PAIRS_SUBDIR + "-*"))
  if isdir(os.path.join(pairs_dir, PAIRS_SUBDIR)):
    found.append(os.path.join(pairs_dir, PAIRS_SUBDIR))
  found = [d for d in found if glob(d, "pairs_*.npz")]
  if config is not None:
    want = plain_json({"reflow": reflow_settings(config),
                       "eps": float(config.sampling.get("eps", 1e-3))})

    def matches(d: str) -> bool:
      try:
        have = json.loads(read_text(os.path.join(d, MANIFEST_FILE)))["settings"]
      except (OSError, ValueError, KeyError, TypeError):
        return False  # an older reflow_pairs/ without a key: not this config's
      return all(have.get(k) == v for k, v in want.items())
    found = [d for d in found if matches(d)]
  if not found:
    raise MissingFileError(
        f"no reflow pairs (pairs_*.npz) of this config's config.reflow settings under "
        f"{pairs_dir!r}; create them with main.py --mode reflow_data (the same "
        "config.reflow) on the previous flow's workdir")
  if len(found) > 1:
    raise UserError(f"several folders of reflow pairs under {pairs_dir!r} match this "
                    f"config ({', '.join(os.path.basename(d) for d in found)}: other "
                    "checkpoints or data); set config.training.pairs_dir to one of them")
  return found[0]


def load_pairs(pairs_dir: str, config=None) -> tuple[np.ndarray, np.ndarray]:
  """All (z, x) pairs of `find_pairs_dir(pairs_dir, config)`, concatenated in shard
  order. Raises UserError when shards are missing (an interrupted --mode reflow_data)."""
  pairs_dir = find_pairs_dir(pairs_dir, config)
  files = sorted(glob(pairs_dir, "pairs_*.npz"))
  try:
    m = json.loads(read_text(os.path.join(pairs_dir, PAIRS_MANIFEST)))
    expected = -(-int(m["num_pairs"]) // int(m["shard_size"]))
  except (OSError, ValueError, KeyError, TypeError):
    expected = len(files)
  if len(files) != expected:
    raise UserError(f"{pairs_dir} holds {len(files)} of its {expected} shards of reflow "
                    "pairs; rerun main.py --mode reflow_data with the same settings to "
                    "finish them")
  zs, xs = [], []
  for f in files:
    with load_npz(f) as d:
      zs.append(d["z"])
      xs.append(d["x"])
  return np.concatenate(zs), np.concatenate(xs)


def pairs_source(z: np.ndarray, x: np.ndarray, global_batch_size: int, seed: int = 0, *,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> ArrayBatches:
  """The training data source over coupled pairs: {"x0": x, "z": z} batches (model space)
  in data.iterator's stable, resumable, host-sharded order (`state()` / `restore`)."""
  if z.shape != x.shape:
    raise UserError(f"pairs differ in shape: z {z.shape} vs x {x.shape}")
  return ArrayBatches({"x0": np.asarray(x, np.float32), "z": np.asarray(z, np.float32)},
                      global_batch_size, seed, process_index=process_index,
                      process_count=process_count)


def get_pairs_source(config) -> ArrayBatches:
  """The training data source for a (k+1)-rectified flow: config.training.pairs_dir."""
  z, x = load_pairs(config.training.pairs_dir, config)
  shape = data_lib.get_data_shape(config)
  if z.shape[1:] != shape:
    raise UserError(f"reflow pairs have example shape {z.shape[1:]}, the config expects "
                    f"{shape}")
  return pairs_source(z, x, int(config.training.batch_size), seed=int(config.seed))
