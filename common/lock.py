"""One writer per directory: an exclusive advisory lock (fcntl.flock) on a `.lock` file in
it, which the operating system releases when the holding process ends, so a run killed
with SIGKILL leaves no stale lock. The file records the holder (host, pid, start time)
for the message a second writer gets. flock is local: a directory on an object store
(`gs://...`) is not locked (docs/ARCHITECTURE.md, "Object stores")."""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from typing import Iterator

from common.errors import UserError

LOCK_FILE = ".lock"


class LockedError(UserError):
  """Another process holds the lock of a directory this run would write."""


class _Held:
  """One lock this process holds: the open file and how many holders share it."""

  def __init__(self, fd: int, path: str):
    self.fd, self.path, self.count = fd, path, 1


# lock file path -> _Held. flock belongs to an open file description, so a second open
# of the same file in this process would conflict with the first: take it once, count.
_held: dict[str, _Held] = {}
# Locks taken by acquire() inside each open scope(), innermost last.
_scopes: list[list[str]] = []


def _is_remote(directory) -> bool:
  # An object-store URL (common.io.is_remote; not imported: common.io imports this).
  return "://" in os.fspath(directory)


def lock_path(directory: str) -> str:
  if _is_remote(directory):
    return os.fspath(directory).rstrip("/") + "/" + LOCK_FILE
  return os.path.join(os.path.realpath(os.fspath(directory)), LOCK_FILE)


def holder(directory: str) -> dict | None:
  """The holder recorded in directory/.lock ({"host", "pid", "since", "what"}), or None
  when the file is absent or holds no record."""
  if _is_remote(directory):
    return None
  try:
    with open(lock_path(directory)) as f:
      text = f.read()
    return json.loads(text) if text.strip() else None
  except (OSError, ValueError):
    return None


def _describe(record: dict | None) -> str:
  if not record:
    return "another process (it is starting: no holder recorded yet)"
  since = record.get("since")
  when = (datetime.datetime.fromtimestamp(since).isoformat(sep=" ", timespec="seconds")
          if isinstance(since, (int, float)) else "?")
  return (f"{record.get('what', 'a run')} on host {record.get('host', '?')}, pid "
          f"{record.get('pid', '?')}, since {when}")


def _take(directory: str, what: str) -> str:
  path = lock_path(directory)
  held = _held.get(path)
  if held is not None:
    held.count += 1
    return path
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f"cannot create the lock file {path}: "
                    f"{e.strerror or e.__class__.__name__}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise
    record = holder(directory)
    if not record:  # the holder took the lock but has not written its record yet
      time.sleep(0.2)
      record = holder(directory)
    raise LockedError(f"{os.path.dirname(path)} is being written by {_describe(record)} "
                      f"(lock file {path}); wait for it to finish, or use another "
                      "directory") from None
  record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
            "what": what}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
  _held[path] = _Held(fd, path)
  return path


def _drop(path: str) -> None:
  held = _held.get(path)
  if held is None:
    return
  held.count -= 1
  if held.count > 0:
    return
  del _held[path]
  try:
    os.ftruncate(held.fd, 0)  # while still locked: nobody reads a half-cleared record
  finally:
    fcntl.flock(held.fd, fcntl.LOCK_UN)
    os.close(held.fd)


@contextlib.contextmanager
def hold(directory: str, what: str = "a run", enabled: bool = True) -> Iterator[str]:
  """Holds the exclusive lock of `directory` (created if needed) for the block; yields
  the lock file's path. Raises LockedError (a UserError: one line, exit code 2) at once,
  naming the holder, when another process holds it. Re-entrant within one process.
  enabled=False holds nothing (the non-zero processes of a multi-process run, whose
  process 0 holds the lock for all of them), as does a directory on an object store."""
  if not enabled or _is_remote(directory):
    yield lock_path(directory)
    return
  path = _take(directory, what)
  try:
    yield path
  finally:
    _drop(path)


def acquire(directory: str, what: str = "a run", enabled: bool = True) -> str:
  """Takes the lock of `directory` as hold() does, until the innermost open scope()
  ends (without one: until the process ends). For a result folder found deep inside a
  mode, where a with-block would not fit."""
  path = lock_path(directory)
  if not enabled or _is_remote(directory):
    return path
  _take(directory, what)
  if _scopes:
    _scopes[-1].append(path)
  return path


@contextlib.contextmanager
def scope() -> Iterator[None]:
  """Releases, when the block ends, every lock acquire() took inside it (main.py wraps
  each mode in one)."""
  _scopes.append([])
  try:
    yield
  finally:
    for path in reversed(_scopes.pop()):
      _drop(path)


def is_held(directory: str) -> bool:
  """Whether this process holds the lock of `directory`."""
  return lock_path(directory) in _held
