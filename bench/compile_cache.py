"""First-compile time of the training step without and with JAX's persistent compilation
cache (usage and method: `main`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench import common

NAME = "compile_cache"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_train_step(argv: list[str], cache_dir: str, out: str) -> tuple[dict, float]:
  cmd = [sys.executable, "-m", "bench.train_step", *argv, "--compile_only",
         "--cache_dir", cache_dir, "--out", out]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=_REPO, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if not lines:
    raise RuntimeError(f"{' '.join(cmd)} printed no JSON record:\n{proc.stdout[-2000:]}")
  return json.loads(lines[-1]), wall


def _n_entries(cache_dir: str) -> int:
  return sum(len(files) for _, _, files in os.walk(cache_dir))


def parser():
  p = common.base_parser("First compile of the training step, cold and from the "
                         "persistent compilation cache (two fresh processes).")
  p.add_argument("--cache_dir", default=None,
                 help="an empty folder for the cache (default: a temporary folder)")
  return p


def main(argv=None) -> dict:
  """python -m bench.compile_cache --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128 --dtype bfloat16
      python -m bench.compile_cache --config configs/vp/cifar10_ddpmpp_continuous.py --tiny --out /tmp/b

  Runs `python -m bench.train_step --compile_only --cache_dir DIR` twice, each in a fresh
  subprocess, DIR an empty folder (a temporary one unless --cache_dir is given): the
  first run compiles and fills the cache (`cold_compile_s`), the second finds the
  executable there (`cached_compile_s`). Both are trace + lower + compile (or cache load)
  seconds of the training step as bench.train_step measures them; the subprocesses' own
  start-up (imports, state initialisation) is reported separately as wall seconds.
  """
  args = parser().parse_args(argv)
  passed = ["--config", args.config, "--dtype", args.dtype]
  if args.batch is not None:
    passed += ["--batch", str(args.batch)]
  if args.tiny:
    passed.append("--tiny")
  for item in args.set:
    passed += ["--set", item]

  with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
    cache_dir = args.cache_dir or os.path.join(tmp, "cache")
    if os.path.isdir(cache_dir) and os.listdir(cache_dir):
      raise ValueError(f"--cache_dir {cache_dir} is not empty; the first run must be cold")
    os.makedirs(cache_dir, exist_ok=True)
    sub_out = os.path.join(tmp, "records")  # the runs' own records stay out of --out
    cold, cold_wall = _run_train_step(passed, cache_dir, sub_out)
    entries = _n_entries(cache_dir)
    warm, warm_wall = _run_train_step(passed, cache_dir, sub_out)

  record = {"figure": NAME, "config": cold["config"], "model": cold["model"],
            "dtype": cold["dtype"], "batch": cold["batch"], "tiny": cold["tiny"],
            "overrides": cold["overrides"], "n_jitted_steps": cold["n_jitted_steps"],
            "cold_compile_s": cold["first_compile_s"],
            "cached_compile_s": warm["first_compile_s"],
            "cache_entries_after_first_run": entries,
            "cold_process_wall_s": cold_wall, "cached_process_wall_s": warm_wall}
  record.update({k: cold[k] for k in ("jax", "jaxlib", "flax", "backend", "device_kind",
                                      "n_devices", "date")})
  return common.emit(record, NAME, args.out)


if __name__ == "__main__":
  main(sys.argv[1:])
