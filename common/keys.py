"""Named key streams: all randomness of a run derives from config.seed through them, so a
stream's draws depend only on (seed, name, batch index), never on which batches ran before,
on an interrupted run or on the number of devices (training's own stream is separate:
training/state.py).
"""
from __future__ import annotations

import jax

# name -> the integer folded into the parent key. Fixed numbers (not a hash), so that a
# stream's draws never change when names are added.
STREAMS: dict[str, int] = {
    "sample": 1,        # sample mode: prior draws and sampler noise, per batch
    "eval_data": 2,     # eval mode, toy data: the evaluation points, per batch
    "bpd": 3,           # eval mode: the likelihood's trace-estimator and dequantization noise
    "demo": 4,          # demo mode: fresh data, samples, likelihood points
    "rf_eval": 5,       # rf_eval mode: straightness, NFE table, data, noise floor
    "reflow": 6,        # reflow_data mode: the prior draws z of each shard
    "snapshot": 7,      # training: the sample grid drawn every snapshot_freq steps
    "eval_loss": 8,     # training: held-out loss every eval_freq steps (toy data, noise)
    "eval_loss_set": 9,  # eval mode: the evaluation loss's noise, per batch
    "controlled": 10,   # sample mode, task inpaint/colorize/class: sampler noise, per batch
    "controlled_inputs": 11,  # that mode, toy data, inputs "eval": the input points
    "mask": 12,         # that mode, mask "random": the random masks, per batch
    # Classifier training: the accuracy batch of each logged step, folded into the
    # classifier's step key fold_in(state.key, step) (`fold_stream`), not into the seed's
    # key, so it never reuses a training draw.
    "classifier_accuracy": 0x0ACC,
}


def fold_stream(key: jax.Array, name: str) -> jax.Array:
  """fold_in(key, STREAMS[name]): stream `name` below the parent `key`."""
  if name not in STREAMS:
    raise ValueError(f"unknown key stream {name!r}; add it to common.keys.STREAMS "
                     f"(known: {', '.join(STREAMS)})")
  return jax.random.fold_in(key, STREAMS[name])


def stream_key(seed: int, name: str) -> jax.Array:
  """fold_in(PRNGKey(seed), STREAMS[name]), the key of stream `name` for `seed`; batch i
  of the stream uses fold_in(stream_key(seed, name), i). A new use of randomness takes a
  new name."""
  return fold_stream(jax.random.PRNGKey(int(seed)), name)
