"""Shared pieces of the benchmark scripts: flags (`base_parser`), config loading and
shrinking (`load_config`), timing, XLA cost analysis, peak FLOPs, device memory and the
JSON record (`emit`: one line printed and appended to `<out>/<name>.jsonl`)."""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import statistics
import time
from typing import Any, Callable

import jax
import ml_collections

from configs import tiny
from configs.tiny import TINY_BATCH, set_field
from configs.tiny import load as load_config_file

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Dense peak FLOP/s per device by `device.device_kind`, per compute precision.
# "tf32" is what float32 matmuls and convolutions run at under JAX's default precision on
# GPUs with tensor cores; "float32" is the peak with precision="highest".
# H100 SXM5 (NVIDIA H100 Tensor Core GPU datasheet, dense, without sparsity); the H200
# has the same tensor cores and clocks.
_H100_SXM = {"bfloat16": 989e12, "tf32": 494e12, "float32": 67e12}
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 SXM5 80GB": _H100_SXM,
    "NVIDIA H200": _H100_SXM,
}

def base_parser(description: str, default_batch: int = 128) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--config", required=True, help="a python config file (get_config())")
  p.add_argument("--batch", type=int, default=None,
                 help=f"batch size (default {default_batch}; {TINY_BATCH} with --tiny)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype of the network (config.model.dtype)")
  p.add_argument("--tiny", action="store_true",
                 help="shrink the network for a CPU smoke run (configs/tiny.py: nf 8, "
                      "ch_mult (1,), one res block, no attention, 8x8 images; batch 4)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a config field, e.g. --set model.nf=16 (python literal; "
                      "applied after --tiny)")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  p.add_argument("--iters", type=int, default=10, help="timed calls (the median is kept)")
  p.add_argument("--out", default=RESULTS_DIR,
                 help="folder of the .jsonl results (default bench/results)")
  p.set_defaults(default_batch=default_batch)
  return p


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The config of args.config with --tiny, --set, --dtype and --batch applied
  (args.batch is filled in with the batch size used)."""
  config = load_config_file(args.config)
  if args.tiny:
    tiny.shrink(config)
  for item in args.set:
    field, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set wants FIELD=VALUE, got {item!r}")
    set_field(config, field.strip(), _literal(value.strip()))
  config.model.dtype = args.dtype
  if args.batch is None:
    args.batch = TINY_BATCH if args.tiny else args.default_batch
  config.training.batch_size = int(args.batch)
  _import_networks()
  return config


def _import_networks() -> None:
  """Registers the image networks whether or not models/__init__ imports them yet."""
  import models  # noqa: F401
  for name in ("models.ncsnpp", "models.ddpm"):
    try:
      importlib.import_module(name)
    except ImportError:
      pass


def median_seconds(fn: Callable[[], Any], warmup: int, iters: int) -> tuple[float, list]:
  """Median wall time of `fn()` over `iters` calls after `warmup` calls; each call's
  outputs are waited for with jax.block_until_ready. Returns (median, all times)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(1, iters)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def compile_timed(jitted, *args) -> tuple[Any, float]:
  """(compiled executable, seconds of trace + lower + compile) of jitted(*args)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def cost_flops(compiled) -> float | None:
  """FLOPs of one run of a compiled executable by XLA's cost analysis (summed over the
  list some jax versions return), or None if unavailable. Loops count their body once."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 (backends without cost analysis)
    return None
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  flops = [float(a["flops"]) for a in analysis if a and "flops" in a]
  return sum(flops) if flops else None


def peak_flops(device, precision: str) -> float | None:
  """Dense peak FLOP/s of `device` at `precision` ("bfloat16", "tf32", "float32");
  None for a device kind not in PEAK_FLOPS (CPUs included)."""
  return PEAK_FLOPS.get(device.device_kind, {}).get(precision)


def matmul_precision_key(dtype: str, device) -> str:
  """The peak that applies to the network's matmuls: bf16, or TF32 for float32 on a GPU
  at JAX's default precision, or full float32."""
  if dtype == "bfloat16":
    return "bfloat16"
  default = jax.config.jax_default_matmul_precision
  if device.platform == "gpu" and default in (None, "default", "tensorfloat32", "bfloat16_3x"):
    return "tf32"
  return "float32"


def peak_memory_bytes(device) -> int | None:
  """Peak bytes in use on `device` since the process started, where the backend says."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


def environment() -> dict[str, Any]:
  import flax
  import jaxlib
  device = jax.devices()[0]
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "backend": jax.default_backend(), "device_kind": device.device_kind,
          "n_devices": jax.device_count(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def config_summary(args: argparse.Namespace, config) -> dict[str, Any]:
  return {"config": os.path.relpath(args.config) if os.path.exists(args.config)
          else args.config,
          "model": str(config.model.name), "dtype": str(config.model.dtype),
          "batch": int(args.batch), "tiny": bool(args.tiny), "overrides": list(args.set)}


def emit(record: dict[str, Any], name: str, out: str) -> dict[str, Any]:
  """Prints `record` as one JSON line and appends it to `<out>/<name>.jsonl`."""
  line = json.dumps(record, sort_keys=False)
  print(line, flush=True)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.jsonl"), "a") as f:
    f.write(line + "\n")
  return record


def init_cache(cache_dir: str | None) -> None:
  """Turns on JAX's persistent compilation cache in `cache_dir` for every executable."""
  if not cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
