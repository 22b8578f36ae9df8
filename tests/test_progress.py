"""Progress output a person can read: when stderr is not a terminal, plain lines with the
count, rate and ETA (no carriage returns)."""
import io

from common import progress


def test_plain_lines_with_rate_and_eta_when_not_a_terminal():
  out = io.StringIO()
  bar = progress.progress(total=4, desc="bpd", unit="batch", file=out, every=0.0)
  assert isinstance(bar, progress.PlainProgress)  # StringIO is not a terminal
  for _ in range(4):
    bar.update(1)
  bar.set_postfix({"bpd": "3.1"})
  bar.close()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue() and len(lines) == 5
  assert lines[0].startswith("bpd: 1/4 batch (25%), ") and "batch/s, ETA 0:00:" in lines[0]
  assert lines[-1].startswith("bpd: 4/4 batch (100%)") and lines[-1].endswith("bpd=3.1")


def test_iterating_and_throttled():
  out = io.StringIO()
  items = list(progress.PlainProgress(range(50), desc="x", file=out, every=3600.0))
  assert items == list(range(50))
  assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]  # only the end
  assert out.getvalue().startswith("x: 50/50 it (100%)")
