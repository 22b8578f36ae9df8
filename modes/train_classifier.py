"""`main.py --mode train_classifier`: the noise-conditional classifier of
config.classifier for classifier guidance, trained by the one training loop in
<workdir>/classifier (training/classifier.py), resumable."""
from __future__ import annotations

from common.mesh import make_mesh
from training.classifier import (check_classifier_config, check_settings,
                                 classifier_config, classifier_training,
                                 classifier_workdir)
from training.loop import check_workdir, run_loop
from training.state import TrainState


def run(config, workdir: str) -> TrainState:
  """Trains until config.classifier.training.n_iters steps, resuming from the latest
  checkpoint in workdir/classifier; returns the final state (EMA in `ema_params`).

  Writes workdir/classifier/checkpoints/<step>/ (training/checkpoint.py's layout),
  metrics.jsonl (per logged step: the mean training loss of the last device call, the
  EMA weights' accuracy on a fresh batch at fresh times, the gradient norm) and
  classifier_config.json (the settings: a rerun with other ones is refused, not resumed).

  Raises UserError for a bad classifier config, unlabeled data or a classifier directory
  trained with other settings, WorkdirError for an unwritable workdir,
  NonFiniteLossError if the loss becomes NaN or inf (nothing saved).
  """
  cconfig = classifier_config(config)
  cdir = check_workdir(classifier_workdir(check_workdir(workdir)))
  mesh = make_mesh()
  num_classes = check_classifier_config(config, cconfig, mesh.size)
  check_settings(config, cdir)
  train_fn, log_record = classifier_training(config, mesh, num_classes)
  return run_loop(cconfig, cdir, mesh, train_fn, log_record=log_record)
