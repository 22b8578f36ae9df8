"""Bits/dim over a data set, batch by batch, resumable after an interruption: `run_bpd_eval`
appends one JSON line per finished batch and writes a summary at the end, and a rerun
computes only the batches the file does not hold yet.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

import jax
import numpy as np
from common.progress import progress as tqdm  # a bar on a terminal, else log lines

from common.errors import UserError
from common.io import append_record_to, is_remote, read_records, write_json
from common.mesh import to_host

BATCHES_FILE = "bpd_batches.jsonl"
SUMMARY_FILE = "bpd_summary.json"


def read_batch_records(path: str, truncate_partial: bool = False) -> dict[int, dict]:
  """The complete records of a bpd JSONL file, by batch index ({} if it does not exist).

  A last line without its newline is a write cut short by a kill: it is ignored, and with
  truncate_partial=True removed from the file so that appends start on a fresh line. A
  malformed complete line means the file is corrupt and raises sde_lib.UserError.
  """
  return read_records(path, "batch", truncate_partial=truncate_partial,
                      what="bpd batch record")


def summarize(records: Iterable[dict], metric: str = "bpd") -> dict:
  """Mean of the per-example `metric` (bits/dim, or "nll" in nats) and its standard
  error over examples, n, and mean NFE over batches."""
  records = sorted(records, key=lambda r: int(r["batch"]))
  if not records:
    return {f"mean_{metric}": float("nan"), f"stderr_{metric}": float("nan"), "n": 0,
            "num_batches": 0, "mean_nfe": float("nan")}
  bpd = np.concatenate([np.asarray(r[metric], np.float64) for r in records])
  stderr = float(np.std(bpd, ddof=1) / np.sqrt(bpd.size)) if bpd.size > 1 else float("nan")
  return {f"mean_{metric}": float(np.mean(bpd)), f"stderr_{metric}": stderr,
          "n": int(bpd.size), "num_batches": len(records),
          "mean_nfe": float(np.mean([float(r["nfe"]) for r in records]))}


def run_bpd_eval(likelihood_fn: Callable, model_fn: Callable,
                 batches: Iterable[tuple[int, jax.Array]], out_dir: str, key: jax.Array,
                 num_batches: int | None = None, metric: str = "bpd") -> dict:
  """Bits/dim of every batch, appended to out_dir/bpd_batches.jsonl; returns the summary.

  Args:
    likelihood_fn: `fn(key, model_fn, x) -> (bpd (B,), z, nfe)`, as from
      solvers.likelihood.get_likelihood_fn.
    model_fn: the native model function passed to likelihood_fn.
    batches: yields (batch_index, x) with x of shape (B, ...) in model space; indices must
      identify batches across runs (the same index, the same data).
    out_dir: created if missing; holds the JSONL and the summary (see Files
      below).
    key: batch i uses jax.random.fold_in(key, i).
    num_batches: consider only the first num_batches items of `batches` (all if None).
    metric: the name of likelihood_fn's per-example value in the records and summary:
      "bpd" (bits/dim) or "nll" (nats, continuous data).

  Returns:
    The summary over the batches seen in this run (computed now or read from an earlier
    run): mean_bpd and stderr_bpd (bits/dim, over examples), n (examples), num_batches,
    mean_nfe (per batch).

  Files. One JSON line per finished batch in `<out_dir>/bpd_batches.jsonl`:

      {"batch": i, "n": B, "mean_bpd": ..., "nfe": ..., "bpd": [B per-example values]}

  and at the end `<out_dir>/bpd_summary.json`:

      {"mean_bpd": ..., "stderr_bpd": ..., "n": ..., "num_batches": ..., "mean_nfe": ...}

  (with metric="nll", as for continuous toy data in nats, the fields are "nll", "mean_nll",
  "stderr_nll" instead), where mean and standard error (sample std with ddof=1 over
  sqrt(n)) are over examples, and mean_nfe over batches.

  Resuming. Batch i is evaluated with key fold_in(key, i), so its result does not depend on
  which batches ran before it or on where a previous run was stopped. A rerun reads the
  JSONL, skips the batches it already holds, and computes only the rest: the summary then
  equals an uninterrupted run's (records are aggregated in batch order).

  Durability: each line is written whole, then flushed and fsynced before the next batch,
  so a kill can only leave a partial last line, which a rerun drops (truncates) and
  recomputes. The summary is written atomically (common.io.write_json).
  """
  if not is_remote(out_dir):  # an object store has no folders to make
    os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, BATCHES_FILE)
  done = read_batch_records(path, truncate_partial=True)
  if done:
    # Reused only under this result's key: the same checkpoint contents, data and
    # settings (common.io.result_dir).
    total = "" if num_batches is None else f" of {num_batches}"
    print(f"resumed {len(done)}{total} batches from {path}")
  seen: dict[int, dict] = {}
  running_sum, running_n = 0.0, 0
  progress = tqdm(total=num_batches, desc=metric, unit="batch")
  try:
    for count, (index, x) in enumerate(batches):
      if num_batches is not None and count >= num_batches:
        break
      index = int(index)
      if index in seen:
        raise ValueError(f"batch index {index} occurs twice in `batches`")
      if index not in done:
        bpd, _, nfe = likelihood_fn(jax.random.fold_in(key, index), model_fn, x)
        # to_host: with several processes the values are split over all of them.
        bpd, nfe = to_host((bpd, nfe))
        bpd = np.asarray(bpd, np.float64).reshape(-1)
        record = {"batch": index, "n": int(bpd.size),
                  f"mean_{metric}": float(np.mean(bpd)),
                  "nfe": int(np.asarray(nfe)), metric: [float(b) for b in bpd]}
        append_record_to(path, record)  # flushed and fsynced; an object rewritten whole
        done[index] = record
      seen[index] = done[index]
      running_sum += float(np.sum(done[index][metric]))
      running_n += int(done[index]["n"])
      progress.update(1)
      progress.set_postfix({metric: f"{running_sum / max(running_n, 1):.4f}"},
                           refresh=False)
  finally:
    progress.close()
  if not seen:
    # A summary is never replaced by an empty one (a rerun that found no batches must not erase the numbers of an earlier one).
    raise UserError(f"no batch to evaluate for {out_dir}: the evaluation set is empty")
  summary = summarize(seen.values(), metric)
  write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
  return summary
