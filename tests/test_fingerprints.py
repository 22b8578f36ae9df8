"""Every `--mode` of main.py reproduces the fixed-seed fingerprints recorded before the
layout refactor (tests/fingerprint/fingerprints.json, written by
tests/fingerprint/record_fingerprints.py on the tree before it; that script's docstring
says what a fingerprint holds and how the runs are driven).

The same command lines run again here on this tree, in a temporary directory, and each
recorded output (named by mode and role, not by result folder) must be present with:

  * the same jax version as the recording: equal sha256 of every array's bytes (npz
    files, checkpoint arrays) and equal numbers in the result JSON files (bit for bit);
  * another jax version: each array's float64 summary (sum, sum of squares, first 4
    values) and each JSON number within rtol 1e-5 (with an absolute floor of 1e-5 times
    the array's root sum of squares, for sums that cancel to ~0); compilers may reorder
    float32 arithmetic, so exact bytes are not expected there.

The outputs listed in ROUND_OFF (three, each with the change that moved its round-off) are
compared by their summaries also on the recording's jax. So is every output of the
workdirs in ROUND_OFF_WORKDIRS, and the numbers and arrays of adaptive solves in
SOLVE_TOLERANCE and SOLVE_ARRAYS are compared to the tolerances given there (each with the
change and the measurement behind it). A mismatch names the run and output, and prints
both summaries of each differing array.
Outputs that the tree writes beyond the recorded ones are listed, not failed.

Cost: the toy and rectified-flow workdirs (train, sample pc/ode/sde/fast/inpaint/class,
eval, demo, train_classifier, reflow_data, rf_eval) and import run by default in one
python process; the CIFAR-10 image workdir (train, sample pc/inpaint/colorize, eval,
stats, sample_quality: a DDPM++ training step and an Inception network to compile) is
marked slow.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import jax
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "fingerprint", "record_fingerprints.py")
RECORDED = os.path.join(HERE, "fingerprint", "fingerprints.json")
RTOL = 1e-5
MAX_SHOWN = 6  # differing arrays printed per output
# Outputs whose arithmetic changed on purpose after the recording, compared by their
# summaries (rtol RTOL) even on the recording's jax; every other output stays bit-exact.
ROUND_OFF = {
    # The ODE sampler's final Tweedie step asks the process (sde.x0_from_native) instead
    # of writing x - t v by hand: the pairs' z are byte-equal, x differs at ~1e-7.
    "rf/reflow_data/pairs_00000.npz": "Tweedie step through the process",
    "rf/reflow_data/pairs_00001.npz": "Tweedie step through the process",
    # Classifier guidance's shift goes through the process's conversions (finite at
    # alpha(t) = 0 for rectified flow): VP samples differ at ~5e-8.
    "toy/sample_class/samples.npz": "guidance shift through the process",
}
# Workdirs whose every output is compared by its summaries (and JSON numbers to rtol RTOL),
# arrays to (rtol, atol per element): in every image network GroupNorm sums per channel
# before summing a group's channels (models/layers.py) and the attention projections take
# their weight gradient on the transposed input (models/matmul.py). Four Adam steps turn
# that round-off into relative changes of up to ~3e-4 in small parameters (the mid-level
# attention's GroupNorm bias: 4.2330e-4 -> 4.2317e-4) and redraw the float32 noise of
# parameters whose gradient is zero in exact arithmetic (the key projection's bias, ~1e-10;
# its Adam moment, ~1e-15). A wrong gradient moves 0.1-sized weights by ~lr = 2e-3 per step.
ROUND_OFF_WORKDIRS = {"image": (1e-3, 1e-6)}
# Numbers of adaptive solves at a loose tolerance, compared to a relative tolerance of their
# own; keys that match none of the patterns are not compared. image/eval solves at
# eval.rtol = eval.atol = 1e-2, where the bits/dim of this 4-step network move by up to
# 1.7 % (and the NFE between 44 and 56) under round-off: measured on the four pairings of
# checkpoints and code from the trees before and after the GroupNorm change, whose weights
# differ by at most 2e-6. 3 % still tells a wrong dequantization or scaling (>= 1 bit/dim).
#
# The adaptive ODE sampler's step control became scipy RK45's, as score_sde's sampler uses
# it (solvers/step_control.py: Hairer's first step instead of a fixed 1e-3 (T - eps), and
# scipy's I-controller): its solves take other steps, and their results move within the
# solve's own error. Measured on rf/reflow_data (rtol = atol = 1e-3) against the same z
# solved at 1e-6 (1347 NFE): the recorded x were off by up to 0.090 (RMS 0.049, 68 NFE),
# the new ones by up to 0.067 (RMS 0.026, 51 NFE). Their NFE (arrays and numbers named
# nfe) are not compared; the samples to (rtol, atol per element) in SOLVE_ARRAYS.
# In SOLVE_TOLERANCE's outputs, numbers ending in SOLVE_UNCOMPARED are not compared (the
# NFE, and the spread of image/eval's 8 bits/dim: 0.068 -> 0.105), the others as usual.
SOLVE_UNCOMPARED = ("nfe", "stderr_bpd")
SOLVE_TOLERANCE = {
    "image/eval/bpd_batches.jsonl": (0.03, (".bpd.", ".mean_bpd")),
    "image/eval/bpd_summary.json": (0.03, ("mean_bpd",)),
    "rf/rf_eval/rf_eval.json": (1e-2, (".sw",)),  # 0.85302 -> 0.85358
    "toy/demo/demo_summary.json": (1e-2, ("sw_ode_vs_data",)),  # 84.49 -> 84.73
}
SOLVE_ARRAYS = {
    "rf/reflow_data/pairs_00000.npz": {"x": (0.0, 0.2), "z": (RTOL, 0.0)},
    "rf/reflow_data/pairs_00001.npz": {"x": (0.0, 0.2), "z": (RTOL, 0.0)},
    # Samples ~100 in size: -127.475 -> -127.848.
    "toy/sample_ode/samples.npz": {"samples": (1e-2, 0.0)},
}


def _script():
  spec = importlib.util.spec_from_file_location("record_fingerprints", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _recorded() -> dict:
  with open(RECORDED) as f:
    return json.load(f)


def _close(a: float, b: float, scale: float = 0.0, rtol: float = RTOL,
           atol: float = 0.0) -> bool:
  return math.isclose(a, b, rel_tol=rtol, abs_tol=max(rtol * scale, atol))


def _array_problem(want: dict, got: dict | None, exact: bool,
                   tolerance: tuple[float, float] = (RTOL, 0.0)) -> str | None:
  """None if `got` matches `want`; exactly, or by summaries to tolerance = (rtol, atol
  per element: the sum may then be off by n atol, the first values by atol each)."""
  if got is None:
    return "missing"
  if exact:
    return None if got["sha256"] == want["sha256"] else "bytes differ"
  if got["shape"] != want["shape"] or got["dtype"] != want["dtype"]:
    return "shape/dtype differ"
  if "sum" not in want:
    return None if got["sha256"] == want["sha256"] else "bytes differ"
  rtol, atol = tolerance
  n = math.prod(want["shape"])
  scale = math.sqrt(max(want["sumsq"], 0.0))
  ok = (_close(want["sum"], got["sum"], scale, rtol, n * atol)
        and _close(want["sumsq"], got["sumsq"], 0.0, rtol, 2 * atol * math.sqrt(n) * scale
                   + n * atol ** 2)
        and all(_close(a, b, scale, rtol, atol) for a, b in zip(want["first"], got["first"])))
  return None if ok else "summary differs"


def _summary(rec: dict | None) -> str:
  if rec is None:
    return "absent"
  return (f"{rec['dtype']}{rec['shape']} sum {rec.get('sum')!r} sumsq "
          f"{rec.get('sumsq')!r} first {rec.get('first')!r} sha256 {rec['sha256'][:12]}")


def _report(role: str, name: str, problem: str, want: dict, got: dict | None) -> str:
  return (f"{role} [{name}]: {problem}\n    recorded {_summary(want)}\n"
          f"    now      {_summary(got)}")


def compare(want: dict, got: dict, exact: bool) -> list[str]:
  """Problems, one string each, of the new outputs `got` against the recorded `want`."""
  problems = []
  for role, w in sorted(want.items()):
    g = got.get(role)
    if g is None:
      problems.append(f"{role}: not written (recorded)")
      continue
    workdir_tolerance = ROUND_OFF_WORKDIRS.get(role.split("/")[0])
    exact_here = exact and role not in ROUND_OFF and workdir_tolerance is None
    tolerance = workdir_tolerance or (RTOL, 0.0)
    if "numbers" in w:
      rtol, patterns = SOLVE_TOLERANCE.get(role, (None, ()))
      for key, value in sorted(w["numbers"].items()):
        new = g.get("numbers", {}).get(key)
        if rtol is not None and key.endswith(SOLVE_UNCOMPARED):
          continue
        if rtol is not None and any(pattern in f".{key}" for pattern in patterns):
          same = new is not None and math.isclose(value, new, rel_tol=rtol)
        else:
          same = new == value if exact_here else new is not None and _close(value, new)
        if not same:
          problems.append(f"{role} [{key}]: recorded {value!r}, now {new!r}")
      continue
    if exact and g.get("sha256") == w["sha256"]:
      continue
    got_arrays = g.get("arrays", {})
    if role in SOLVE_ARRAYS:
      for name, tol in SOLVE_ARRAYS[role].items():
        problem = _array_problem(w["arrays"][name], got_arrays.get(name), False, tol)
        if problem:
          problems.append(_report(role, name, problem, w["arrays"][name],
                                  got_arrays.get(name)))
      continue
    # Checkpoint arrays may also match under another name (their tree may be renamed).
    by_content = role.rsplit("/", 1)[-1].startswith(("checkpoint", "classifier_checkpoint"))
    bad = []
    for name, rec in sorted(w["arrays"].items()):
      problem = _array_problem(rec, got_arrays.get(name), exact_here, tolerance)
      if problem and by_content and any(
          _array_problem(rec, other, exact_here, tolerance) is None
          for other in got_arrays.values()):
        problem = None
      if problem == "bytes differ" and "sum" in rec and got_arrays.get(name):
        loose = _array_problem(rec, got_arrays[name], exact=False)
        problem += (" (summaries agree to rtol 1e-5: round-off)" if loose is None
                    else " (summaries differ beyond rtol 1e-5)")
      if problem:
        bad.append(_report(role, name, problem, rec, got_arrays.get(name)))
    if not bad and exact_here:  # the combined hash differs: arrays added or renamed
      bad.append(f"{role}: every recorded array matches, but not the set of arrays")
    problems += bad[:MAX_SHOWN]
    if len(bad) > MAX_SHOWN:
      problems.append(f"{role}: ... and {len(bad) - MAX_SHOWN} more differing arrays")
  return problems


def _check(workdirs: set[str]) -> None:
  script, recorded = _script(), _recorded()
  labels = [label for label in recorded["runs"] if label.split("/")[0] in workdirs]
  result = script.record(REPO, recorded["inputs"], labels=labels)
  failed = {k: v for k, v in result["runs"].items() if v["exit"] != 0}
  timing = {k: (v["wall_s"], v["cpu_s"]) for k, v in result["runs"].items()}
  print("runs (wall s, cpu s):", json.dumps(timing))
  assert not failed, "runs that failed:\n" + "\n".join(
      f"{k}: exit {v['exit']}\n{v.get('stderr_tail', '')}" for k, v in failed.items())
  want = {k: v for k, v in recorded["outputs"].items() if k.split("/")[0] in workdirs}
  got = {k: v for k, v in result["outputs"].items() if k.split("/")[0] in workdirs}
  extra = sorted(set(got) - set(want))
  if extra:
    print("outputs not in the recording (not checked):", extra)
  exact = jax.__version__ == recorded["jax_version"]
  problems = compare(want, got, exact)
  matched = len(want) - len({p.split(" ", 1)[0].rstrip(":") for p in problems})
  print(f"{matched} of {len(want)} recorded outputs match "
        f"({'exact bytes' if exact else f'summaries to rtol {RTOL}'})")
  assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_toy_rf_and_import_modes_match_the_recording():
  _check({"toy", "rf", "import"})


@pytest.mark.slow
def test_image_modes_match_the_recording():
  _check({"image"})
