"""The evaluation modes run by 2 processes x 2 devices (main.py --multihost, gloo on CPU)
against 1 process x 4 devices on a copy of the same workdir: `stats`, `sample_quality`,
`eval` on image data whose last batch is padded, `reflow_data` and `rf_eval`.

Setting: checkpoints of the initial weights written here (the two layouts are compared
with each other, so the weights need not be trained; no training run at all), with
configs/tiny.py's networks. Images: 6 of the bundled 8x8 digits as an NPZ data set, in
chunks/batches of 4 (the last holds 2 examples: padded for the Inception; for the
evaluation, trimmed to 2 real examples, which leaves process 1 none of its share and
does not split over 4 devices); the FID Inception with random weights
(`inception.random_state_dict(0)`, as tests/test_sample_quality_modes.py); a 10-step PC
sampler. Toy: a rectified flow on two_gaussians; 12 reflow pairs in shards of 8 (the
last cut to 4) by adaptive dopri5 (rtol = atol = 1e-3), and rf_eval over 16 samples.
All runs start at once (sample_quality when stats ends); `test_timings` prints
the wall and CPU times.

Tolerances: the Inception's features, FID statistics and FID/KID/IS to float32
round-off (rel. 1e-5; measured: bitwise equal), the reflow's z exactly, its x to 1e-5
absolute (the adaptive solver's error norm is a sum over the batch, reduced in another
order when the batch is split; measured: equal), the bits/dim per example and the
evaluation loss to rel. 1e-5 (measured: equal, and 6e-8). On an idle 2-core machine the
15 processes take about half their CPU time (printed by `test_timings`; 348 s measured
under load) in wall time.
"""
from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import time

import numpy as np
import pytest

from test_multiprocess import _log_tail, start, wait

pytestmark = pytest.mark.slow

IMAGE = "configs/tiny.py:configs/vp/digits_ddpmpp_small.py"
TOY_RF = "configs/tiny.py:configs/toy/two_gaussians_rf.py"
NUM_IMAGES = 6
# Fields the checkpoint's network depends on are set here and on the command line alike.
IMAGE_FIELDS = {"data.dataset": "NPZ", "model.num_scales": 10, "model.beta_max": 1.0}
IMAGE_ARGS = ["--config.sampling.predictor=reverse_diffusion",
              "--config.sampling.corrector=none", "--config.eval.batch_size=4",
              f"--config.eval.num_samples={NUM_IMAGES}",
              "--config.eval.stats_split=train", "--config.eval.bpd_dataset=train"]
EVAL_ARGS = ["--config.eval.enable_sampling=False", "--config.eval.enable_loss=True",
             "--config.eval.enable_bpd=True"]
REFLOW_ARGS = ["--config.reflow.num_pairs=12", "--config.reflow.shard_size=8",
               "--config.reflow.rtol=1e-3", "--config.reflow.atol=1e-3"]
RF_EVAL_ARGS = ["--config.eval.batch_size=8", "--config.eval.num_samples=16",
                "--config.eval.rf_nfe=(1,2)", "--config.eval.straightness_steps=4",
                "--config.sampling.rtol=1e-3", "--config.sampling.atol=1e-3"]


def _args(fields: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in fields.items()]


def _write_checkpoint(base: str, fields: dict, workdir) -> None:
  """A step-0 checkpoint of `base` (configs/tiny.py:<file>) with `fields` set."""
  from configs import tiny
  from training import checkpoint
  from training.state import create_train_state
  config = tiny.get_config(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), base.split(":", 1)[1]))
  for field, value in fields.items():
    tiny.set_field(config, field, value)
  manager = checkpoint.make_manager(config, str(workdir))
  checkpoint.save(manager, create_train_state(config))
  manager.close()


def _start_both(name, workdirs, mode, args, config) -> list:
  """Starts `mode` on 2 x 2 devices (workdirs[0]) and on 1 x 4 (workdirs[1]) at once."""
  multi, single = workdirs
  return [(name, multi, mode, start(multi, mode, args, config=config)),
          (name, single, mode, start(single, mode, args, config=config, processes=1,
                                     devices=4))]


def _wait(runs: dict, started: list, t0: float) -> None:
  """Waits for every run of `started`; records per name the exit codes, the logs and
  the wall time since t0."""
  for name, workdir, mode, procs in started:
    codes = wait(procs, timeout=900)
    runs.setdefault(name, {"codes": [], "logs": []})
    runs[name]["codes"] += codes
    runs[name]["logs"] += [f"{workdir}.{mode}.p{i}.log" for i in range(len(procs))]
    runs[name]["seconds"] = round(time.time() - t0, 1)


