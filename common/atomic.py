"""Atomic writes without jax (the data pipeline's worker processes use them): a file is the
old one or the new one, never half of one; local files go through a temporary beside the
target, fsync and rename, object-store URLs are written in one piece."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def is_remote(path: Any) -> bool:
  """Whether `path` is a URL of an object store (`gs://bucket/run`, `s3://...`): read and
  written through etils.epath, never through os.path (`os.path.abspath` would turn it
  into `./gs:/bucket/run`)."""
  return "://" in os.fspath(path) if isinstance(path, (str, os.PathLike)) else False


def as_epath(path: Any):
  """etils.epath.Path of `path` (imported here only: object-store URLs need it)."""
  from etils import epath
  return epath.Path(os.fspath(path))


def fsync_dir(directory: str) -> None:
  """fsync of a directory, so that a rename or new file in it survives a power loss
  (a no-op where directories cannot be opened, e.g. Windows)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def _object_file(path: str, mode: str) -> Iterator[Any]:
  # Object stores have no atomic rename, but a single object's write is atomic (it
  # appears whole when its upload completes): the block writes to memory and the object
  # is written in one call only when the block ends without an exception.
  buffer = io.StringIO() if "b" not in mode else io.BytesIO()
  yield buffer
  target = as_epath(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(buffer, io.BytesIO):
    target.write_bytes(buffer.getvalue())
  else:
    target.write_text(buffer.getvalue())


def _temporary_beside(path: str) -> tuple[int, str, str]:
  """(fd, temporary path, directory) of a new unique file beside `path`; the directory
  is created."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".",
                             suffix=".tmp")
  return fd, tmp, directory


@contextlib.contextmanager
def atomic_file(path: Any, mode: str = "wb") -> Iterator[Any]:
  """Opens a temporary file beside `path` for writing; when the block ends without an
  exception the file is flushed, fsynced and renamed over `path` (atomic on POSIX) and
  the directory fsynced, otherwise the temporary is removed. Creates the parent
  directory. An object-store URL (`is_remote`) is written in one piece instead, when
  the block ends without an exception (docs/ARCHITECTURE.md, "Atomic writes")."""
  path = os.fspath(path)
  if is_remote(path):
    with _object_file(path, mode) as f:
      yield f
    return
  fd, tmp, directory = _temporary_beside(path)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  fsync_dir(directory)


@contextlib.contextmanager
def atomic_path(path: Any) -> Iterator[str]:
  """For writers that open a file by name themselves (array_record's C++ writer): yields
  a temporary path beside `path` (empty file); when the block ends without an exception
  the file there is fsynced and renamed over `path` and the directory fsynced, otherwise
  it is removed. For an object-store URL the block writes a local temporary, which is
  then uploaded in one piece."""
  path = os.fspath(path)
  if is_remote(path):
    folder = tempfile.mkdtemp(prefix="atomic_")
    try:
      local = os.path.join(folder, os.path.basename(path))
      yield local
      with open(local, "rb") as src, atomic_file(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    finally:
      shutil.rmtree(folder, ignore_errors=True)
    return
  fd, tmp, directory = _temporary_beside(path)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  fsync_dir(directory)


def write_bytes(path: Any, data: bytes) -> str:
  """Writes `data` to `path` atomically (`atomic_file`); returns path."""
  with atomic_file(path, "wb") as f:
    f.write(data)
  return os.fspath(path)


def write_text(path: Any, text: str) -> str:
  """Writes `text` to `path` atomically (`atomic_file`); returns path."""
  with atomic_file(path, "w") as f:
    f.write(text)
  return os.fspath(path)


def write_json(path: Any, obj: Any, **dump_kwargs: Any) -> str:
  """Writes obj as JSON and a final newline to `path` atomically (indent=2 unless
  `dump_kwargs` say otherwise); returns path. Every caller writes (no process rule:
  common.io.write_json is the process-0-only form)."""
  dump_kwargs.setdefault("indent", 2)
  with atomic_file(path, "w") as f:
    json.dump(obj, f, **dump_kwargs)
    f.write("\n")
  return os.fspath(path)
