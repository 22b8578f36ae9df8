"""The workdir's own record (training/run_record.py): written when training starts a
model; a resumed training or any other mode with another process, network or data set
stops with one line listing each field with both values; allowed changes pass; other
modes take recorded training values; --new_model moves the old model aside; changed data
files are caught by the recorded fingerprint."""
import json
import os

import numpy as np
import pytest

from common.errors import UserError
from configs.default_toy import get_default_configs
from training import loop, run_record


@pytest.fixture(autouse=True)
def _no_invocation():
  run_record.set_invocation(None, ())
  yield
  run_record.set_invocation(None, ())


def _config(**training):
  config = get_default_configs()
  config.model.update(nf=16, num_layers=2, embedding_dim=16)
  config.training.update(dict(batch_size=32, n_iters=20, n_jitted_steps=10, log_freq=10,
                              snapshot_freq=10, snapshot_freq_for_preemption=10,
                              eval_freq=0))
  config.training.update(training)
  return config


def test_training_writes_the_record_and_a_resume_with_another_model_stops(tmp_path):
  workdir = str(tmp_path)
  loop.train(_config(), workdir)
  record = run_record.read(workdir)
  assert record["config"]["training"]["sde"] == "vpsde"
  assert record["config"]["model"]["nf"] == 16
  assert record["data"] == {"dataset": "eight_gaussians"}
  assert record["code_version"].startswith(("git ", "score-flow-jax "))
  metrics = open(os.path.join(workdir, "metrics.jsonl")).read()

  for change, field, values in [
      (dict(sde="vesde"), "training.sde", ("'vpsde'", "'vesde'")),
      ({"model.nf": 32}, "model.nf", ("16", "32")),
      ({"data.dataset": "checkerboard"}, "data.dataset", ("'eight_gaussians'",
                                                          "'checkerboard'")),
      ({"model.beta_max": 10.0}, "model.beta_max", ("20.0", "10.0")),
  ]:
    config = _config(n_iters=40)
    for k, v in change.items():
      if "." in k:
        section, name = k.split(".")
        config[section][name] = v
      else:
        config.training[k] = v
    with pytest.raises(run_record.RecordMismatchError) as e:
      loop.train(config, workdir)
    message = str(e.value)
    assert "\n" not in message and f"config.{field}: trained with {values[0]}, " \
        f"given {values[1]}" in message, message
  # Nothing was trained or logged by the refused runs.
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics

  # Allowed: more steps, another learning rate, EMA rate, dtype, frequencies.
  config = _config(n_iters=30, log_freq=5)
  config.optim.lr = 1e-3
  config.model.ema_rate = 0.99
  state = loop.train(config, workdir)
  assert int(state.step) == 30
  assert run_record.read(workdir)["config"]["training"]["n_iters"] == 20  # the original


def test_new_model_moves_the_old_one_aside(tmp_path):
  workdir = str(tmp_path)
  loop.train(_config(), workdir)
  before = sorted(os.listdir(workdir))
  run_record.set_invocation(None, (), new_model=True)
  config = _config(sde="subvpsde", n_iters=10)
  state = loop.train(config, workdir)
  assert int(state.step) == 10
  (old,) = [n for n in os.listdir(workdir) if n.startswith("previous-")]
  moved = sorted(os.listdir(os.path.join(workdir, old)))
  assert "checkpoints" in moved and "run_config.json" in moved
  assert "metrics.jsonl" in moved
  assert set(moved) == set(before) - {".lock"}
  assert os.listdir(os.path.join(workdir, old, "checkpoints"))  # nothing deleted
  assert run_record.read(workdir)["config"]["training"]["sde"] == "subvpsde"


def test_other_modes_take_recorded_training_values_and_repeated_overrides(tmp_path):
  workdir = str(tmp_path)
  run_record.set_invocation("configs/default_toy.py",
                            ["training.sde", "training.snapshot_freq"])
  trained = _config(sde="vesde", snapshot_freq=50)
  os.makedirs(os.path.join(workdir, "checkpoints", "50"))
  run_record.start_training(trained, workdir)
  assert run_record.read(workdir)["overrides"] == {"training.sde": "vesde",
                                                   "training.snapshot_freq": 50}

  # eval with the same file, no overrides: the recorded process and snapshot_freq.
  run_record.set_invocation("configs/default_toy.py", [])
  config = run_record.resolve(_config(), workdir, "eval")
  assert config.training.sde == "vesde" and config.training.snapshot_freq == 50
  # An explicit, different process on the command line: refused.
  run_record.set_invocation("configs/default_toy.py", ["training.sde"])
  with pytest.raises(run_record.RecordMismatchError, match="training.sde: trained with "
                     "'vesde', given 'vpsde'"):
    run_record.resolve(_config(), workdir, "sample")
  # Another config file whose process differs: refused, not silently replaced.
  run_record.set_invocation("configs/toy/checkerboard_rf.py", [])
  with pytest.raises(run_record.RecordMismatchError, match="training.sde"):
    run_record.resolve(_config(), workdir, "sample")
  # An explicit eval-time snapshot_freq wins over the recorded one.
  run_record.set_invocation("configs/default_toy.py", ["training.snapshot_freq"])
  config = run_record.resolve(_config(snapshot_freq=25), workdir, "eval")
  assert config.training.snapshot_freq == 25 and config.training.sde == "vesde"