def _check(runs: dict, name: str) -> None:
  run = runs[name]
  for code, log in zip(run["codes"], run["logs"]):
    assert code == 0, f"{name}: {log} exited {code}:\n" + _log_tail(log)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs every mode on both layouts, all at once but sample_quality, which starts when
  stats (its reference) ends. Returns {name: {"codes", "logs", "seconds"}, "dirs",
  timings}."""
  from data import digits
  from evaluation import inception
  root = tmp_path_factory.mktemp("multiprocess_modes")
  t0 = time.time()
  data_file = str(root / "digits6.npz")
  np.savez(data_file, images=digits.load_digits("train")[0][:NUM_IMAGES])
  weights = str(root / "fid_inception.npz")
  inception.save_npz(weights, inception.random_state_dict(0))
  image_fields = {**IMAGE_FIELDS, "data.data_dir": data_file}
  image_args = (_args(image_fields) + IMAGE_ARGS
                + [f"--config.eval.inception_path={weights}"])
  image = (root / "image_2x2", root / "image_1x4")
  toy = (root / "rf_2x2", root / "rf_1x4")
  _write_checkpoint(IMAGE, image_fields, image[0])
  _write_checkpoint(TOY_RF, {}, toy[0])
  for multi, single in (image, toy):
    shutil.copytree(multi, single)
  runs: dict = {"dirs": {"image": image, "toy": toy},
                "setup_seconds": round(time.time() - t0, 1)}
  cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t1 = time.time()
  stats = _start_both("stats", image, "stats", image_args, IMAGE)
  others = (_start_both("eval", image, "eval", image_args + EVAL_ARGS, IMAGE)
            + _start_both("reflow_data", toy, "reflow_data", REFLOW_ARGS, TOY_RF)
            + _start_both("rf_eval", toy, "rf_eval", RF_EVAL_ARGS, TOY_RF))
  _wait(runs, stats, t1)
  if all(c == 0 for c in runs["stats"]["codes"]):  # its reference: stats' output
    others += _start_both("sample_quality", image, "sample_quality", image_args, IMAGE)
  _wait(runs, others, t1)
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  runs["cpu_seconds"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime
                              - cpu0.ru_stime, 1)
  runs["total_seconds"] = round(time.time() - t0, 1)
  return runs


def _one(pattern) -> str:
  found = glob.glob(str(pattern))
  assert len(found) == 1, (pattern, found)
  return found[0]


def _both(runs, kind: str, pattern: str) -> tuple[str, str]:
  return tuple(_one(d / pattern) for d in runs["dirs"][kind])


def _max_rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30), initial=0.0))


def test_stats_on_2x2_equal_1x4(runs):
  _check(runs, "stats")
  multi, single = _both(runs, "image", "stats/NPZ_train-*/stats.npz")
  with np.load(multi) as a, np.load(single) as b:
    assert int(a["count"]) == int(b["count"]) == NUM_IMAGES
    assert a["pool_3"].shape == (NUM_IMAGES, 2048)
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in ("mu", "sigma", "pool_3",
                                                               "logits")}
    print(f"stats: max |2x2 - 1x4| {diffs}")
    np.testing.assert_allclose(a["pool_3"], b["pool_3"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["mu"], b["mu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-5,
                               atol=1e-5 * float(np.max(np.abs(b["sigma"]))))
  # Process 0 alone wrote: one record per chunk.
  with open(os.path.join(os.path.dirname(multi), "chunks.jsonl")) as f:
    assert [json.loads(line)["chunk"] for line in f] == [0, 1]


def test_sample_quality_on_2x2_equal_1x4(runs):
  _check(runs, "stats")
  _check(runs, "sample_quality")
  multi, single = _both(runs, "image", "sample_quality/step0_pc-*/result_*.json")
  with open(multi) as f:
    a = json.load(f)
  with open(single) as f:
    b = json.load(f)
  keys = ("fid", "kid", "kid_std", "inception_score", "inception_score_std",
          "inception_score_1split")
  print("sample_quality 2x2 vs 1x4: " + ", ".join(
      f"{k} {a[k]:.9g} vs {b[k]:.9g}" for k in keys))
  assert a["num_samples"] == b["num_samples"] == NUM_IMAGES
  assert a["nfe_mean"] == b["nfe_mean"] == 10
  for k in keys:
    assert a[k] == pytest.approx(b[k], rel=1e-5), k
  # The samples themselves: the same draws whatever the layout.
  for i in range(2):
    chunk_a, chunk_b = (np.load(_one(os.path.join(os.path.dirname(p),
                                                   f"chunk_{i:05d}.npz")))
                        for p in (multi, single))
    diff = np.max(np.abs(chunk_a["samples"].astype(int) - chunk_b["samples"]))
    assert diff <= 1, (i, diff)  # a float32 round-off can cross a grey level


def test_eval_of_image_data_with_a_padded_last_batch_on_2x2_equals_1x4(runs):
  _check(runs, "eval")
  bpd = _both(runs, "image", "eval/bpd_step0-*/bpd_summary.json")
  loss = _both(runs, "image", "eval/loss_step0-*/loss.json")
  records = []
  for path in _both(runs, "image", "eval/bpd_step0-*/bpd_batches.jsonl"):
    with open(path) as f:
      records.append([json.loads(line) for line in f])
  summaries, losses = [], []
  for path, out in ((bpd, summaries), (loss, losses)):
    for p in path:
      with open(p) as f:
        out.append(json.load(f))
  a, b = records
  assert [r["n"] for r in a] == [r["n"] for r in b] == [4, 2]
  per_example = _max_rel([x for r in a for x in r["bpd"]], [x for r in b for x in r["bpd"]])
  print(f"eval: bits/dim {summaries[0]['mean_bpd']:.9g} vs {summaries[1]['mean_bpd']:.9g} "
        f"(max rel. per example {per_example:.3g}); loss {losses[0]['eval_loss']:.9g} vs "
        f"{losses[1]['eval_loss']:.9g}")
  assert per_example <= 1e-5
  assert summaries[0]["n"] == summaries[1]["n"] == NUM_IMAGES
  assert losses[0]["num_batches"] == losses[1]["num_batches"] == 2
  assert losses[0]["eval_loss"] == pytest.approx(losses[1]["eval_loss"], rel=1e-5)


def test_reflow_data_on_2x2_equals_1x4(runs):
  _check(runs, "reflow_data")
  for i, n in enumerate((8, 4)):
    a, b = (np.load(p) for p in _both(runs, "toy", f"reflow_pairs-*/pairs_{i:05d}.npz"))
    assert a["z"].shape == b["z"].shape == (n, 2)
    dx = float(np.max(np.abs(a["x"] - b["x"])))
    print(f"reflow shard {i}: max |z diff| {np.max(np.abs(a['z'] - b['z'])):.3g}, "
          f"max |x diff| {dx:.3g}, NFE {float(a['nfe'])} vs {float(b['nfe'])}")
    np.testing.assert_array_equal(a["z"], b["z"])
    assert dx <= 1e-5
    assert float(a["nfe"]) == float(b["nfe"])


def test_rf_eval_on_2x2_equals_1x4(runs):
  _check(runs, "rf_eval")
  a, b = (json.load(open(p)) for p in _both(runs, "toy", "rf_eval-*/rf_eval.json"))
  print(f"rf_eval: straightness {a['straightness']:.9g} vs {b['straightness']:.9g}; "
        f"SW {[r['sw'] for r in a['rows']]} vs {[r['sw'] for r in b['rows']]}")
  assert [(r["method"], r["nfe"]) for r in a["rows"]] == [
      (r["method"], r["nfe"]) for r in b["rows"]]
  assert len(a["rows"]) == 3  # Euler 1, 2 and dopri5
  assert _max_rel([r["sw"] for r in a["rows"]], [r["sw"] for r in b["rows"]]) <= 1e-5
  assert a["straightness"] == pytest.approx(b["straightness"], rel=1e-5)
  assert a["sw_noise_floor"] == pytest.approx(b["sw_noise_floor"], rel=1e-5)


def test_timings(runs):
  """Not a check: wall times (to the end of each mode's runs, from the start of the
  first) and the CPU time of all the runs together (user + system; on an idle machine
  with c cores the runs take about that divided by c)."""
  print(f"setup {runs['setup_seconds']} s; runs ended after " + ", ".join(
      f"{k} {v['seconds']} s" for k, v in runs.items()
      if isinstance(v, dict) and "seconds" in v)
        + f"; total {runs['total_seconds']} s wall, {runs['cpu_seconds']} s CPU in the "
        f"{sum(len(v['codes']) for v in runs.values() if isinstance(v, dict) and 'codes' in v)}"
        " processes")
