"""Durable files of a run: content hashes and append-only JSONL logs that survive a kill.

One implementation for every resumable result (bits/dim batches, sample-quality chunks):

    digest = file_sha256(path)                            # hex sha256 of a file's bytes
    records = read_records(path, key="batch")             # {index: record}, complete lines
    with open(path, "a") as f:
      append_record(f, {"batch": i, ...})                 # one whole line, fsynced

A kill can only leave a partial last line (a line is written whole, then flushed and
fsynced before the next); `read_records` drops it (and truncates it from the file, so that
appends start on a fresh line), while a malformed complete line means the file was damaged
otherwise and raises UserError naming the file and line.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import IO

from common.errors import UserError


def file_sha256(path: str, block: int = 1 << 20) -> str:
  """Hex sha256 of the bytes of the file at `path`, read in blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(block), b""):
      h.update(chunk)
  return h.hexdigest()


def read_records(path: str, key: str, *, truncate_partial: bool = True,
                 what: str = "record") -> dict[int, dict]:
  """The complete JSON records of a JSONL log by their integer field `key` ({} if the
  file does not exist). See the module docstring for partial and malformed lines."""
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
  for lineno, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(),
                                start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      records[int(record[key])] = record
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}:{lineno} is not a {what} ({e}); the file is corrupt: move "
                      f"its directory away to start over") from None
  return records


def append_record(f: IO[str], record: dict) -> None:
  """Appends `record` as one JSON line to the open text file `f`, flushed and fsynced."""
  f.write(json.dumps(record) + "\n")
  f.flush()
  os.fsync(f.fileno())
