"""Placement on the device mesh: a 1-D mesh over all devices with axis 'data', or with
fully sharded data parallelism a 2-D mesh ('data', 'fsdp'); batches split over every
device, parameters and train state replicated, or split along 'fsdp'. Library functions
never name the axes; only the code that places arrays (training, the mode drivers) does.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common.errors import UserError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A 1-D mesh over all (global) devices with axis name 'data'; with fsdp > 1 a 2-D
  mesh (n / fsdp, fsdp) with axes ('data', 'fsdp'), the fsdp devices of a row
  consecutive in jax.devices() order (the same host where they can be). Raises
  UserError when fsdp does not divide the device count."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  fsdp = int(fsdp)
  if fsdp == 1:
    return Mesh(devices, (DATA_AXIS,))
  if fsdp < 1 or devices.size % fsdp:
    raise UserError(f"config.training.fsdp = {fsdp} must be a positive divisor of the "
                    f"number of devices ({devices.size})")
  return Mesh(devices.reshape(devices.size // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def _batch_axes(mesh: Mesh):
  # A batch is split over every device, whichever axes the mesh has.
  return tuple(mesh.axis_names) if len(mesh.axis_names) > 1 else DATA_AXIS


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, train state)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of one batch (P('data')) or of a stack of them (P(None, 'data')); on a
  2-D mesh split over both axes (P(('data', 'fsdp')))."""
  axes = _batch_axes(mesh)
  return NamedSharding(mesh, P(None, axes) if stacked else P(axes))


def leaf_sharding(mesh: Mesh, shape: tuple[int, ...], dtype) -> NamedSharding:
  """Where one train-state array lives: on a mesh with an 'fsdp' axis of size f, a
  floating-point array is split along 'fsdp' on its largest dimension that f divides
  (the first of equal ones); arrays with no such dimension (small biases, scalars),
  integer arrays (the step, PRNG keys) and every array on a mesh without 'fsdp' are
  replicated. Nothing is padded."""
  if FSDP_AXIS not in mesh.axis_names or not jnp.issubdtype(dtype, jnp.floating):
    return replicated(mesh)
  f = mesh.shape[FSDP_AXIS]
  dims = [d for d, n in enumerate(shape) if n % f == 0]
  if not dims:
    return replicated(mesh)
  d = max(dims, key=lambda d: (shape[d], -d))
  return NamedSharding(mesh, P(*([None] * d), FSDP_AXIS))


def state_sharding(tree: Any, mesh: Mesh) -> Any:
  """The shardings of a train state (or of its jax.ShapeDtypeStruct shapes) on `mesh`,
  leaf by leaf (`leaf_sharding`): all replicated on a 1-D mesh."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, np.shape(x), x.dtype), tree)


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



def to_host(x: Any) -> Any:
  """Host numpy copies of a pytree of arrays, also of global arrays split over the
  devices of several processes (gathered from every process: a collective, so every
  process must call it)."""
  def fetch(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(fetch, x)
