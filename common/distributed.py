"""Starting JAX's multi-controller runtime (`jax.distributed`) for `--multihost` runs:
where the coordinator, the process count and this process's id come from, gloo
collectives for CPU devices, and the timeouts after which a process whose peer died or
never came stops with an error instead of waiting (README "Scaling out").
"""
from __future__ import annotations

import os
from typing import Mapping, NamedTuple

from common.errors import UserError

# Seconds. A process that has not connected after INITIALIZATION_TIMEOUT stops every
# other; one that sends no heartbeat for HEARTBEAT_TIMEOUT (killed, host down) makes the
# coordination service abort every other process ("Terminating process because the JAX
# distributed service detected fatal errors ... stopped sending heartbeats"), about
# HEARTBEAT_TIMEOUT seconds after the death. At a normal end each process waits at most
# SHUTDOWN_TIMEOUT for the slowest one to finish.
INITIALIZATION_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 60
SHUTDOWN_TIMEOUT = 300

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# Launchers whose variables give the process count and id; (count, id, name). JAX reads
# the same ones (and TPU pods' metadata) when a value is left unset.
_CLUSTERS = (("SLURM_NTASKS", "SLURM_PROCID", "SLURM"),
             ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI"))


class Launch(NamedTuple):
  """What `jax.distributed.initialize` gets: a None is left to JAX's cluster detection
  (SLURM, Open MPI, TPU pods). `source`: the launcher, "flags/JAX_*" or "TPU pod"."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str


def _int(value, what: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserError(f"{what} = {value!r} is not an integer") from None


def cluster_processes(environ: Mapping[str, str] | None = None
                      ) -> tuple[int, int, str] | None:
  """(process count, process id, launcher name) from a launcher's variables (SLURM's
  SLURM_NTASKS/SLURM_PROCID, Open MPI's), or None outside such a launcher."""
  environ = os.environ if environ is None else environ
  for count, index, name in _CLUSTERS:
    if count in environ and index in environ:
      return (_int(environ[count], count), _int(environ[index], index), name)
  return None


def resolve_launch(coordinator_address: str | None = None,
                   num_processes: int | None = None, process_id: int | None = None,
                   environ: Mapping[str, str] | None = None) -> Launch:
  """The coordinator address, process count and process id of this process: each from
  its argument (the --coordinator_address/--num_processes/--process_id flags), else
  from JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, else from the cluster
  (SLURM, Open MPI; None: JAX asks the TPU pod).

  Raises UserError for a count or id that is not an integer, a count below 1, an id
  outside 0..count-1, a count or id that disagrees with the launcher's, and a count or
  id given without a coordinator where no launcher can supply one.
  """
  environ = os.environ if environ is None else environ
  address = coordinator_address or environ.get(ENV_COORDINATOR) or None
  count = _int(num_processes, "--num_processes")
  if count is None:
    count = _int(environ.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
  index = _int(process_id, "--process_id")
  if index is None:
    index = _int(environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
  source = "flags/JAX_*"
  cluster = cluster_processes(environ)
  if cluster is not None:
    c_count, c_index, name = cluster
    if count is not None and count != c_count:
      raise UserError(f"the process count {count} (--num_processes or "
                      f"{ENV_NUM_PROCESSES}) disagrees with {name}'s {c_count}")
    if index is not None and index != c_index:
      raise UserError(f"the process id {index} (--process_id or {ENV_PROCESS_ID}) "
                      f"disagrees with {name}'s {c_index}")
    count, index, source = c_count, c_index, name
  elif address is None:
    if count is not None or index is not None:
      raise UserError(f"--multihost with a process count or id but no coordinator: pass "
                      f"--coordinator_address=HOST:PORT or set {ENV_COORDINATOR}")
    source = "TPU pod"
  elif count is None or index is None:
    raise UserError(f"--multihost with coordinator {address!r} also needs the process "
                    f"count and this process's id: --num_processes and --process_id, or "
                    f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}")
  if count is not None and count < 1:
    raise UserError(f"the process count must be at least 1; got {count}")
  if count is not None and index is not None and not 0 <= index < count:
    raise UserError(f"process id {index} is out of range for {count} processes "
                    f"(0..{count - 1})")
  if address is not None and (":" not in address or not address.rsplit(":", 1)[1]
                              .isdigit()):
    raise UserError(f"coordinator address {address!r} is not HOST:PORT")
  return Launch(address, count, index, source)


def initialize_distributed(processes: str = "per_device", *,
                           coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           initialization_timeout: int = INITIALIZATION_TIMEOUT,
                           heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
                           shutdown_timeout: int = SHUTDOWN_TIMEOUT) -> Launch:
  """jax.distributed.initialize with the values of `resolve_launch`, gloo collectives
  for CPU devices (without them CPU processes cannot exchange data), and the timeouts
  above (seconds). Must run before anything touches a JAX device.

  processes: "per_device" (one process per accelerator: SLURM's default, TPU pods) or
  "per_host": every local GPU belongs to this process (local_device_ids), which JAX's
  SLURM detection would otherwise narrow to one.
  """
  import jax
  if processes not in ("per_device", "per_host"):
    raise UserError(f"unknown --processes {processes!r}; choices: per_device, per_host")
  if min(initialization_timeout, heartbeat_timeout, shutdown_timeout) < 1:
    raise UserError("the distributed timeouts must be at least 1 s; got "
                    f"{initialization_timeout}, {heartbeat_timeout}, {shutdown_timeout}")
  launch = resolve_launch(coordinator_address, num_processes, process_id)
  # Only the CPU backend reads this; GPU and TPU collectives are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  local_device_ids = None
  if processes == "per_host":
    n_local = _local_gpu_count()
    local_device_ids = list(range(n_local)) if n_local else None
  try:
    jax.distributed.initialize(
        launch.coordinator_address, launch.num_processes, launch.process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=int(initialization_timeout),
        heartbeat_timeout_seconds=int(heartbeat_timeout),
        shutdown_timeout_seconds=int(shutdown_timeout))
  except ValueError as e:
    # JAX found no cluster to fill in what is missing (not SLURM, not a TPU pod).
    raise UserError(f"--multihost: {e} (no cluster detected; pass --coordinator_address, "
                    f"--num_processes and --process_id, or set {ENV_COORDINATOR}, "
                    f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})") from None
  return launch


def _local_gpu_count(environ: Mapping[str, str] | None = None) -> int:
  """GPUs visible to this process (CUDA_VISIBLE_DEVICES, else /proc/driver/nvidia), 0 if
  none are known (TPU hosts: JAX finds the local chips itself)."""
  environ = os.environ if environ is None else environ
  visible = environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return len([d for d in visible.split(",") if d.strip()])
  gpus = "/proc/driver/nvidia/gpus"
  return len(os.listdir(gpus)) if os.path.isdir(gpus) else 0
