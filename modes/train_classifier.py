"""`main.py --mode train_classifier`: the noise-conditional classifier of
config.classifier for classifier guidance, in <workdir>/classifier (training/classifier.py),
resumable."""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

import data as data_lib
import sde_lib
from common.io import append_record_to
from common.keys import fold_stream
from common.mesh import batch_sharding, make_mesh, replicated
from training import checkpoint, optim
from training.classifier import (METRICS_FILE, _accuracy_fn, _check, _check_settings,
                                 _eps, _image_arrays, _make_data_fn, classifier_config,
                                 classifier_workdir, get_classifier_train_fn)
from training.loop import NonFiniteLossError, check_workdir
from training.state import TrainState, abstract_train_state, create_train_state


def train_classifier(config, workdir: str) -> TrainState:
  """Trains the noise-conditional classifier of `config.classifier` for the process of
  `config` until config.classifier.training.n_iters steps, resuming from the latest
  checkpoint in workdir/classifier; returns the final state (EMA in `ema_params`).

  Raises UserError for a bad classifier config or unlabeled data, WorkdirError for an
  unwritable workdir, NonFiniteLossError if the loss becomes NaN or inf (nothing saved).
  """
  cconfig = classifier_config(config)
  cdir = check_workdir(classifier_workdir(check_workdir(workdir)))
  mesh = make_mesh()
  num_classes = _check(config, cconfig, mesh.size)
  _check_settings(config, cdir)
  image_data = not data_lib.is_toy(config)
  arrays = None
  if image_data:
    arrays = jax.device_put(_image_arrays(config, num_classes), replicated(mesh))
  train_fn = get_classifier_train_fn(config, mesh, image_data=image_data)
  sde = sde_lib.get_sde(config)
  accuracy_fn = _accuracy_fn(sde, _eps(config))
  batch_size, sharding = int(cconfig.training.batch_size), batch_sharding(mesh)

  @jax.jit
  def accuracy(classifier, arrays, key):
    d_key, n_key = jax.random.split(key)
    batch = _make_data_fn(config, batch_size, sharding, arrays)(d_key)
    return accuracy_fn(classifier, batch, n_key)

  optimizer = optim.get_optimizer(cconfig)
  manager = checkpoint.make_manager(cconfig, cdir)
  try:
    latest = manager.latest_step()
    if latest is None:
      state = jax.device_put(create_train_state(cconfig, optimizer),
                             replicated(mesh))
      logging.info("training a %s classifier in %s", cconfig.model.name, cdir)
    else:
      state, _ = checkpoint.restore(manager, abstract_train_state(cconfig, optimizer),
                                    step=latest, sharding=replicated(mesh))
      logging.info("resumed the classifier from step %d in %s", latest, cdir)
    tc = cconfig.training
    n_iters, n_jit, log_freq = int(tc.n_iters), int(tc.n_jitted_steps), int(tc.log_freq)
    save_freqs = (int(tc.get("snapshot_freq_for_preemption", 0)),
                  int(tc.get("snapshot_freq", 0)))
    step = int(jax.device_get(state.step))
    last_saved = latest
    crossed = lambda a, b, f: f > 0 and b // f > a // f
    while step < n_iters:
      n = min(n_jit - step % n_jit, n_iters - step)
      state, metrics = train_fn(state, arrays, n)
      losses = np.asarray(jax.device_get(metrics["loss"]))
      bad = np.flatnonzero(~np.isfinite(losses))
      if bad.size:
        raise NonFiniteLossError(step + int(bad[0]), float(losses[bad[0]]), last_saved,
                                 checkpoint.checkpoint_dir(cdir))
      before, step = step, step + n
      if crossed(before, step, log_freq) or step == n_iters:
        # Accuracy of the EMA weights on a fresh batch at fresh times (a named stream
        # below the step's own key, so it never reuses a training draw).
        k = fold_stream(jax.random.fold_in(state.key, step), "classifier_accuracy")
        acc = float(accuracy(state.model(ema=True), arrays, k))
        logging.info("classifier step %d/%d  loss %.4f  accuracy %.3f", step, n_iters,
                     float(losses.mean()), acc)
        if jax.process_index() == 0:
          append_record_to(os.path.join(cdir, METRICS_FILE), {
              "step": step, "loss": float(losses.mean()), "accuracy": acc,
              "grad_norm": float(np.asarray(metrics["grad_norm"])[-1])})
      if any(crossed(before, step, f) for f in save_freqs) or step == n_iters:
        checkpoint.save(manager, state)
        last_saved = step
    return state
  finally:
    manager.close()


run = train_classifier
