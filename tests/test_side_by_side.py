"""bench/side_by_side.py against a score_sde_pytorch checkout, at tiny size, one timed call
per side: the run's equality checks (forward to float32 round-off, ODE samples from the same
x_T, PC samples in distribution, training losses, bits/dim) pass on the peer's own
checkpoint, and our bits/dim solve costs about what scipy RK45's does (within 1.5x + one
dopri5 step, as tests/test_likelihood.py's small-drift test; measured 14 and 14 at tol 1e-3:
before Hairer's trial step was capped at T - eps it ran to max_steps, 24,578). Skips unless
$SCORE_SDE_PYTORCH names a checkout and $PEER_PYTHON a Python with torch (numpy, scipy and
ml_collections too)."""
import json
import os
import subprocess
import sys

import pytest

from bench import side_by_side

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.environ.get("SCORE_SDE_PYTORCH")
PYTHON = os.environ.get("PEER_PYTHON")


def _has_torch(python):
  try:
    return subprocess.run([python, "-c", "import torch, scipy, ml_collections"],
                          capture_output=True, timeout=120).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


@pytest.mark.slow
@pytest.mark.skipif(not PEER or not os.path.isdir(PEER) or not PYTHON or not _has_torch(PYTHON),
                    reason="needs $SCORE_SDE_PYTORCH (a checkout) and $PEER_PYTHON (with torch)")
def test_side_by_side_checks_pass(tmp_path):
  """Run as a user runs it (its own process, so that --cpu_devices takes effect): our side
  on 2 CPU devices, the batch of 2 split over them."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  run = subprocess.run([sys.executable, "-m", "bench.side_by_side", "--peer", PEER,
                        "--peer_python", PYTHON, "--size", "tiny", "--reps", "1",
                        "--num_scales", "2", "--cpu_devices", "2", "--out", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  with open(tmp_path / "side_by_side.jsonl") as f:
    record = json.loads(f.read().splitlines()[-1])
  assert record["n_devices"] == 2 and record["cpu_devices"] == "2"
  assert record["failures"] == []
  assert record["checks"]["forward"] <= side_by_side.FORWARD_RTOL
  assert record["checks"]["ode"] <= side_by_side.ODE_RTOL_FACTOR * record["tol"]
  assert set(record["results"]) == {"forward", "train", "pc", "ode", "bpd"}
  for entry in record["results"].values():
    assert entry["ratio"] > 0 and len(entry["ours_ms"]["all"]) == 1
  assert record["results"]["pc"]["ours_nfe"] == record["results"]["pc"]["theirs_nfe"] == [4]
  bpd = record["results"]["bpd"]
  assert bpd["ours_nfe"][0] <= 1.5 * bpd["theirs_nfe"][0] + 6, bpd
