"""Asynchronous checkpoint saves (training/checkpoint.py): the checksum file is written
into orbax's temporary step directory before the commit, a non-blocking save is complete
and verified once the manager is closed, and the finiteness check runs on the device."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from training import checkpoint
from training.state import TrainState

CONFIG = ml_collections.ConfigDict({"training": {"keep_checkpoints": 3, "snapshot_freq": 0}})


def _state(step: int) -> TrainState:
  params = {"w": jnp.arange(1000.0) / 7.0, "b": jnp.ones((3, 4))}
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, model_state={},
                    opt_state=optax.adam(1e-3).init(params),
                    ema_params=jax.tree.map(lambda p: p * 0.5, params),
                    key=jax.random.key_data(jax.random.key(1)), graphdef=None)


def test_non_blocking_saves_commit_with_their_checksums(tmp_path, monkeypatch):
  written = []
  real = checkpoint.write_manifest
  monkeypatch.setattr(checkpoint, "write_manifest",
                      lambda d: written.append(os.fspath(d)) or real(d))
  manager = checkpoint.make_manager(CONFIG, str(tmp_path))
  try:
    for step in (1, 2, 3):
      checkpoint.save(manager, _state(step), {"position": step}, block=False)
  finally:
    manager.close()  # waits for the last save
  directory = checkpoint.checkpoint_dir(str(tmp_path))
  # Each manifest went into the step's temporary directory, before orbax renamed it.
  assert written == [checkpoint.step_dir(directory, s) + ".orbax-checkpoint-tmp"
                     for s in (1, 2, 3)]
  assert checkpoint.all_steps(str(tmp_path)) == [1, 2, 3]
  for s in (1, 2, 3):
    where = checkpoint.step_dir(directory, s)
    assert checkpoint.is_verified(where) and checkpoint.verify_checksums(where) is None
  restored = ocp.StandardCheckpointer().restore(os.path.join(where, "state"))
  np.testing.assert_array_equal(restored["params"]["w"], np.asarray(_state(3).params["w"]))
  assert int(restored["step"]) == 3


def test_non_finite_parts_are_found_on_the_device_and_never_saved(tmp_path):
  state = _state(4)
  assert checkpoint.non_finite_parts(state) == []
  bad = state.replace(ema_params={**state.ema_params,
                                  "b": state.ema_params["b"].at[1, 2].set(jnp.inf)})
  assert checkpoint.non_finite_parts(bad) == ["ema_params"]
  assert checkpoint.non_finite_parts(bad, ("params",)) == []
  manager = checkpoint.make_manager(CONFIG, str(tmp_path))
  try:
    with pytest.raises(FloatingPointError, match="EMA parameters are not all finite"):
      checkpoint.save(manager, bad, block=False)
    checkpoint.save(manager, state, block=False)  # the queue of manifests is intact
  finally:
    manager.close()
  assert checkpoint.all_steps(str(tmp_path)) == [4]
  assert checkpoint.is_verified(checkpoint.step_dir(
      checkpoint.checkpoint_dir(str(tmp_path)), 4))
