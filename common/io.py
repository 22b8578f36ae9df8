"""Files that survive a kill: every output is written through `atomic_file` (the old file
or the new one, never half of one), results live in directories keyed by their settings
(`result_dir`), and resumable logs are JSONL files of whole, fsynced lines whose torn last
line `read_records` drops.
"""
from __future__ import annotations

import fnmatch
import glob as _glob
import hashlib
import io as pyio
import json
import os
from typing import IO, Any, Callable

import jax
import numpy as np

from common import lock
# Re-exported: the jax-free atomic writes live in common/atomic.py (data workers use them).
from common.atomic import as_epath as _epath, atomic_file, is_remote  # noqa: F401
from common.errors import UserError

MANIFEST_FILE = "manifest.json"


def join(directory: Any, *names: str) -> str:
  """`directory/names...` as a string: an object-store URL stays a URL, a local path is
  made absolute."""
  if is_remote(directory):
    from etils import epath  # orbax's dependency; imported only for URLs
    return os.fspath(epath.Path(os.fspath(directory)).joinpath(*names))
  return os.path.join(os.path.abspath(os.fspath(directory)), *names)


def _exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def exists(path: Any) -> bool:
  """os.path.exists, or etils.epath's for an object-store URL (`is_remote`)."""
  return _exists(os.fspath(path))


def isdir(path: Any) -> bool:
  """os.path.isdir, or etils.epath's for an object-store URL."""
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: Any) -> bool:
  """os.path.isfile, or etils.epath's for an object-store URL."""
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def read_text(path: Any) -> str:
  """The text of the file (or object) at `path`."""
  if is_remote(path):
    return _epath(path).read_text()
  with open(path) as f:
    return f.read()


