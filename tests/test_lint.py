"""The tree passes `ruff check` with the rules in pyproject.toml (pyflakes, pycodestyle
errors, bugbear). ruff comes with the dev extra that `make test` installs."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff() -> str | None:
  beside = os.path.join(os.path.dirname(sys.executable), "ruff")
  return beside if os.path.exists(beside) else shutil.which("ruff")


def test_ruff_check_passes():
  ruff = _ruff()
  if ruff is None:
    pytest.skip("ruff is not installed (pip install -e '.[dev]')")
  proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
