"""Unverified checkpoints (no checksum file) are never restored while a verified one
exists: sample and eval (end_ckpt = 0) fall back to it with a warning; with none verified
the run stops (exit code 2) unless --accept_unverified_checkpoint is given."""
import glob
import os

import pytest

from configs.default_toy import get_default_configs
from training import checkpoint, loop
from training.restore import restore_model


def _config():
  config = get_default_configs()
  config.model.update(nf=16, num_layers=2, embedding_dim=16)
  config.training.update(dict(batch_size=32, n_iters=20, n_jitted_steps=10, log_freq=10,
                              snapshot_freq=10, snapshot_freq_for_preemption=10,
                              eval_freq=0))
  return config


def _damage_without_manifest(workdir, step):
  d = checkpoint.step_dir(checkpoint.checkpoint_dir(workdir), step)
  os.remove(os.path.join(d, checkpoint.MANIFEST_FILE))
  biggest = max((p for p in glob.glob(os.path.join(d, "**", "*"), recursive=True)
                 if os.path.isfile(p)), key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.seek(os.path.getsize(biggest) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x40]))


@pytest.fixture(autouse=True)
def _reset():
  checkpoint.accept_unverified(False)
  yield
  checkpoint.accept_unverified(False)


def test_newest_unverified_falls_back_to_the_verified_one(tmp_path):
  from inprocess_cli import TINY_TOY, run_cli
  w = str(tmp_path)
  loop.train(_config(), w)
  _damage_without_manifest(w, 20)
  _, step = restore_model(_config(), w)
  assert step == 10
  # eval with end_ckpt = 0 falls back exactly as sample does.
  code, err = run_cli("--config", "configs/default_toy.py", "--mode", "eval",
                      "--workdir", w, *TINY_TOY, "--config.eval.enable_bpd=False",
                      "--config.eval.enable_sampling=False",
                      "--config.eval.num_eval_points=64", "--config.eval.batch_size=64")
  assert code == 0, err
  assert glob.glob(os.path.join(w, "eval", "loss_step10-*")), os.listdir(w)
  assert not glob.glob(os.path.join(w, "eval", "loss_step20-*"))

  # None verified: exit 2 naming the flag; with the flag, restored with a warning.
  os.remove(os.path.join(checkpoint.step_dir(checkpoint.checkpoint_dir(w), 10),
                         checkpoint.MANIFEST_FILE))
  with pytest.raises(checkpoint.CheckpointError, match="--accept_unverified_checkpoint"):
    restore_model(_config(), w)
  code, err = run_cli("--config", "configs/default_toy.py", "--mode", "sample",
                      "--workdir", w, *TINY_TOY, "--config.eval.num_samples=16",
                      "--config.sampling.method=ode")
  assert code == 2 and "--accept_unverified_checkpoint" in err, err
  assert len(err.strip().splitlines()) == 1
  checkpoint.accept_unverified(True)
  _, step = restore_model(_config(), w)
  assert step == 10  # 20 is damaged: its files no longer load as saved