def read_bytes(path: Any) -> bytes:
  """The bytes of the file (or object) at `path`."""
  if is_remote(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def listdir(directory: Any) -> list[str]:
  """The names in `directory` (os.listdir, or one level of an object store's listing)."""
  if is_remote(directory):
    return [p.name for p in _epath(directory).iterdir()]
  return os.listdir(directory)


def glob(directory: Any, pattern: str) -> list[str]:
  """The paths in `directory` whose names match the fnmatch `pattern` (glob.glob of
  `directory/pattern`, or one level of an object store's listing; [] if `directory` is
  absent), unsorted."""
  if is_remote(directory):
    if not _exists(os.fspath(directory)):
      return []
    return [join(directory, name) for name in listdir(directory)
            if fnmatch.fnmatchcase(name, pattern)]
  return _glob.glob(os.path.join(directory, pattern))


def makedirs(path: Any) -> None:
  """os.makedirs(path, exist_ok=True), or etils.epath's mkdir for an object-store URL."""
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def load_npz(path: Any, **kwargs: Any) -> Any:
  """np.load(path, **kwargs); an object-store URL is read whole through etils.epath."""
  if is_remote(path):
    return np.load(pyio.BytesIO(read_bytes(path)), **kwargs)
  return np.load(path, **kwargs)


def file_size(path: Any) -> int:
  """The size in bytes of the file (or object) at `path`."""
  return int(_epath(path).stat().length) if is_remote(path) else os.path.getsize(path)


def relative_files(directory: Any) -> list[str]:
  """The files under `directory` (recursively) as sorted '/'-separated relative paths."""
  directory = os.fspath(directory)
  if is_remote(directory):
    out, stack = [], [(_epath(directory), "")]
    while stack:  # object stores' listings are one level at a time (no '**' glob)
      folder, prefix = stack.pop()
      for child in folder.iterdir():
        rel = prefix + child.name
        if child.is_dir():
          stack.append((child, rel + "/"))
        else:
          out.append(rel)
    return sorted(out)
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> str:
  """Writes obj as JSON (atomically; indent=2 unless `dump_kwargs` say otherwise) and a
  final newline; returns path. Only process 0 writes (README "Scaling out")."""
  dump_kwargs.setdefault("indent", 2)
  if jax.process_index() != 0:
    return path
  with atomic_file(path, "w") as f:
    json.dump(obj, f, **dump_kwargs)
    f.write("\n")
  return path


def save_npz(path: str, **arrays: Any) -> str:
  """np.savez of the arrays to `path` (atomically; `path` is used as given, no '.npz'
  appended); returns path. Only process 0 writes."""
  if jax.process_index() != 0:
    return path
  with atomic_file(path, "wb") as f:
    np.savez(f, **arrays)
  return path


# ---------------------------------------------------------------------------------------
# Results keyed by their settings.

def _plain(obj: Any) -> Any:
  """`obj` with ConfigDicts and dicts as plain dicts, tuples as lists, numpy scalars as
  Python numbers: what JSON writes."""
  if isinstance(obj, dict) or hasattr(obj, "to_dict"):
    obj = obj.to_dict() if hasattr(obj, "to_dict") else obj
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def plain_json(obj: Any, sort_keys: bool = False) -> Any:
  """`obj` (ConfigDicts, dicts, lists, tuples, numpy scalars...) as what JSON reads back:
  plain dicts, lists, numbers and strings (other values written with str); dict keys
  sorted with sort_keys=True."""
  return json.loads(json.dumps(_plain(obj), sort_keys=sort_keys, default=str))


def settings_key(settings: dict) -> str:
  """A short stable hash (12 hex digits of sha256) of `settings`' canonical JSON (keys
  sorted; values that JSON lacks written with str)."""
  text = json.dumps(_plain(settings), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


# Functions (workdir, kind, settings) -> dict of further key entries: what a result
# depends on beyond the settings its mode lists, registered by the packages that know
# it (training/checkpoint.py: the restored checkpoint's contents and the data files').
_KEY_SOURCES: list[Callable[[str, str, dict], dict]] = []


def add_key_source(source: Callable[[str, str, dict], dict]) -> None:
  """Registers `source(workdir, kind, settings) -> {name: value}`, whose entries join
  every result's settings (and so its key and manifest)."""
  if source not in _KEY_SOURCES:
    _KEY_SOURCES.append(source)


def keyed_settings(workdir: str, kind: str, settings: dict) -> dict:
  """`settings` (as plain JSON values) with the registered key sources' entries."""
  plain = _plain(settings)
  for source in _KEY_SOURCES:
    plain = {**plain, **_plain(source(workdir, kind, plain))}
  return plain


def result_path(workdir: str, kind: str, settings: dict) -> str:
  """`workdir/<kind>-<settings_key(keyed_settings(...))>`: where `result_dir` puts that
  result (nothing is created)."""
  key = settings_key(keyed_settings(workdir, kind, settings))
  return join(workdir, f"{kind}-{key}")


def result_dir(workdir: str, kind: str, settings: dict, *,
               manifest_extra: dict | None = None) -> str:
  """The directory of one result, `result_path(workdir, kind, settings)`, created with a
  manifest.json holding {"kind", "settings"} and the entries of `manifest_extra`
  (recorded and compared, not hashed: e.g. the local path of an input whose sha256 is
  in `settings`).

  `settings` must hold every setting that affects the result (checkpoint step, sampler,
  counts, tolerances, keys' seed...): other settings give another directory, so a rerun
  with other settings makes a new result and never reuses or overwrites another's, while
  a rerun with the same settings finds its own directory and resumes. An existing
  manifest that differs (a hash collision, a changed `manifest_extra`, or a file edited
  by hand) raises UserError.
  """
  plain = keyed_settings(workdir, kind, settings)
  path = join(workdir, f"{kind}-{settings_key(plain)}")
  # One writer per result (common/lock.py), held until the mode ends: another run
  # writing the same result stops with exit code 2; other results proceed side by side.
  # flock is local only: results on an object store are not locked.
  lock.acquire(path, f"a {kind} result",
               enabled=jax.process_index() == 0 and not is_remote(path))
  manifest = join(path, MANIFEST_FILE)
  want = plain_json({**(manifest_extra or {}), "kind": kind, "settings": plain},
                    sort_keys=True)
  if _exists(manifest):
    try:
      with (_epath(manifest).open() if is_remote(manifest) else open(manifest)) as f:
        have = json.load(f)
    except ValueError as e:
      raise UserError(f"{manifest} is unreadable ({e}); move {path} away to start "
                      "this result over") from None
    if have != want:
      raise UserError(f"{path} holds a result with other settings than this run's "
                      f"(see {manifest}); move it away to start this result over")
    return path
  if jax.process_index() == 0:
    write_json(manifest, want)
  return path


# ---------------------------------------------------------------------------------------
# Content hashes and append-only JSONL logs.
#
#     records = read_records(path, key="batch")     # {index: record}, complete lines
#     with open(path, "a") as f:
#       append_record(f, {"batch": i, ...})         # one whole line, fsynced
#
# A kill can only leave a partial last line (each line is written whole, then flushed
# and fsynced before the next); `read_records` drops it and truncates it from the file,
# so that appends start on a fresh line. A malformed complete line means the file was
# damaged otherwise and raises UserError naming the file and line.

def file_sha256(path: str, block: int = 1 << 20) -> str:
  """Hex sha256 of the bytes of the file at `path`, read in blocks."""
  h = hashlib.sha256()
  with (_epath(path).open("rb") if is_remote(path) else open(path, "rb")) as f:
    for chunk in iter(lambda: f.read(block), b""):
      h.update(chunk)
  return h.hexdigest()


def read_records(path: str, key: str, *, truncate_partial: bool = True,
                 what: str = "record") -> dict[int, dict]:
  """The complete JSON records of a JSONL log by their integer field `key` ({} if the
  file does not exist); see the section comment for partial and malformed lines."""
  if not _exists(path):
    return {}
  if is_remote(path):
    raw = _epath(path).read_bytes()
  else:
    with open(path, "rb") as f:
      raw = f.read()
  complete = raw[:raw.rfind(b"\n") + 1]
  if truncate_partial and len(complete) < len(raw) and is_remote(path):
    _epath(path).write_bytes(complete)
  elif truncate_partial and len(complete) < len(raw):
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
  """Appends `record` as one JSON line to the open text file `f`, flushed and fsynced
  (only on process 0: one copy of each record however many processes run)."""
  if jax.process_index() != 0:
    return
  f.write(json.dumps(record) + "\n")
  f.flush()
  os.fsync(f.fileno())


def append_record_to(path: str, record: dict) -> None:
  """Opens the JSONL file `path` for appending (creating it) and `append_record`s. An
  object (`is_remote`) cannot be appended to: it is rewritten whole with the new line."""
  if is_remote(path):
    if jax.process_index() == 0:
      old = _epath(path).read_text() if _exists(path) else ""
      with atomic_file(path, "w") as f:
        f.write(old + json.dumps(record) + "\n")
    return
  with open(path, "a") as f:
    append_record(f, record)
