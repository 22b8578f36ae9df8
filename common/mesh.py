"""Placement on the device mesh: one 1-D mesh over all devices with axis 'data', batches
split along it, parameters and train state replicated. Library functions never name the
axis; only the code that places arrays (training, the mode drivers) does.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, train state)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of one batch (P('data')) or of a stack of them (P(None, 'data'))."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if stacked else P(DATA_AXIS))


def put_batch(batch: Any, mesh: Mesh | None = None, *, stacked: bool = False,
              whole: bool = False) -> Any:
  """This process's host batch (a pytree of arrays (B_local, ...), or (n, B_local, ...)
  with stacked=True) -> global arrays split over the mesh's 'data' axis.

  On one host B_local is the whole batch; with several, each process passes its own
  slice and the global batch is their concatenation (process p's slice goes to its own
  devices: jax.make_array_from_process_local_data). whole=True: every process passes
  the same whole global batch (drawn from the same key on each), and each device takes
  its slice of it (jax.make_array_from_callback). A batch whose global size does not
  divide by the device count (the trimmed last batch of an evaluation set) is placed
  replicated instead, which needs whole=True with several processes.
  """
  mesh = make_mesh() if mesh is None else mesh
  axis = 1 if stacked else 0
  sharding = batch_sharding(mesh, stacked)
  several = jax.process_count() > 1

  def put(x):
    x = np.asarray(x)
    if x.shape[axis] * (1 if whole else jax.process_count()) % mesh.size:
      if several and not whole:
        raise ValueError(f"a batch of {x.shape[axis]} per process does not split over "
                         f"{mesh.size} devices")
      if not several:
        return jax.device_put(x, replicated(mesh))
      return jax.make_array_from_callback(x.shape, replicated(mesh), lambda i: x[i])
    if whole and several:
      return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def shard_outputs(fn: Callable, n_batched: int, n_outputs: int, batch_size: int,
                  mesh: Mesh | None = None) -> Callable:
  """jit(fn) whose first n_batched outputs are split over the devices on axis 0 and the
  rest replicated: XLA then partitions a sampler's or likelihood's whole batch.

  Returns `fn` itself on one device, or when batch_size does not divide by the device
  count (the batch cannot be split evenly). Random draws use JAX's partitionable
  threefry, so the results do not depend on the number of devices. With several
  processes the split outputs are gathered at the end (replicated), so that every
  process can read the whole of each output (np.asarray) and process 0 can write it.
  """
  n_dev = jax.device_count()
  if n_dev == 1 or batch_size % n_dev:
    return fn
  mesh = make_mesh() if mesh is None else mesh
  outs = tuple(batch_sharding(mesh) if i < n_batched else replicated(mesh)
               for i in range(n_outputs))
  if jax.process_count() == 1:
    return jax.jit(fn, out_shardings=outs)

  def gathered(*args, **kwargs):
    # The constraint keeps the batch split while it is computed; the replicated
    # out_shardings below add one all-gather of the finished outputs.
    results = fn(*args, **kwargs)
    single = n_outputs == 1 and not isinstance(results, tuple)
    results = (results,) if single else tuple(results)
    results = tuple(jax.lax.with_sharding_constraint(r, s) if i < n_batched else r
                    for i, (r, s) in enumerate(zip(results, outs)))
    return results[0] if single else results

  return jax.jit(gathered, out_shardings=replicated(mesh))

