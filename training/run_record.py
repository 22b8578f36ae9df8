"""The workdir's own record of what it holds: DIR/run_config.json, written atomically when
training starts a model, with the full resolved config, the code version and the data's
fingerprint. Every later run in the workdir compares the fields that define the model and
its data with it: a mismatch is one UserError listing each field with both values."""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import subprocess
from typing import Any, Iterable

from absl import logging

from common import io
from common.errors import UserError

RECORD_FILE = "run_config.json"
HASH_CACHE_FILE = ".data_hashes.json"
CHECKPOINTS_SUBDIR = "checkpoints"
# Up to this many files the record lists each one (so a change names the file).
MAX_LISTED_FILES = 2000

# Fields that define the model and its data: the process and its hyper-parameters (which
# live in config.model, as in score_sde), every architecture field, the data set and its
# shape and centering. config.model's fields count, except these, which change how the
# network is trained or run but not what it is:
MODEL_FREE = ("ema_rate", "ema_warmup", "dropout", "dtype")
DEFINING_OTHER = ("training.sde", "training.continuous", "data.dataset", "data.dim",
                  "data.image_size", "data.num_channels", "data.centered")
# Sections whose fields describe training: the other modes take the recorded values of
# those not given on their command line (e.g. snapshot_freq for eval's checkpoint range).
TRAINING_SECTIONS = ("training", "optim")

# How main.py was invoked (set_invocation): the config file and the fields overridden.
_invocation: dict[str, Any] = {"config_file": None, "overrides": (), "new_model": False}


class RecordMismatchError(UserError):
  """The config disagrees with the workdir's record on a field that defines the model."""


def set_invocation(config_file: str | None, overrides: Iterable[str],
                   new_model: bool = False) -> None:
  """main.py: the --config file and the dotted fields given as --config.<field> on the
  command line, and whether --new_model was given."""
  _invocation.update(config_file=config_file, overrides=tuple(overrides),
                     new_model=bool(new_model))


def record_path(workdir: str) -> str:
  return os.path.join(os.fspath(workdir), RECORD_FILE)


# ---------------------------------------------------------------------------------------
# Flat views of a config.

