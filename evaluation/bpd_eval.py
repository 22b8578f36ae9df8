"""Bits/dim over a data set, batch by batch, resumable after an interruption.

`run_bpd_eval` appends one JSON line per finished batch to `<out_dir>/bpd_batches.jsonl`:

    {"batch": i, "n": B, "mean_bpd": ..., "nfe": ..., "bpd": [B per-example values]}

and at the end writes `<out_dir>/bpd_summary.json`:

    {"mean_bpd": ..., "stderr_bpd": ..., "n": ..., "num_batches": ..., "mean_nfe": ...}

where mean and standard error (sample std with ddof=1 over sqrt(n)) are over examples, and
mean_nfe over batches. Batch i is evaluated with key fold_in(key, i), so its result does not
depend on which batches ran before it or on where a previous run was stopped. A rerun reads
the JSONL, skips the batches it already holds, and computes only the rest: the summary then
equals an uninterrupted run's (records are aggregated in batch order).

Durability: each line is written whole, then flushed and fsynced before the next batch, so a
kill can only leave a partial last line, which a rerun drops (truncates) and recomputes. The
summary is written to a temporary file and renamed over the old one.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import jax
import numpy as np
from tqdm import tqdm

BATCHES_FILE = "bpd_batches.jsonl"
SUMMARY_FILE = "bpd_summary.json"


def read_batch_records(path: str, truncate_partial: bool = False) -> dict[int, dict]:
  """The complete records of a bpd JSONL file, by batch index ({} if it does not exist).

  A last line without its newline is a write cut short by a kill: it is ignored, and with
  truncate_partial=True removed from the file so that appends start on a fresh line. A
  malformed complete line means the file is corrupt and raises ValueError.
  """
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    raw = f.read()
  complete = raw[:raw.rfind(b"\n") + 1]
  if truncate_partial and len(complete) < len(raw):
    with open(path, "r+b") as f:
      f.truncate(len(complete))
      f.flush()
      os.fsync(f.fileno())
  records = {}
  for lineno, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      records[int(record["batch"])] = record
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{lineno} is not a bpd batch record ({e}); the file is "
                       f"corrupt: move it away to start over") from None
  return records


def summarize(records: Iterable[dict]) -> dict:
  """Mean bits/dim and its standard error over examples, n, and mean NFE over batches."""
  records = sorted(records, key=lambda r: int(r["batch"]))
  if not records:
    return {"mean_bpd": float("nan"), "stderr_bpd": float("nan"), "n": 0,
            "num_batches": 0, "mean_nfe": float("nan")}
  bpd = np.concatenate([np.asarray(r["bpd"], np.float64) for r in records])
  stderr = float(np.std(bpd, ddof=1) / np.sqrt(bpd.size)) if bpd.size > 1 else float("nan")
  return {"mean_bpd": float(np.mean(bpd)), "stderr_bpd": stderr, "n": int(bpd.size),
          "num_batches": len(records),
          "mean_nfe": float(np.mean([float(r["nfe"]) for r in records]))}


def _append_line(f, record: dict) -> None:
  f.write(json.dumps(record) + "\n")
  f.flush()
  os.fsync(f.fileno())


def _write_atomic(path: str, obj: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def run_bpd_eval(likelihood_fn: Callable, model_fn: Callable,
                 batches: Iterable[tuple[int, jax.Array]], out_dir: str, key: jax.Array,
                 num_batches: int | None = None) -> dict:
  """Bits/dim of every batch, appended to out_dir/bpd_batches.jsonl; returns the summary.

  Args:
    likelihood_fn: `fn(key, model_fn, x) -> (bpd (B,), z, nfe)`, as from
      solvers.likelihood.get_likelihood_fn.
    model_fn: the native model function passed to likelihood_fn.
    batches: yields (batch_index, x) with x of shape (B, ...) in model space; indices must
      identify batches across runs (the same index, the same data).
    out_dir: created if missing; holds the JSONL and the summary (see the module
      docstring).
    key: batch i uses jax.random.fold_in(key, i).
    num_batches: consider only the first num_batches items of `batches` (all if None).

  Returns:
    The summary over the batches seen in this run (computed now or read from an earlier
    run): mean_bpd and stderr_bpd (bits/dim, over examples), n (examples), num_batches,
    mean_nfe (per batch).
  """
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, BATCHES_FILE)
  done = read_batch_records(path, truncate_partial=True)
  seen: dict[int, dict] = {}
  running_sum, running_n = 0.0, 0
  progress = tqdm(total=num_batches, desc="bpd", unit="batch")
  try:
    with open(path, "a") as f:
      for count, (index, x) in enumerate(batches):
        if num_batches is not None and count >= num_batches:
          break
        index = int(index)
        if index in seen:
          raise ValueError(f"batch index {index} occurs twice in `batches`")
        if index not in done:
          bpd, _, nfe = likelihood_fn(jax.random.fold_in(key, index), model_fn, x)
          bpd = np.asarray(bpd, np.float64).reshape(-1)
          record = {"batch": index, "n": int(bpd.size), "mean_bpd": float(np.mean(bpd)),
                    "nfe": int(np.asarray(nfe)), "bpd": [float(b) for b in bpd]}
          _append_line(f, record)
          done[index] = record
        seen[index] = done[index]
        running_sum += float(np.sum(done[index]["bpd"]))
        running_n += int(done[index]["n"])
        progress.update(1)
        progress.set_postfix(bpd=f"{running_sum / max(running_n, 1):.4f}", refresh=False)
  finally:
    progress.close()
  summary = summarize(seen.values())
  _write_atomic(os.path.join(out_dir, SUMMARY_FILE), summary)
  return summary
