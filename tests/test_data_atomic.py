"""common/atomic.py: the jax-free atomic writes that the data modules (run in grain's and
convert's worker processes) use, and common.io's names that re-export them."""
import ast
import json
import os
import subprocess
import sys

import pytest

from common import atomic, io
from test_imports import REPO, file_imports

# The data modules that write files; with everything of ours they import (file by file),
# none may import jax.
WRITERS = ("common/atomic.py", "data/array_record.py", "data/fingerprint.py")


def _external_imports(rel: str) -> set[str]:
  tree = ast.parse(open(os.path.join(REPO, rel)).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
      out.add(node.module.split(".")[0])
  return out


def test_importing_common_atomic_does_not_import_jax():
  code = "import sys, common.atomic; print(sorted(m for m in sys.modules if m in ('jax', 'numpy', 'etils')))"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_data_writers_reach_no_jax_file_by_file():
  """The files each writer imports (transitively, lazily too) import no jax and not
  common.io; convert imports the writers, not common.io."""
  seen, todo = set(), list(WRITERS)
  while todo:
    rel = todo.pop()
    if rel in seen:
      continue
    seen.add(rel)
    todo += [f for f in file_imports(REPO, rel) if not f.endswith("__init__.py")]
  assert {"common/atomic.py", "data/array_record.py"} <= seen
  assert "common/io.py" not in seen
  bad = {rel for rel in seen if "jax" in _external_imports(rel)}
  assert not bad, bad
  assert "common/io.py" not in file_imports(REPO, "data/convert.py")
  assert "common/atomic.py" in file_imports(REPO, "data/convert.py")


def test_atomic_file_replaces_whole_or_keeps_the_old(tmp_path):
  path = str(tmp_path / "sub" / "a.json")
  atomic.write_json(path, {"a": 1})
  assert json.loads(open(path).read()) == {"a": 1}
  with pytest.raises(RuntimeError):
    with atomic.atomic_file(path, "w") as f:
      f.write('{"a": 2')
      raise RuntimeError("killed")
  assert json.loads(open(path).read()) == {"a": 1}
  assert os.listdir(tmp_path / "sub") == ["a.json"]
  assert atomic.write_bytes(str(tmp_path / "b"), b"xy") == str(tmp_path / "b")
  assert (tmp_path / "b").read_bytes() == b"xy"
  # A writer that opens the file by name: renamed only when its block succeeds.
  target = str(tmp_path / "shard")
  with pytest.raises(RuntimeError):
    with atomic.atomic_path(target) as tmp:
      open(tmp, "wb").write(b"half")
      raise RuntimeError("killed")
  assert sorted(os.listdir(tmp_path)) == ["b", "sub"]
  with atomic.atomic_path(target) as tmp:
    assert os.path.dirname(tmp) == str(tmp_path) and tmp != target
    open(tmp, "wb").write(b"whole")
  assert open(target, "rb").read() == b"whole"
  assert sorted(os.listdir(tmp_path)) == ["b", "shard", "sub"]


def test_common_io_names_are_the_atomic_ones():
  assert io.atomic_file is atomic.atomic_file and io.is_remote is atomic.is_remote
  assert io.is_remote("gs://b/r") and not io.is_remote("/tmp/r") and not io.is_remote(3)
