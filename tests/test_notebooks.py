"""The notebooks run top to bottom (small mode) and write their pictures; the committed
notebooks carry no outputs.

Each notebook is executed by nbclient in a kernel of this interpreter (sys.executable: a
kernelspec named python3 written to a temporary JUPYTER_PATH, which takes precedence over
any user-installed one), with cwd the repository root, NOTEBOOK_SMALL=1 and NOTEBOOK_OUT a
temporary directory.
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")

# notebook -> the PNG files it must write.
EXPECTED = {
    "sde_trajectories.ipynb": [f"{s}_{kind}.png" for s in ("vp", "subvp", "ve")
                               for kind in ("forward", "reverse_vs_flow", "marginals")]
                              + ["vp_fast_vs_adaptive.png"],
    "rectified_flow.ipynb": ["rf_paths.png", "rf_samples_1-rf.png", "rf_samples_2-rf.png",
                             "rf_steps_vs_sw.png"],
    "likelihood.ipynb": ["density.png", "flow_map.png", "flow_map_endpoints.png"],
    "images.ipynb": ["digits_pc_trajectory.png", "digits_ode_trajectory.png",
                     "digits_inpainting.png", "toy_guidance.png"],
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT_PER_CELL = 600


def _kernelspec_dir(tmp_path) -> str:
  """A JUPYTER_PATH whose python3 kernel is this interpreter."""
  spec = tmp_path / "jupyter" / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (tests)", "language": "python"}))
  return str(tmp_path / "jupyter")


def test_every_notebook_is_tested():
  assert sorted(f for f in os.listdir(NB_DIR) if f.endswith(".ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebook_has_no_outputs(name):
  nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, f"{name} has no code cells"
  for i, cell in enumerate(code):
    assert cell.outputs == [], f"{name}: code cell {i} has outputs; clear them"
    assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
  # The first code cell holds the parameters (papermill's tag) and reads NOTEBOOK_SMALL.
  assert "parameters" in code[0].metadata.get("tags", [])
  assert "NOTEBOOK_SMALL" in code[0].source and "NOTEBOOK_OUT" in code[0].source


@pytest.mark.slow  # in make test-slow (CI): 30-60 s each
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_writes_pictures(name, tmp_path, monkeypatch):
  out = tmp_path / "out"
  monkeypatch.setenv("NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("NOTEBOOK_OUT", str(out))
  monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("JUPYTER_PATH", _kernelspec_dir(tmp_path))
  # One CPU device in the kernel, whatever the test session's XLA_FLAGS say.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=TIMEOUT_PER_CELL,
                                   resources={"metadata": {"path": ROOT}})
  t0 = time.time()
  client.execute()
  print(f"{name}: {time.time() - t0:.1f} s")
  for png in EXPECTED[name]:
    path = out / png
    assert path.exists(), f"{name} did not write {png}; wrote {sorted(os.listdir(out))}"
    content = path.read_bytes()
    assert content[:8] == PNG_SIGNATURE, f"{png} is not a PNG"
    assert len(content) > 1000, f"{png} is only {len(content)} bytes"
