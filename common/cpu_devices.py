"""How many devices JAX's CPU backend shows: one per core with `set_cpu_devices("auto")`,
so that a batch split over the mesh (common/mesh.py) runs on every core at once."""
from __future__ import annotations

import os

from common.errors import UserError


def available_cores() -> int:
  """The CPU cores this process may run on (its affinity mask, else os.cpu_count())."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def parse_cpu_devices(value: str | int, what: str = "--cpu_devices") -> int:
  """'auto' -> available_cores(); a positive integer (or its string) -> itself. Raises
  UserError naming the bad value otherwise."""
  text = str(value).strip().lower()
  if text == "auto":
    return available_cores()
  try:
    n = int(text)
  except ValueError:
    n = 0
  if n < 1:
    raise UserError(f"{what} = {value!r}: expected 'auto' (one device per CPU core, "
                    f"{available_cores()} here) or a positive integer")
  return n


def set_cpu_devices(value: str | int, what: str = "--cpu_devices") -> int:
  """Makes JAX's CPU backend show `value` devices ('auto': one per core); returns the
  count. Must run before JAX starts its backends (before the first array or
  jax.devices() call).

  Why: XLA's CPU backend runs the elementwise and reduction parts of a network on fewer
  threads than there are cores (measured: 1.2 cores busy on average for the reduced
  NCSN++ forward on 2 cores), while a batch split over one device per core keeps every
  core busy the whole time. On the 2-core machine of BENCHMARKS.md ("Side by side") this
  took the reduced NCSN++ forward from 207 to 130 ms and its training step from 867 to
  620-657 ms. Only the CPU backend is affected (on a GPU or TPU machine the accelerators
  stay the devices); it overrides XLA_FLAGS' --xla_force_host_platform_device_count.
  Batches must then divide by the device count to be split (common.mesh.shard_outputs
  runs an indivisible sampling batch on one device; a training batch must divide). Same
  as setting the environment variable JAX_NUM_CPU_DEVICES before starting Python.
  """
  n = parse_cpu_devices(value, what)
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:  # JAX's backends already started
    raise UserError(f"{what} = {value!r} must be set before JAX starts its backends "
                    f"({e})") from None
  return n
