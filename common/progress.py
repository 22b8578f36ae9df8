"""Progress a person can read: a tqdm bar when stderr is a terminal; otherwise (a log file,
a pipe) one plain line every `every` seconds with the count, rate and ETA, instead of a
bar's carriage returns joined into one long line."""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Iterable

EVERY_SECONDS = 30.0


def _eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  s = int(round(seconds))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class PlainProgress:
  """tqdm's interface (iteration, update, set_postfix, close, context manager) writing
  `desc: n/total unit (pct), rate unit/s, ETA h:mm:ss` lines to `file` at most every
  `every` seconds, and once at the end."""

  def __init__(self, iterable: Iterable | None = None, desc: str = "",
               total: int | None = None, unit: str = "it", disable: bool = False,
               initial: int = 0, every: float = EVERY_SECONDS, file=None, **_: Any):
    self.iterable = iterable
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
      total = len(iterable)
    self.desc, self.total, self.unit, self.disable = desc, total, unit, disable
    self.n = self.start_n = int(initial)
    self.every, self.file = every, file if file is not None else sys.stderr
    self.postfix = ""
    self.t0 = self.t_last = time.time()
    self.closed = False

  def __iter__(self):
    for item in self.iterable:
      yield item
      self.update(1)
    self.close()

  def __enter__(self) -> PlainProgress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def set_postfix(self, values: dict | None = None, refresh: bool = True, **kw) -> None:
    values = {**(values or {}), **kw}
    self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

  def set_description(self, desc: str, refresh: bool = True) -> None:
    self.desc = desc

  def update(self, n: int = 1) -> None:
    self.n += int(n)
    now = time.time()
    if not self.disable and now - self.t_last >= self.every:
      self._line(now)

  def _line(self, now: float) -> None:
    self.t_last = now
    rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
    if self.total:
      left = (self.total - self.n) / rate if rate > 0 else math.inf
      count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
      eta = f", ETA {_eta(left)}"
    else:
      count, eta = f"{self.n} {self.unit}", ""
    post = f", {self.postfix}" if self.postfix else ""
    print(f"{self.desc}: {count}, {rate:.3g} {self.unit}/s{eta}{post}", file=self.file,
          flush=True)

  def close(self) -> None:
    if not self.closed and not self.disable and self.n > self.start_n:
      self._line(time.time())
    self.closed = True

  def refresh(self) -> None:
    pass


def progress(*args: Any, **kwargs: Any):
  """tqdm(*args, **kwargs) on a terminal, else PlainProgress(*args, **kwargs)."""
  stream = kwargs.get("file") or sys.stderr
  if getattr(stream, "isatty", lambda: False)():
    from tqdm import tqdm
    return tqdm(*args, **kwargs)
  return PlainProgress(*args, **kwargs)
