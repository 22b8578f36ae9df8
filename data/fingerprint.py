"""Cheap, stable fingerprints of data on disk: file sizes plus content hashes (sha256), cached
by path, size and modification time so that a repeated call costs one stat per file.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from common import atomic

CACHE_ENV = "SCORE_FLOW_JAX_CACHE"
_CHUNK = 1 << 20


def digest(data: bytes) -> str:
  """The short fingerprint form: the first 16 hex digits of sha256."""
  return hashlib.sha256(data).hexdigest()[:16]


def cache_file() -> str:
  root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                   "score_flow_jax")
  return os.path.join(root, "fingerprints.json")


def _load_cache() -> dict:
  try:
    with open(cache_file()) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _save_cache(cache: dict) -> None:
  try:
    atomic.write_json(cache_file(), cache, indent=None)
  except OSError:
    pass  # a read-only home: fingerprints are recomputed next time


def file_hash(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def files_fingerprint(paths: Iterable[str], root: str | None = None) -> str:
  """Fingerprint of an ordered list of files: sha256 over each file's name (relative to
  `root`, else its base name), size and content hash. Independent of where the data sit
  and of the cache; changes when any byte, name or the order changes.

  Every file's content is hashed once (sha256) and the result kept in a cache keyed by the
  file's absolute path, size and modification time, so a second call costs one stat per
  file. The cache lives in $SCORE_FLOW_JAX_CACHE or ~/.cache/score_flow_jax
  (fingerprints.json); a deleted cache only costs a recomputation.
  """
  cache, dirty = _load_cache(), False
  h = hashlib.sha256()
  for path in paths:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    content = cache.get(key)
    if content is None:
      content, dirty = file_hash(path), True
      cache[key] = content
    name = os.path.relpath(path, root) if root else os.path.basename(path)
    h.update(f"{name}\0{st.st_size}\0{content}\n".encode())
  if dirty:
    _save_cache(cache)
  return h.hexdigest()[:16]
