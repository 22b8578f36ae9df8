"""Input pipeline benchmark: host memory against data size, and loader throughput.

    python -m bench.data_pipeline                  # both parts (~2.7 GB of temporary shards)
    python -m bench.data_pipeline --part rss --sizes 10000 200000
    python -m bench.data_pipeline --part throughput --workers 1 2

rss: synthetic 64x64x3 uint8 images written as ArrayRecord shards (data/array_record.py),
then, in a fresh process per size, `--rss_batches` batches of 128 read through the grain
pipeline (data/grain_pipeline.py, 2 workers, flips); the peak of the summed resident set
of that process and its workers, sampled every 20 ms. The in-memory iterator would hold
N * 12,288 bytes more.
throughput: the loader alone (no training step) at 32x32 and 256x256 (--image_sizes), raw
uint8 records, flips on and no dequantization (the configs' default; --dequantize adds
it), images/s over `--seconds` after the first batches (worker start-up excluded), for
each worker count and for the in-memory iterator (data/iterator.py) over the same
images, with the CPU ms per image of the process and its workers and the load average.
All files go under --tmp (default: a new temporary folder) and are deleted at the end;
results print as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from data import array_record, grain_pipeline, iterator


def write_synthetic(directory: str, n: int, size: int, per_shard: int = 20000,
                    seed: int = 0) -> None:
  """n random uint8 (size, size, 3) images with labels in ArrayRecord shards + sidecar."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  num = -(-n // per_shard)
  shards = []
  for k in range(num):
    a, b = k * n // num, (k + 1) * n // num
    images = rng.integers(0, 256, (b - a, size, size, 3), dtype=np.uint8)
    name = array_record.shard_name("train", k, num)
    path = os.path.join(directory, name)
    count = array_record.write_shard(path, zip(images, np.zeros(b - a, np.int32)))
    shards.append((name, count, os.path.getsize(path)))
  array_record.write_metadata(directory, array_record.Metadata(
      split="train", image_size=(size, size), channels=3, count=n, shards=tuple(shards),
      source={"dataset": "synthetic", "fingerprint": f"synthetic-{n}-{size}-{seed}"}))


def _tree_rss(pid: int) -> int:
  """Resident bytes of pid and all its descendants (Linux /proc)."""
  total, stack = 0, [pid]
  while stack:
    p = stack.pop()
    try:
      with open(f"/proc/{p}/statm") as f:
        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
      for tid in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{tid}/children") as f:
          stack += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      pass
  return total


def rss_child(directory: str, batches: int, workers: int) -> dict:
  """Runs in a fresh process: iterates the pipeline, returns the peak tree RSS."""
  peak = [0]
  stop = threading.Event()

  def sample():
    while not stop.is_set():
      peak[0] = max(peak[0], _tree_rss(os.getpid()))
      time.sleep(0.02)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  source = array_record.ArrayRecordImages(directory)
  t0 = time.time()
  with grain_pipeline.GrainBatches(source, 128, 0, random_flip=True, shard_index=0,
                                   shard_count=1, num_workers=workers) as it:
    for _ in range(batches):
      next(it)
  stop.set()
  thread.join()
  return {"n": len(source), "peak_rss_mb": peak[0] / 2**20, "batches": batches,
          "workers": workers, "seconds": time.time() - t0}


def _tree_pids(pid: int) -> list[int]:
  """pid and all its descendants (Linux /proc)."""
  out, stack = [], [pid]
  while stack:
    p = stack.pop()
    out.append(p)
    try:
      for tid in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{tid}/children") as f:
          stack += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      pass
  return out


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
  """User + system CPU seconds of each live pid (Linux /proc)."""
  out, tick = {}, os.sysconf("SC_CLK_TCK")
  for p in pids:
    try:
      with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      out[p] = (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, IndexError):
      pass
  return out


def _in_memory_images(directory: str) -> np.ndarray:
  source = array_record.ArrayRecordImages(directory)
  return source.read(np.arange(len(source)))[0]


def throughput(directory: str, workers: int | None, batch: int, seconds: float,
               dequantize: bool = False) -> dict:
  """images/s of the grain pipeline with `workers` (None: the in-memory iterator), and
  the CPU milliseconds per image of this process and its workers together (less
  sensitive than the rate to other load on a shared machine), with the load average."""
  kw = dict(random_flip=True, uniform_dequantization=dequantize)
  if workers is None:
    it = iterator.BatchIterator(_in_memory_images(directory), batch, 0, process_index=0,
                                process_count=1, **kw)
  else:
    it = grain_pipeline.GrainBatches(array_record.ArrayRecordImages(directory), batch, 0,
                                     shard_index=0, shard_count=1, num_workers=workers, **kw)
  for _ in range(1 + (workers or 0) * 2):  # start-up (workers, first reads) not timed
    next(it)
  pids = _tree_pids(os.getpid())
  cpu0 = _cpu_seconds(pids)
  n, t0 = 0, time.time()
  while time.time() - t0 < seconds:
    next(it)
    n += batch
  elapsed = time.time() - t0
  cpu1 = _cpu_seconds(pids)
  rate = n / elapsed
  if workers is not None:
    it.close()
  cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
  return {"loader": "in-memory" if workers is None else f"grain, {workers} worker(s)",
          "images_per_s": rate, "batch": batch, "dequantize": dequantize,
          "cpu_ms_per_image": 1e3 * cpu / max(n, 1),
          "loadavg_1min": os.getloadavg()[0]}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--part", choices=("rss", "throughput", "all"), default="all")
  p.add_argument("--sizes", type=int, nargs="+", default=[10000, 200000])
  p.add_argument("--rss_batches", type=int, default=300)
  p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  p.add_argument("--seconds", type=float, default=20.0)
  p.add_argument("--image_sizes", type=int, nargs="+", default=[32, 256],
                 help="throughput: image sizes (32: 50,000 images, batch 128; others: "
                      "4,000 images, batch 32)")
  p.add_argument("--dequantize", action="store_true",
                 help="throughput: with uniform dequantization (off in the configs)")
  p.add_argument("--tmp", default=None)
  p.add_argument("--_rss_child", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._rss_child:
    print(json.dumps(rss_child(args._rss_child[0], int(args._rss_child[1]),
                               int(args._rss_child[2]))))
    return
  root = args.tmp or tempfile.mkdtemp(prefix="bench_data_pipeline_")
  try:
    if args.part in ("rss", "all"):
      for n in args.sizes:
        d = os.path.join(root, f"rss_{n}")
        t = time.time()
        write_synthetic(d, n, 64)
        written = time.time() - t
        out = subprocess.run([sys.executable, "-m", "bench.data_pipeline", "--_rss_child",
                              d, str(args.rss_batches), "2"],
                             capture_output=True, text=True, check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        record.update(part="rss", image_size=64, write_seconds=written,
                      disk_mb=sum(os.path.getsize(os.path.join(d, f))
                                  for f in os.listdir(d)) / 2**20)
        print(json.dumps(record), flush=True)
        shutil.rmtree(d)
    if args.part in ("throughput", "all"):
      for size in args.image_sizes:
        n, batch = (50000, 128) if size <= 32 else (4000, 32)
        d = os.path.join(root, f"tp_{size}")
        write_synthetic(d, n, size)
        for workers in [None] + list(args.workers):
          record = throughput(d, workers, batch, args.seconds, args.dequantize)
          record.update(part="throughput", image_size=size, n=n)
          print(json.dumps(record), flush=True)
        shutil.rmtree(d)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
