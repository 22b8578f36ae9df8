"""Checkpoints with orbax's CheckpointManager: one directory per saved step (orbax writes
each into a temporary directory renamed on success, in a background thread) with a
sha256.json of its files written before that rename; nothing non-finite is saved
(`save`) and every restore is verified (`restore`).
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import threading
import weakref
from collections import deque
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from absl import logging as absl_logging
from jax.sharding import Sharding, SingleDeviceSharding

from common.errors import MissingFileError, UserError
from common import io as cio
from common.io import add_key_source, atomic_file, file_sha256
from training import run_record
from training.state import TrainState, abstract_train_state

CHECKPOINT_SUBDIR = "checkpoints"
MANIFEST_FILE = "sha256.json"
# The parts of the state that must be finite to train from (all of it).
ALL_PARTS = ("params", "model_state", "opt_state", "ema_params")


class CheckpointError(UserError):
  """No checkpoint that could be restored: corrupt, unreadable or non-finite; the
  message names each path and what is wrong with it."""


class NonFiniteCheckpointError(CheckpointError, FloatingPointError):
  """The only checkpoints there are hold NaN or inf."""


class _OrbaxInfoFilter(logging_std.Filter):
  """Drops orbax's INFO records (a dozen lines per save) from absl's log, and its
  warnings that a read-only manager is read only (the read path asks for that); keeps
  its other warnings and errors."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.levelno < logging_std.WARNING:
      return False
    message = record.getMessage()
    # The read path opens the manager read-only on purpose, and reads the metadata of
    # steps saved without the optional per-item metadata file.
    return not ("read only" in message or "read_only=True" in message
                or "Metadata file does not exist" in message)


_FILTER = _OrbaxInfoFilter()


def quiet_orbax_logging() -> None:
  """Keeps orbax's INFO messages and read-only notices out of the log (idempotent)."""
  logger = absl_logging.get_absl_logger()
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)


def checkpoint_dir(workdir: str) -> str:
  """workdir/checkpoints (absolute; an object-store URL stays one: common.io.join)."""
  return cio.join(workdir, CHECKPOINT_SUBDIR)


def step_dir(directory: str, step: int) -> str:
  """The directory of checkpoint `step` under `directory` (workdir/checkpoints)."""
  return os.path.join(os.fspath(directory), str(int(step)))


def _preservation_options(keep: int, snapshot_freq: int) -> dict[str, Any]:
  keep = max(int(keep), 1)
  cm = getattr(ocp, "checkpoint_managers", None)
  if cm is not None and hasattr(cm, "AnyPreservationPolicy"):
    policies = [cm.LatestN(keep)]
    if snapshot_freq > 0:
      policies.append(cm.EveryNSteps(int(snapshot_freq)))
    return {"preservation_policy": cm.AnyPreservationPolicy(policies)}
  # Older orbax: the same policy through the delete options.
  return {"max_to_keep": keep, "keep_period": int(snapshot_freq) or None}


class _Manifests:
  """Writes each step's sha256.json from orbax's post-finalization callback: in the
  background save thread of the primary process, after every process has written the
  step and before orbax renames its temporary directory (or, on a file system without
  renames, writes its commit marker), so a committed step always has its checksums."""

  def __init__(self, directory: str):
    self.directory = directory
    self.pending: deque[int] = deque()  # steps saved and not yet committed, in order
    self.lock = threading.Lock()

  def push(self, step: int) -> None:
    with self.lock:
      self.pending.append(int(step))

  def on_commit(self) -> None:
    with self.lock:
      step = self.pending.popleft()
    final = step_dir(self.directory, step)
    # orbax's temporary name of the step (atomicity_types.TMP_DIR_SUFFIX); without a
    # rename (object stores) the final directory is written directly.
    tmp = final + ".orbax-checkpoint-tmp"
    write_manifest(tmp if cio.isdir(tmp) else final)


# The manifest writer of each manager that `make_manager` opened for writing.
_MANIFESTS: "weakref.WeakKeyDictionary[ocp.CheckpointManager, _Manifests]" = (
    weakref.WeakKeyDictionary())


