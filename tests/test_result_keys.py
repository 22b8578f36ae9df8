"""Results keyed by what made them: a result folder's key covers the checkpoint's
contents (its checksum manifest, not the step), the data files and every setting that
changes the number (model.dtype, the loss's likelihood_weighting); a rerun reuses cached
batch records only when all of that matches, and says so."""
import glob
import json
import os
import shutil

from inprocess_cli import TINY_TOY, run_cli

EVAL = ("--mode", "eval", *TINY_TOY, "--config.eval.enable_sampling=False",
        "--config.eval.num_eval_points=64", "--config.eval.batch_size=32",
        "--config.eval.rtol=1e-3", "--config.eval.atol=1e-3")


def _train(w, *extra):
  code, err = run_cli("--config", "configs/default_toy.py", "--mode", "train",
                      "--workdir", w, *TINY_TOY, "--config.training.n_iters=20",
                      "--config.training.snapshot_freq=20", *extra)
  assert code == 0, err


def _eval(w, *extra):
  code, err = run_cli("--config", "configs/default_toy.py", "--workdir", w, *EVAL, *extra)
  assert code == 0, err


def _summaries(w):
  out = {}
  for d in sorted(glob.glob(os.path.join(w, "eval", "bpd_step20-*"))):
    with open(os.path.join(d, "bpd_summary.json")) as f:
      out[os.path.basename(d)] = json.load(f)["mean_nll"]
  return out


def test_a_retrained_model_at_the_same_step_is_a_new_result(tmp_path, capsys):
  w = str(tmp_path / "w")
  _train(w)
  _eval(w)
  (first,) = _summaries(w).values()
  _eval(w)  # the same model, data and settings: reused, and said so
  assert "resumed 2 of 2 batches from" in capsys.readouterr().out
  assert list(_summaries(w).values()) == [first]

  # Delete checkpoints/, retrain with another learning rate, evaluate again.
  shutil.rmtree(os.path.join(w, "checkpoints"))
  _train(w, "--config.optim.lr=0.02")
  capsys.readouterr()
  _eval(w)
  assert "resumed" not in capsys.readouterr().out
  values = _summaries(w)
  assert len(values) == 2 and first in values.values()
  (second,) = [v for v in values.values() if v != first]
  # Equal to a fresh evaluation of a copy of the new checkpoint.
  fresh = str(tmp_path / "fresh")
  shutil.copytree(os.path.join(w, "checkpoints"), os.path.join(fresh, "checkpoints"))
  shutil.copy(os.path.join(w, "run_config.json"), fresh)
  _eval(fresh)
  assert list(_summaries(fresh).values()) == [second]

  # Another network dtype, another loss weighting: new results, old ones untouched.
  _eval(w, "--config.model.dtype=bfloat16")
  assert len(_summaries(w)) == 3
  pattern = os.path.join(w, "eval", "loss_step20-*", "loss.json")
  before = {p: json.load(open(p))["eval_loss"] for p in glob.glob(pattern)}
  assert len(before) == 3  # old model, new model, new model in bfloat16
  _eval(w, "--config.eval.enable_bpd=False",
        "--config.training.likelihood_weighting=True")
  after = {p: json.load(open(p))["eval_loss"] for p in glob.glob(pattern)}
  assert len(after) == 4 and all(after[p] == v for p, v in before.items())
  (weighted,) = set(after) - set(before)
  assert after[weighted] not in before.values()


def test_a_changed_data_file_is_a_new_result(tmp_path):
  from common import io
  import numpy as np
  from training import checkpoint  # noqa: F401 - registers the result key source
  data = tmp_path / "test.npz"
  np.savez(data, images=np.zeros((2, 8, 8, 3), np.uint8))
  settings = {"step": 1, "data": {"data_dir": str(data)}}
  a = io.result_dir(str(tmp_path / "w"), "eval/bpd_step1", settings)
  assert a == io.result_dir(str(tmp_path / "w"), "eval/bpd_step1", settings)
  np.savez(data, images=np.ones((2, 8, 8, 3), np.uint8))
  b = io.result_dir(str(tmp_path / "w"), "eval/bpd_step1", settings)
  assert a != b
  with open(os.path.join(b, "manifest.json")) as f:
    assert "data_sha256" in json.load(f)["settings"]