def _plain(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def flatten(config) -> dict[str, Any]:
  """{"section.field": JSON value} of every leaf of `config` (nested sections dotted)."""
  out: dict[str, Any] = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = _plain(v)

  walk(config.to_dict() if hasattr(config, "to_dict") else config, "")
  return out


def is_defining(path: str) -> bool:
  section, _, name = path.partition(".")
  if section == "model":
    return name not in MODEL_FREE
  return path in DEFINING_OTHER


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b


# ---------------------------------------------------------------------------------------
# Code version and data fingerprint.

def code_version() -> str:
  """`git describe --always --dirty` of the checkout this code runs from, else the
  installed package's version."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    r = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo,
                       capture_output=True, text=True, timeout=10)
    if r.returncode == 0 and r.stdout.strip():
      return "git " + r.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    from importlib import metadata
    return "score-flow-jax " + metadata.version("score-flow-jax")
  except Exception:  # noqa: BLE001 - no version is not an error
    return "unknown"


def _data_paths(config) -> list[str]:
  """The data files' roots this config reads: config.data.data_dir and, for reflow
  training, config.training.pairs_dir (those set)."""
  paths = [config.data.get("data_dir", "") or ""]
  paths.append(config.training.get("pairs_dir", "") or "")
  return [os.path.abspath(p) for p in paths if p]


def _files_under(root: str, skip: str) -> list[str]:
  if os.path.isfile(root):
    return [root]
  out = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs
                        if os.path.join(directory, d) != skip and not d.startswith("."))
    out += [os.path.join(directory, f) for f in sorted(files) if not f.startswith(".")]
  return out


def _cache_file(workdir: str | None) -> str:
  if workdir:
    return os.path.join(workdir, HASH_CACHE_FILE)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "score_flow_jax", "data_hashes.json")


def files_fingerprint(roots: Iterable[str], workdir: str | None = None) -> dict:
  """{"roots", "n_files", "bytes", "digest", "files"?} of the files under `roots` (files
  or directories; hidden names and `workdir` skipped): the SHA-256 over each file's
  relative path, size and content hash; {} when no root exists. Content hashes are cached
  by (path, size, mtime) in workdir/.data_hashes.json (without a workdir, in the user's
  cache folder), so a large data set is hashed once."""
  roots = [os.path.abspath(r) for r in roots if r and os.path.exists(r)]
  if not roots:
    return {}
  skip = os.path.abspath(workdir) if workdir and not io.is_remote(workdir) else ""
  cache_path = _cache_file(workdir)
  cache: dict[str, str] = {}
  if io.exists(cache_path):
    try:
      cache = dict(json.loads(io.read_text(cache_path)))
    except (OSError, ValueError, TypeError):
      cache = {}
  used: dict[str, str] = {}
  listing, total = [], 0
  digest = hashlib.sha256()
  for root in roots:
    for path in _files_under(root, skip):
      st = os.stat(path)
      key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
      sha = cache.get(key) or io.file_sha256(path)
      used[key] = sha
      rel = os.path.relpath(path, os.path.dirname(root))
      digest.update(f"{rel}\0{st.st_size}\0{sha}\n".encode())
      listing.append([rel, st.st_size, sha])
      total += st.st_size
  if any(cache.get(k) != v for k, v in used.items()):
    try:
      io.write_json(cache_path, {**cache, **used} if not workdir else used)
    except OSError:
      pass  # a read-only place (sampling from someone's run): no cache, no harm
  out: dict[str, Any] = dict(roots=roots, n_files=len(listing), bytes=total,
                             digest=digest.hexdigest())
  if len(listing) <= MAX_LISTED_FILES:
    out["files"] = listing
  return out


def data_fingerprint(config, workdir: str | None = None) -> dict:
  """What the data are: {"dataset"} for built-in data (toy distributions, the bundled
  digits), plus for files `files_fingerprint` of config.data.data_dir and (reflow
  training) config.training.pairs_dir."""
  out: dict[str, Any] = {"dataset": str(config.data.dataset)}
  out.update(files_fingerprint(_data_paths(config), workdir))
  return out


def _fingerprint_change(recorded: dict, now: dict) -> str | None:
  """One line saying how the data changed, or None when they did not."""
  if recorded.get("digest") == now.get("digest"):
    return None
  if "files" in recorded and "files" in now:
    old = {f[0]: f for f in recorded["files"]}
    new = {f[0]: f for f in now["files"]}
    changed = [n for n in new if n in old and old[n] != new[n]]
    added = [n for n in new if n not in old]
    removed = [n for n in old if n not in new]
    parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for label, names in (("changed", changed), ("added", added),
                                  ("removed", removed)) if names]
    if parts:
      return "; ".join(parts)
  return (f"{now.get('n_files')} files / {now.get('bytes')} bytes with digest "
          f"{str(now.get('digest'))[:12]}, recorded {recorded.get('n_files')} files / "
          f"{recorded.get('bytes')} bytes with digest {str(recorded.get('digest'))[:12]}")


# ---------------------------------------------------------------------------------------
# The record.

def read(workdir: str) -> dict | None:
  """The workdir's record, or None when it has none. Raises UserError when it is not
  readable JSON."""
  path = record_path(workdir)
  if not io.exists(path):
    return None
  try:
    record = json.loads(io.read_text(path))
    record["config"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is unreadable ({e.__class__.__name__}); move it away to "
                    "record this run's config afresh") from None
  return record


def write(config, workdir: str, fingerprint: dict | None = None) -> str:
  """Writes DIR/run_config.json (atomically): {"config": every field, "config_file",
  "overrides": {field: value given on the command line}, "code_version", "data",
  "created"}. Returns its path."""
  flat = flatten(config)
  record = {
      "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
      "config_file": _invocation["config_file"],
      "overrides": {p: flat[p] for p in _invocation["overrides"] if p in flat},
      "code_version": code_version(),
      "data": fingerprint if fingerprint is not None else data_fingerprint(config, workdir),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
  return io.write_json(record_path(workdir), json.loads(json.dumps(record, default=str)))


def record_import(config, workdir: str, had_model: bool) -> str | None:
  """The import mode's part: a workdir given a checkpoint from a file gets a record of
  the config it was imported with, unless it held a model before (then `resolve` has
  checked the config against that model's record). A record left by a model whose
  checkpoints were removed is replaced. Returns the path written."""
  if not _has_checkpoints(workdir) or (had_model and read(workdir) is not None):
    return None
  return write(config, workdir)


def has_model(workdir: str) -> bool:
  """Whether `workdir` holds checkpoints (a record means something only then)."""
  return _has_checkpoints(workdir)


def differences(config, record: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (recorded, given)} for every leaf whose value differs (fields present in
  only one of them included, as None on the other side)."""
  have, now = flatten(record["config"]), flatten(config)
  return {p: (have.get(p), now.get(p)) for p in sorted(set(have) | set(now))
          if not _same(have.get(p), now.get(p))}


def _mismatch(workdir: str, fields: dict[str, tuple[Any, Any]]) -> RecordMismatchError:
  listed = "; ".join(f"config.{p}: trained with {a!r}, given {b!r}"
                     for p, (a, b) in fields.items())
  return RecordMismatchError(
      f"workdir {workdir} holds another model ({record_path(workdir)}): {listed}; use "
      "the workdir's config, another --workdir, or --new_model to start a new model "
      "here (the old one is moved aside)")


def _set(config, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = config
  for name in parents:
    node = node[name]
  if isinstance(node[leaf], tuple) and isinstance(value, list):
    value = tuple(value)
  node[leaf] = value


def resolve(config, workdir: str, mode: str):
  """The config a mode runs with in a workdir that has a record (the config itself when
  it has none), after checking it against the record.

  A field that defines the model (the process and its hyper-parameters, the network's
  architecture, the data set, image size, channels, centering) and differs from the
  record raises RecordMismatchError listing every such field with both values, unless
  the recorded run set it on its command line, this run did not, and both use the same
  config file: then the recorded value is used (no need to repeat the override). Other
  modes than train also take the recorded value of every training field (config.training,
  config.optim) not given on this command line, e.g. snapshot_freq for eval's checkpoint
  range. In train mode the other differences are allowed and logged.
  """
  record = read(workdir)
  if record is None or not _has_checkpoints(workdir):
    return config  # no model yet (a run that stopped before its first checkpoint)
  explicit = set(_invocation["overrides"])
  same_file = (record.get("config_file") is not None
               and record.get("config_file") == _invocation["config_file"])
  recorded_overrides = record.get("overrides") or {}
  diffs = differences(config, record)
  bad, adopt = {}, {}
  for path, (have, now) in diffs.items():
    if have is None or now is None:
      continue  # a field only one side has: not a value to compare
    section = path.split(".", 1)[0]
    if is_defining(path):
      if path not in explicit and same_file and path in recorded_overrides:
        adopt[path] = have
      else:
        bad[path] = (have, now)
    elif mode != "train" and section in TRAINING_SECTIONS and path not in explicit:
      adopt[path] = have
  if bad:
    raise _mismatch(workdir, bad)
  if adopt:
    config = config.copy_and_resolve_references()
    for path, value in adopt.items():
      _set(config, path, value)
    logging.info("%s: using the recorded %s", record_path(workdir),
                 ", ".join(f"config.{p} = {v!r}" for p, v in adopt.items()))
  if mode == "train":
    changed = {p: v for p, v in diffs.items() if p not in adopt and p not in bad}
    if changed:
      logging.info("changed since %s was written (allowed): %s", record_path(workdir),
                   "; ".join(f"config.{p} {a!r} -> {b!r}" for p, (a, b) in changed.items()))
  return config


def _has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, CHECKPOINTS_SUBDIR)
  return io.isdir(directory) and any(n.isdigit() for n in io.listdir(directory))


def start_training(config, workdir: str, *, write_enabled: bool = True) -> None:
  """Training's part: with --new_model, the old model is moved aside first. A workdir
  without checkpoints gets this run's record; one with checkpoints is checked against
  its record (`resolve`, train mode) and against the recorded data fingerprint: data
  files changed since training started raise UserError naming them. A workdir with
  checkpoints but no record (written before records existed) gets one."""
  if _invocation["new_model"]:
    move_aside(workdir)
    _invocation["new_model"] = False
  fingerprint = data_fingerprint(config, workdir)
  record = read(workdir)
  if not _has_checkpoints(workdir) or record is None:
    if record is None and _has_checkpoints(workdir):
      logging.warning("%s has checkpoints but no %s; recording this run's config",
                      workdir, RECORD_FILE)
    if write_enabled:
      write(config, workdir, fingerprint)
    return
  resolve(config, workdir, "train")
  change = _fingerprint_change(record.get("data") or {}, fingerprint)
  if change is not None and "digest" in (record.get("data") or {}):
    raise UserError(f"the training data changed since {record_path(workdir)} was "
                    f"written: {change}; restore them, or train a new model "
                    "(--new_model, or another --workdir)")


def check_data(config, workdir: str) -> None:
  """Other modes: a warning when the data files differ from the recorded ones (their
  results are keyed by the current fingerprint)."""
  record = read(workdir)
  if record is None or "digest" not in (record.get("data") or {}):
    return
  if record["data"].get("roots") != data_fingerprint(config, None).get("roots"):
    return
  change = _fingerprint_change(record["data"], data_fingerprint(config, workdir))
  if change is not None:
    logging.warning("the data differ from those %s recorded at training: %s",
                    record_path(workdir), change)


# Entries of a workdir that stay in place when a new model starts there.
_KEPT = (".lock", HASH_CACHE_FILE)


def move_aside(workdir: str) -> str | None:
  """Moves everything the old model made in `workdir` (checkpoints, the record,
  metrics, results) into workdir/previous-<UTC time>/; deletes nothing. Returns that
  folder (None when there was nothing to move). A workdir on an object store cannot be
  moved (no folder rename there): UserError."""
  if io.is_remote(workdir):
    raise UserError(f"--new_model cannot move the old model aside in {workdir} (an "
                    "object store has no folder rename): use another --workdir")
  names = [n for n in sorted(os.listdir(workdir))
           if n not in _KEPT and not n.startswith("previous-")
           and not n.startswith(".write_test_")]
  if not names:
    return None
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
  target = os.path.join(workdir, f"previous-{stamp}")
  n = 1
  while os.path.exists(target):
    target, n = os.path.join(workdir, f"previous-{stamp}.{n}"), n + 1
  os.makedirs(target)
  for name in names:
    os.rename(os.path.join(workdir, name), os.path.join(target, name))
  logging.warning("--new_model: moved the previous model's %s to %s", ", ".join(names),
                  target)
  return target