def make_manager(config, workdir: str, *, read_only: bool = False
                 ) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir/checkpoints` (saves are asynchronous: `save`;
  the loop decides when to save and passes force=True). Layout:

      workdir/checkpoints/<step>/state/       the TrainState's arrays (step, params,
                                              model_state, opt_state, ema_params, key);
                                              the graphdef is rebuilt from the config
      workdir/checkpoints/<step>/data/        JSON: the host data iterator's position
      workdir/checkpoints/<step>/sha256.json  {relative path: {"sha256", "size"}} of
                                              every other file of the step, written
                                              after orbax wrote them, before it
                                              commits the step (`_Manifests`)

  Kept: the latest `config.training.keep_checkpoints`, plus every multiple of
  `config.training.snapshot_freq` for good. `close()` waits for the last save.
  """
  quiet_orbax_logging()
  tc = config.training
  directory = checkpoint_dir(workdir)
  manifests = _Manifests(directory)
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=True, create=not read_only, read_only=read_only,
      async_options=ocp.AsyncOptions(post_finalization_callback=manifests.on_commit),
      # Leftovers of a save that a killed process never finished.
      cleanup_tmp_directories=not read_only,
      **_preservation_options(tc.get("keep_checkpoints", 3), tc.get("snapshot_freq", 0)))
  manager = ocp.CheckpointManager(directory, options=options,
                                  item_names=("state", "data"))
  _MANIFESTS[manager] = manifests
  return manager


# ---------------------------------------------------------------------------------------
# Finiteness and checksums.

@jax.jit
def _all_finite(parts: dict) -> dict:
  # One boolean per part, reduced where the arrays are (no host copy of the state).
  return {name: jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
       if jnp.issubdtype(x.dtype, jnp.inexact)] or [True]))
          for name, tree in parts.items()}


def non_finite_parts(state: Any, parts: Sequence[str] = ALL_PARTS) -> list[str]:
  """The names in `parts` of the state's sub-trees that hold a NaN or inf (floating
  leaves only; integer counters are always finite). Reduced on the device: only one
  boolean per part comes to the host."""
  finite = jax.device_get(_all_finite({name: getattr(state, name) for name in parts}))
  return [name for name in parts if not bool(finite[name])]


_PART_NAMES = {"params": "parameters", "model_state": "model state",
               "opt_state": "optimizer state", "ema_params": "EMA parameters"}


def describe_parts(parts: Sequence[str]) -> str:
  return ", ".join(_PART_NAMES.get(p, p) for p in parts)


# The files of a step that orbax writes or rewrites as it commits the step, after the
# manifest (the step metadata gets its commit time): bookkeeping, not read by a restore.
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")


def _files(directory: str) -> list[str]:
  return [rel for rel in cio.relative_files(directory)
          if rel != MANIFEST_FILE and rel not in _COMMIT_FILES]


def write_manifest(directory: str) -> str:
  """Writes directory/sha256.json with the sha256 and size of every other file under
  `directory` (atomically, common.io.atomic_file); returns its path."""
  manifest = {rel: {"sha256": file_sha256(os.path.join(directory, rel)),
                    "size": cio.file_size(os.path.join(directory, rel))}
              for rel in _files(directory)}
  path = os.path.join(directory, MANIFEST_FILE)
  with atomic_file(path, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  return path


def verify_checksums(directory: str) -> str | None:
  """None if every file listed in directory/sha256.json has its size and sha256, else
  what is wrong (naming the file). A step without sha256.json passes (it cannot be
  checked; `restore` warns)."""
  path = os.path.join(directory, MANIFEST_FILE)
  if not cio.exists(path):
    return None
  try:
    manifest = json.loads(cio.read_text(path))
  except (OSError, ValueError) as e:
    return f"the checksum file {path} is unreadable ({e})"
  for rel, entry in sorted(manifest.items()):
    file = os.path.join(directory, rel)
    if not cio.exists(file):
      return f"{file} is missing"
    if cio.file_size(file) != int(entry["size"]):
      return f"{file} has {cio.file_size(file)} bytes, {entry['size']} were saved"
    if file_sha256(file) != entry["sha256"]:
      return f"{file} does not match its saved sha256 checksum"
  return None


def move_step(src: str, dst: str) -> None:
  """Moves the step folder `src` to `dst` (a damaged step set aside), creating dst's
  parent. Locally a rename; an object store (common.io.is_remote) has no rename, so each
  object is copied through etils.epath and `src` is deleted once every copy is written
  (a kill in between leaves both, never neither)."""
  if not cio.is_remote(src):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.rename(src, dst)
    return
  from etils import epath
  for rel in cio.relative_files(src):
    with atomic_file(f"{dst}/{rel}", "wb") as f:
      f.write(cio.read_bytes(f"{src}/{rel}"))
  epath.Path(src).rmtree()


# ---------------------------------------------------------------------------------------
# Saving.

def save(manager: ocp.CheckpointManager, state: TrainState,
         data_state: dict | None = None, *, block: bool = True) -> None:
  """Saves `state` (and the data iterator's JSON position) under its step; its checksums
  are written before orbax commits the step (`_Manifests`). block=False returns once
  the arrays are copied to the host (the training loop: the write and the commit go on
  in orbax's background thread; the next `save` or `manager.close()` waits for them);
  block=True waits for the commit. Raises FloatingPointError, saving nothing, when any
  of the state's parameters, EMA, model state or optimizer state is not finite."""
  step = int(jax.device_get(state.step))
  bad = non_finite_parts(state)
  if bad:
    raise FloatingPointError(f"not saving the state of step {step}: its "
                             f"{describe_parts(bad)} are not all finite")
  # orbax waits for the previous save before starting this one, so the steps commit in
  # the order they are pushed.
  manager.wait_until_finished()
  manifests = _MANIFESTS[manager]
  if jax.process_index() == 0:
    manifests.push(step)
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {})), force=True)
  except BaseException:
    if jax.process_index() == 0 and manifests.pending and manifests.pending[-1] == step:
      manifests.pending.pop()
    raise
  if block:
    manager.wait_until_finished()


# ---------------------------------------------------------------------------------------
# Restoring.

def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path(path) -> tuple[str, ...]:
  return tuple(_key_name(k) for k in path)


def _saved_shapes(directory: str) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{key path: shape} of the arrays saved in `directory`/state (orbax's metadata)."""
  meta = ocp.StandardCheckpointer().metadata(os.path.join(directory, "state"))
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  return {_path(p): tuple(getattr(leaf, "shape", ()) or ())
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _target_shapes(abstract: TrainState) -> dict[tuple[str, ...], tuple[int, ...]]:
  # orbax saves an nnx Variable's array under the key "value"; the abstract state's
  # paths name it the same way.
  return {_path(p): tuple(leaf.shape)
          for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def _without_backbone(path: tuple[str, ...]) -> tuple[str, ...]:
  return tuple(k for k in path if k != "backbone")


def _structure_plan(saved: dict, target: dict, where: str) -> dict | None:
  """None when the saved tree equals the target's; a map target path -> saved path when
  the saved tree is the target's without the `backbone` level (old checkpoints); raises
  UserError otherwise (the config's network differs from the saved one)."""
  if saved == target:
    return None
  plan = {t: _without_backbone(t) for t in target}
  if (any(t != s for t, s in plan.items()) and len(set(plan.values())) == len(plan)
      and set(plan.values()) == set(saved)
      and all(saved[plan[t]] == shape for t, shape in target.items())):
    return plan
  if set(plan.values()) == set(saved) and len(set(plan.values())) == len(plan):
    # An old checkpoint of another network size: report the shapes, not the level.
    target = {plan[t]: shape for t, shape in target.items()}
  missing = sorted(set(target) - set(saved))
  extra = sorted(set(saved) - set(target))
  differ = sorted(p for p in set(saved) & set(target) if saved[p] != target[p])
  details = []
  if differ:
    p = differ[0]
    details.append(f"{len(differ)} arrays differ in shape, e.g. {'/'.join(p)} saved "
                   f"{saved[p]}, config {target[p]}")
  if missing:
    details.append(f"{len(missing)} arrays of the config's network are not saved, e.g. "
                   f"{'/'.join(missing[0])}")
  if extra:
    details.append(f"{len(extra)} saved arrays are not in the config's network, e.g. "
                   f"{'/'.join(extra[0])}")
  raise UserError(f"the checkpoint {where} holds a different network than config.model "
                  f"describes ({'; '.join(details)}): use the config it was trained with, "
                  "or another --workdir")


def _with_sharding(abstract: Any, sharding: Any) -> Any:
  """The restore target: every leaf placed with `sharding`, or leaf by leaf when it is
  a tree of shardings like `abstract` (common.mesh.state_sharding): orbax then reads
  each device's part of a checkpoint written on any number of devices."""
  if sharding is None or isinstance(sharding, Sharding):
    one = sharding or SingleDeviceSharding(jax.devices()[0])
    sharding = jax.tree.map(lambda _: one, abstract)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, sharding)


def _restore_step(manager, step: int, abstract: TrainState, sharding, plan
                  ) -> tuple[TrainState, dict]:
  target = _with_sharding(abstract, sharding)
  if plan is None:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    # The graphdef is static and comes from the abstract state, not from disk.
    state = restored["state"].replace(graphdef=abstract.graphdef)
    return state, dict(restored["data"] or {})
  # Migration: restore the saved (old) tree as it is on disk, then put each array where
  # the new tree has it, placed as the target asks.
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
  old = {_path(p): leaf
         for p, leaf in jax.tree_util.tree_flatten_with_path(restored["state"])[0]}
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  leaves = [jax.device_put(np.asarray(old[plan[_path(p)]], t.dtype), t.sharding)
            for p, t in flat]
  state = jax.tree_util.tree_unflatten(treedef, leaves).replace(graphdef=abstract.graphdef)
  return state, dict(restored["data"] or {})


# Whether a checkpoint without its checksum file may be restored when no verified one
# exists (main.py --accept_unverified_checkpoint; `accept_unverified`).
_ACCEPT_UNVERIFIED = [False]


def accept_unverified(accept: bool = True) -> None:
  """Allows restoring a checkpoint that has no checksum file (written before checksums
  existed, or cut between its save and its manifest) when no verified one exists."""
  _ACCEPT_UNVERIFIED[0] = bool(accept)


def is_verified(directory: str) -> bool:
  """Whether the step directory has a checksum file (its files are checked on restore)."""
  return cio.exists(os.path.join(directory, MANIFEST_FILE))


def content_digest(workdir: str, step: int) -> str:
  """What the checkpoint at `step` holds, as one hash: the SHA-256 of its checksum file
  (which lists every file's SHA-256 and size), so two checkpoints with the same step but
  other contents differ. For a checkpoint without one (accepted unverified), the SHA-256
  over its files' hashes, computed now."""
  where = step_dir(checkpoint_dir(workdir), int(step))
  manifest = os.path.join(where, MANIFEST_FILE)
  if cio.exists(manifest):
    return file_sha256(manifest)
  import hashlib
  h = hashlib.sha256()
  for rel in _files(where):
    h.update(f"{rel}\0{file_sha256(os.path.join(where, rel))}\n".encode())
  return "unverified-" + h.hexdigest()


def _result_key(workdir: str, kind: str, settings: dict) -> dict:
  """What every result folder's key (common.io.result_dir) adds to its settings: the
  contents of the checkpoint at settings["step"] in `workdir` (`content_digest`, not
  the step number: a retrained or re-imported checkpoint at the same step is another
  model) and of the data files under settings["data"]["data_dir"]."""
  out = {}
  step = settings.get("step")
  if isinstance(step, int) and not isinstance(step, bool) and cio.isdir(
      step_dir(checkpoint_dir(workdir), step)):
    out["checkpoint_sha256"] = content_digest(workdir, step)
  data = settings.get("data")
  if isinstance(data, dict) and data.get("data_dir"):
    files = run_record.files_fingerprint([str(data["data_dir"])], workdir)
    if files:
      out["data_sha256"] = files["digest"]
  return out


add_key_source(_result_key)


def _check_step(manager, step: int, abstract, sharding, parts):
  """(state, data, None) for an intact step, or (None, None, problem)."""
  where = step_dir(manager.directory, step)
  problem = verify_checksums(where)
  if problem:  # names the damaged file, which names the step
    return None, None, problem
  try:
    saved = _saved_shapes(where)
  except Exception as e:  # noqa: BLE001 - any unreadable metadata is a corrupt step
    return None, None, f"checkpoint {where} is unreadable ({type(e).__name__}: {e})"
  try:
    plan = _structure_plan(saved, _target_shapes(abstract), where)
  except UserError as e:
    if is_verified(where):
      raise  # intact files of another network: the config's model changed
    return None, None, f"unverified and unreadable as this network: {e}"
  if plan is not None:
    logging.warning("checkpoint %s was written before the networks moved under "
                    "'backbone' (models/precond.py): migrating it", where)
  try:
    state, data = _restore_step(manager, step, abstract, sharding, plan)
  except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged file
    text = " ".join(str(e).split())[:300]
    return None, None, f"checkpoint {where} is unreadable ({type(e).__name__}: {text})"
  bad = non_finite_parts(state, parts)
  if bad:
    return None, None, (f"the {describe_parts(bad)} of the checkpoint at step {step} "
                        f"in {manager.directory} are not all finite ({where})")
  return state, data, None


def restore(manager: ocp.CheckpointManager, abstract_state: TrainState, *,
            step: int | None = None, sharding: Sharding | None = None,
            finite: Sequence[str] = ALL_PARTS) -> tuple[TrainState, dict]:
  """Restores (state, data position) at `step` into the structure of `abstract_state`
  (e.g. `state.abstract_train_state(config)`), placed with `sharding` (default: the
  first device), verified (module docstring); the parts named in `finite` must be
  finite.

  Each candidate step is checked for (1) the checksums of sha256.json (a step without
  one, written before checksums existed or cut between the save and the manifest, is
  never restored while a verified one exists; with none verified, only after
  `accept_unverified()` (--accept_unverified_checkpoint), with a warning), (2) the shapes of the config's network (a mismatch is one
  UserError: the config's model changed), (3) orbax reading it and (4) finite leaves in
  `finite`. Checkpoints written before the networks moved under the preconditioning
  module's `backbone` level (models/precond.py) are migrated: their trees equal the new
  ones with that level removed.

  step=None: the newest intact checkpoint; each newer one that fails is reported (a
  warning naming its path and the problem). Raises MissingFileError when there is no
  checkpoint, UserError when the saved network differs from the config's, and
  CheckpointError (NonFiniteCheckpointError when every failure is non-finite values)
  when no candidate is intact.
  """
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [int(step)]
  if not steps:
    raise MissingFileError(f"no checkpoint in {manager.directory}")
  # A checkpoint without its checksum file is never taken while a verified one exists:
  # verified steps first (newest first), the unverified ones only as the last resort and
  # only when accepted explicitly.
  verified = [s for s in steps if is_verified(step_dir(manager.directory, s))]
  unverified = [s for s in steps if s not in verified]
  problems = [f"checkpoint {step_dir(manager.directory, s)} has no checksum file "
              f"({MANIFEST_FILE}) and cannot be verified"
              for s in unverified if verified and s > verified[0]]
  candidates = verified + (unverified if _ACCEPT_UNVERIFIED[0] else [])
  for s in candidates:
    if s in unverified:
      logging.warning("checkpoint %s has no checksum file (%s): restoring it unverified "
                      "(--accept_unverified_checkpoint)", step_dir(manager.directory, s),
                      MANIFEST_FILE)
    state, data, problem = _check_step(manager, s, abstract_state, sharding, finite)
    if problem is None:
      # Reported only when there is a fallback; with none, the error says it all once.
      for p in problems:
        logging.warning("skipped a damaged checkpoint: %s", p)
      if problems:
        logging.warning("restored the checkpoint at step %d instead (the newest intact "
                        "one)", s)
      return state, data
    problems.append(problem)
  if unverified and not _ACCEPT_UNVERIFIED[0]:
    names = ", ".join(str(s) for s in sorted(unverified))
    problems = [p for p in problems if "has no checksum file" not in p]
    problems.append(f"the checkpoints at steps {names} have no checksum file "
                    f"({MANIFEST_FILE}) and cannot be verified; to restore one anyway, "
                    "run with --accept_unverified_checkpoint")
  cls = (NonFiniteCheckpointError if all("not all finite" in p for p in problems)
         else CheckpointError)
  raise cls(f"no intact checkpoint in {manager.directory}: " + "; ".join(problems))


def restore_state(config, workdir: str, step: int | None = None,
                  optimizer: optax.GradientTransformation | None = None) -> TrainState:
  """The full TrainState saved at `step` (default: the newest intact one) in
  `workdir`."""
  directory = checkpoint_dir(workdir)
  if not cio.isdir(directory):
    raise MissingFileError(f"no checkpoint directory {directory}")
  manager = make_manager(config, workdir, read_only=True)
  try:
    state, _ = restore(manager, abstract_train_state(config, optimizer), step=step)
  finally:
    manager.close()
  return state


def all_steps(workdir: str) -> list[int]:
  """The steps with a complete checkpoint in `workdir`, ascending."""
  directory = checkpoint_dir(workdir)
  if not cio.isdir(directory):
    return []
  return sorted(int(s) for s in ocp.utils.checkpoint_steps(directory))