def test_changed_data_file_is_caught_by_the_recorded_fingerprint(tmp_path):
  workdir, data = str(tmp_path / "w"), tmp_path / "train.npz"
  os.makedirs(workdir)
  np.savez(data, images=np.zeros((4, 8, 8, 3), np.uint8))
  config = _config()
  config.data.data_dir = str(data)
  run_record.start_training(config, workdir)
  recorded = run_record.read(workdir)["data"]
  assert recorded["n_files"] == 1 and recorded["files"][0][0] == "train.npz"
  cache = json.load(open(os.path.join(workdir, run_record.HASH_CACHE_FILE)))
  assert list(cache.values()) == [recorded["files"][0][2]]

  os.makedirs(os.path.join(workdir, "checkpoints", "20"))
  run_record.start_training(config, workdir)  # unchanged: resumes
  np.savez(data, images=np.ones((4, 8, 8, 3), np.uint8))
  with pytest.raises(UserError, match="training data changed .*changed train.npz"):
    run_record.start_training(config, workdir)


def test_fingerprint_cache_avoids_rehashing(tmp_path, monkeypatch):
  data = tmp_path / "d"
  data.mkdir()
  (data / "a.bin").write_bytes(b"x" * 1000)
  config = _config()
  config.data.data_dir = str(data)
  first = run_record.data_fingerprint(config, str(tmp_path))
  from common import io
  monkeypatch.setattr(io, "file_sha256", lambda path: pytest.fail("re-hashed " + path))
  assert run_record.data_fingerprint(config, str(tmp_path)) == first


def test_through_the_cli_another_model_is_exit_2_and_new_model_starts_over(tmp_path):
  from inprocess_cli import TINY_TOY, run_cli
  w = str(tmp_path / "vp")
  train = ("--mode", "train", "--workdir", w, *TINY_TOY, "--config.training.n_iters=20",
           "--config.training.snapshot_freq=10")
  code, err = run_cli("--config", "configs/default_toy.py", *train)
  assert code == 0, err
  # A VP workdir sampled with the rectified-flow config (another file): refused.
  code, err = run_cli("--config", "configs/toy/checkerboard_rf.py", "--mode", "sample",
                      "--workdir", w, *TINY_TOY)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, err
  assert "config.training.sde: trained with 'vpsde', given 'rectified_flow'" in lines[0]
  assert "config.data.dataset: trained with 'eight_gaussians', given 'checkerboard'" \
      in lines[0]
  # train with another sde, or demo in it with another data set: refused.
  code, err = run_cli("--config", "configs/default_toy.py", *train,
                      "--config.training.sde=subvpsde")
  assert code == 2 and "given 'subvpsde'" in err, err
  code, err = run_cli("--config", "configs/toy/checkerboard_vpsde.py", "--mode", "demo",
                      "--workdir", w, *TINY_TOY)
  assert code == 2 and "given 'checkerboard'" in err, err
  # The same file without repeating --config.training.snapshot_freq: eval finds the
  # recorded 10-step grid (checkpoint 2 = step 20).
  code, err = run_cli("--config", "configs/default_toy.py", "--mode", "eval",
                      "--workdir", w, *TINY_TOY, "--config.eval.begin_ckpt=2",
                      "--config.eval.end_ckpt=2", "--config.eval.enable_bpd=False",
                      "--config.eval.enable_sampling=False",
                      "--config.eval.num_eval_points=64", "--config.eval.batch_size=64")
  assert code == 0, err
  # --new_model: the old model moves aside, nothing deleted.
  code, err = run_cli("--config", "configs/default_toy.py", *train, "--new_model",
                      "--config.training.sde=subvpsde", "--config.training.n_iters=10")
  assert code == 0, err
  (old,) = [n for n in os.listdir(w) if n.startswith("previous-")]
  assert sorted(os.listdir(os.path.join(w, old, "checkpoints"))) == ["10", "20"]
  assert run_record.read(w)["config"]["training"]["sde"] == "subvpsde"


def test_import_replaces_the_record_of_a_removed_model(tmp_path):
  w = str(tmp_path)
  old = _config(sde="vesde")
  os.makedirs(os.path.join(w, "checkpoints", "10"))
  run_record.start_training(old, w)
  # checkpoints/ removed, then another model imported: its config is recorded.
  os.rename(os.path.join(w, "checkpoints"), os.path.join(w, "gone"))
  had_model = run_record.has_model(w)
  os.makedirs(os.path.join(w, "checkpoints", "0"))  # what the import wrote
  assert run_record.record_import(_config(), w, had_model)
  assert run_record.read(w)["config"]["training"]["sde"] == "vpsde"
  # Into a workdir that held a model (checked by resolve before): the record stays.
  assert run_record.record_import(_config(sde="subvpsde"), w, True) is None
