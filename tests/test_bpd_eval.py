"""run_bpd_eval: file contents, summary statistics, and resumption after an interruption."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from evaluation.bpd_eval import (BATCHES_FILE, SUMMARY_FILE, read_batch_records,
                                 run_bpd_eval)
from solvers.likelihood import get_likelihood_fn

NUM_BATCHES, BATCH, DIM = 5, 8, 2


def _data():
  """Five batches of 8 points in [0, 1]^2 on the 8-bit grid k / 255."""
  rng = np.random.default_rng(0)
  x = np.clip(0.5 + 0.1 * rng.standard_normal((NUM_BATCHES, BATCH, DIM)), 0, 1)
  return jnp.asarray(np.round(x * 255) / 255, jnp.float32)


def _batches(data, fail_after=None):
  for i in range(data.shape[0]):
    if fail_after is not None and i == fail_after:
      raise RuntimeError("interrupted")
    yield i, data[i]


def _lines(out_dir):
  with open(os.path.join(out_dir, BATCHES_FILE)) as f:
    return [json.loads(line) for line in f]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
  """A real likelihood (rectified flow, exact N(0.5, 0.1^2) velocity, exact trace, with
  dequantization so that each batch's result depends on its key fold_in(key, i))."""
  sde = sde_lib.RectifiedFlow()
  exact_fn = sde_lib.gaussian_model_fn(sde, 0.5, 0.1)
  calls = [0]

  def count(t):
    calls[0] += 1

  def model_fn(x, t):
    jax.debug.callback(count, t)  # Fires once per evaluation of the vector field.
    return exact_fn(x, t)

  likelihood_fn = get_likelihood_fn(sde, lambda x: x, trace="exact", dequantize=True)
  data, key = _data(), jax.random.PRNGKey(7)

  full_dir = str(tmp_path / "full")
  full = run_bpd_eval(likelihood_fn, model_fn, _batches(data), full_dir, key)
  lines = _lines(full_dir)
  assert [r["batch"] for r in lines] == list(range(NUM_BATCHES))
  for r in lines:
    assert r["n"] == BATCH and len(r["bpd"]) == BATCH
    assert r["mean_bpd"] == pytest.approx(np.mean(r["bpd"]), rel=1e-12)
  # Each line is the likelihood of its batch under key fold_in(key, i).
  bpd3, _, nfe3 = likelihood_fn(jax.random.fold_in(key, 3), model_fn, data[3])
  np.testing.assert_allclose(lines[3]["bpd"], np.asarray(bpd3), rtol=1e-6)
  assert lines[3]["nfe"] == int(nfe3)
  values = np.concatenate([r["bpd"] for r in lines])
  assert full["n"] == NUM_BATCHES * BATCH and full["num_batches"] == NUM_BATCHES
  assert full["mean_bpd"] == pytest.approx(values.mean(), rel=1e-12)
  assert full["stderr_bpd"] == pytest.approx(values.std(ddof=1) / np.sqrt(values.size),
                                             rel=1e-12)
  assert full["mean_nfe"] == pytest.approx(np.mean([r["nfe"] for r in lines]))
  with open(os.path.join(full_dir, SUMMARY_FILE)) as f:
    assert json.load(f) == full

  # Interrupted after two batches, with a third line cut short by the "kill".
  part_dir = str(tmp_path / "part")
  with pytest.raises(RuntimeError, match="interrupted"):
    run_bpd_eval(likelihood_fn, model_fn, _batches(data, fail_after=2), part_dir, key)
  assert not os.path.exists(os.path.join(part_dir, SUMMARY_FILE))
  with open(os.path.join(part_dir, BATCHES_FILE), "a") as f:
    f.write('{"batch": 2, "n": 8, "mean_b')
  assert sorted(read_batch_records(os.path.join(part_dir, BATCHES_FILE))) == [0, 1]

  calls[0] = 0
  resumed = run_bpd_eval(likelihood_fn, model_fn, _batches(data), part_dir, key)
  # Only batches 2, 3, 4 were computed: the model ran exactly their NFE.
  assert calls[0] == sum(r["nfe"] for r in lines[2:])
  assert resumed == full
  assert _lines(part_dir) == lines


def _fake_likelihood(counter):
  """Cheap stand-in: bpd = mean(x) + U(key), one call counted per batch."""

  def likelihood_fn(key, model_fn, x):
    counter.append(1)
    bpd = jnp.mean(x, axis=1) + jax.random.uniform(key, (x.shape[0],))
    return bpd, x, jnp.int32(10)

  return likelihood_fn


def test_num_batches_rerun_and_errors(tmp_path):
  data, key, calls = _data(), jax.random.PRNGKey(0), []
  fn = _fake_likelihood(calls)
  out = str(tmp_path)
  first = run_bpd_eval(fn, None, _batches(data), out, key, num_batches=3)
  assert len(calls) == 3 and first["n"] == 3 * BATCH and first["mean_nfe"] == 10.0
  # A finished run's rerun computes nothing and returns the same summary.
  assert run_bpd_eval(fn, None, _batches(data), out, key, num_batches=3) == first
  assert len(calls) == 3
  # Extending it computes only the new batches.
  run_bpd_eval(fn, None, _batches(data), out, key)
  assert len(calls) == NUM_BATCHES
  with pytest.raises(ValueError, match="twice"):
    run_bpd_eval(fn, None, iter([(0, data[0]), (0, data[0])]), str(tmp_path / "dup"), key)
  # A malformed complete line is corruption, not a cut-short write.
  with open(os.path.join(out, BATCHES_FILE), "a") as f:
    f.write("not json\n")
  with pytest.raises(ValueError, match="corrupt"):
    run_bpd_eval(fn, None, _batches(data), out, key)
