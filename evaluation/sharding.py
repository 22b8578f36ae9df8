"""Data parallelism for sampling and likelihood evaluation, applied at the top.

The library's samplers and likelihoods never name a device axis; here one `jax.jit`
wraps them with output shardings over the same 1-D mesh (axis 'data') as training, so XLA
partitions the batch across the devices and keeps parameters replicated. Random draws
use JAX's partitionable threefry, so the samples do not depend on the number of devices.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from training.step import batch_sharding, make_mesh, replicated


def shard_batch_outputs(fn: Callable, n_batched: int, n_outputs: int,
                        batch_size: int) -> Callable:
  """jit(fn) whose first n_batched outputs are split over the devices on axis 0.

  Falls back to `fn` on one device, or when batch_size does not divide by the device
  count (then the batch cannot be split evenly).
  """
  n_dev = jax.device_count()
  if n_dev == 1 or batch_size % n_dev:
    return fn
  mesh = make_mesh()
  outs = tuple(batch_sharding(mesh) if i < n_batched else replicated(mesh)
               for i in range(n_outputs))
  return jax.jit(fn, out_shardings=outs)


def put_batch(x) -> jax.Array:
  """Places a host batch split over the devices (replicated fallback as above)."""
  n_dev = jax.device_count()
  if n_dev == 1 or np.shape(x)[0] % n_dev:
    return jax.numpy.asarray(x)
  return jax.device_put(x, batch_sharding(make_mesh()))
