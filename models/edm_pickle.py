"""Reading NVlabs/edm's network pickles (`network-snapshot-*.pkl`, Karras et al. 2022)
without torch and without running any code they carry: an allow-list unpickler that turns
EDM's persistent modules into plain `Module` records (the format and the allow-list:
`read_edm_pickle`)."""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from common.errors import MissingFileError, UserError
from models import pth

__all__ = ["Module", "read_edm_pickle", "state_dict"]


@dataclasses.dataclass
class Module:
  """One torch module of the pickle, as data. cls: its class name ('SongUNet',
  'UNetBlock', 'ModuleDict', ...); persistent: whether EDM's persistence module recorded
  it (then init_args / init_kwargs are its constructor arguments); params, buffers: name
  -> numpy array (None for an unset one); modules: name -> Module; attrs: every other
  instance attribute that is plain data (numbers, strings, lists, dicts)."""
  cls: str
  persistent: bool = False
  init_args: tuple = ()
  init_kwargs: dict = dataclasses.field(default_factory=dict)
  params: dict = dataclasses.field(default_factory=dict)
  buffers: dict = dataclasses.field(default_factory=dict)
  modules: dict = dataclasses.field(default_factory=dict)
  attrs: dict = dataclasses.field(default_factory=dict)
  source_chars: int = 0  # length of the embedded module source (never run)


class _Persistent:
  """What `_reconstruct_persistent_obj(meta)` returns here: the recorded meta, unrun."""

  def __init__(self, meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
      raise UserError("malformed EDM persistent object in the pickle (expected "
                      "meta['type'] == 'class')")
    if not isinstance(meta.get("class_name"), str) or not isinstance(meta.get("state"),
                                                                     dict):
      raise UserError("malformed EDM persistent object in the pickle (no class_name or "
                      "state)")
    self.meta = meta


class _Object:
  """A stand-in instance of an allowed plain torch class (torch.nn.ModuleDict ...),
  made by NEWOBJ and filled by BUILD."""

  cls_name = "object"

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise UserError(f"malformed state of {self.cls_name} in the pickle")
    self.state = state


def _object_class(name: str) -> type:
  return type(f"_{name}", (_Object,), {"cls_name": name})


class _EasyDict(dict):
  """dnnlib.EasyDict as a plain dict."""


class _NumpyDtype:
  """numpy.dtype('<kind><size>') stand-in: numeric kinds only."""

  def __init__(self, name, align=False, copy=True):
    del align, copy
    name = str(name)
    if not (len(name) <= 4 and name[:1] in tuple("biufc") and name[1:].isdigit()):
      raise UserError(f"refusing numpy dtype {name!r} in the pickle (numeric kinds only)")
    self.dtype = np.dtype(name)

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
      self.dtype = self.dtype.newbyteorder(state[1]) if state[1] != "|" else self.dtype


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
    raise UserError("malformed numpy scalar in the pickle")
  return np.frombuffer(data, dtype.dtype, count=1)[0].item()


def _load_from_bytes(data):
  """torch.storage._load_from_bytes: a storage that torch.save wrote into the pickle as
  bytes (legacy stream, or a zip archive), read by models/pth.py's allow-list reader."""
  if not isinstance(data, (bytes, bytearray)):
    raise UserError("malformed embedded torch storage in the pickle")
  data = bytes(data)
  if data[:2] == b"PK":
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
      return pth._load_zip("<embedded storage>", zf)
  return pth._load_legacy("<embedded storage>", data)


_MODULE_CLASSES = ("ModuleDict", "ModuleList", "Sequential", "Identity", "SiLU", "ReLU",
                   "Dropout")


def _allowed_global(module: str, name: str):
  """The stand-in for an allowed global, or UserError naming the refused one."""
  if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
    return _Persistent
  if module in ("torch.storage", "torch.serialization") and name == "_load_from_bytes":
    return _load_from_bytes
  if (module.startswith("torch.nn.modules.") and name in _MODULE_CLASSES):
    return _object_class(name)
  if module == "dnnlib.util" and name == "EasyDict":
    return _EasyDict
  if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
    return _numpy_scalar
  if module == "numpy" and name == "dtype":
    return _NumpyDtype
  if module == "builtins" and name in ("set", "frozenset"):
    return {"set": set, "frozenset": frozenset}[name]
  try:
    return pth._allowed_global(module, name)
  except UserError:
    pass
  raise UserError(f"refusing to unpickle {module}.{name}: an EDM network pickle may hold "
                  "only EDM's persistent modules, torch tensors and plain Python values; "
                  "nothing in it is run")


class _Unpickler(pickle.Unpickler):

  def find_class(self, module, name):
    return _allowed_global(module, name)

  def persistent_load(self, pid):
    raise UserError(f"unsupported persistent id {pid!r:.60} in the EDM pickle")


def _plain(obj, where: str):
  """obj with every stand-in turned into data: Module, arrays, lists, dicts, scalars."""
  if isinstance(obj, _Persistent):
    return _module(obj.meta["class_name"], obj.meta["state"], True, obj.meta, where)
  if isinstance(obj, _Object):
    return _module(obj.cls_name, getattr(obj, "state", {}), False, None, where)
  if isinstance(obj, np.ndarray):
    return np.array(obj, copy=True, order="C")
  if isinstance(obj, dict):
    return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    out = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return out if isinstance(obj, list) else tuple(out)
  if isinstance(obj, (set, frozenset)):
    return set(_plain(v, where) for v in obj)
  if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
    return obj
  if isinstance(obj, (pth._StorageType, pth._TorchDtype, _NumpyDtype)):
    return None
  raise UserError(f"unexpected {type(obj).__name__} at {where} in the EDM pickle")


def _module(cls: str, state: dict, persistent: bool, meta, where: str) -> Module:
  state = dict(state)
  params = _plain(state.pop("_parameters", {}) or {}, where)
  buffers = _plain(state.pop("_buffers", {}) or {}, where)
  non_persistent = state.pop("_non_persistent_buffers_set", set()) or set()
  modules = _plain(state.pop("_modules", {}) or {}, where)
  init_args = state.pop("_init_args", None)
  init_kwargs = state.pop("_init_kwargs", None)
  attrs = {}
  for k, v in state.items():
    if k.startswith("_") and "hook" in k:
      continue  # torch's hook tables: empty in a saved network, meaningless here
    attrs[k] = _plain(v, f"{where}.{k}")
  for k in list(buffers):
    if k in non_persistent:
      buffers.pop(k)
  for name, m in modules.items():
    if m is not None and not isinstance(m, Module):
      raise UserError(f"{where}.{name} in the EDM pickle is not a module")
  src = meta.get("module_src") if meta else None
  return Module(cls=cls, persistent=persistent,
                init_args=tuple(_plain(init_args or (), where)),
                init_kwargs=dict(_plain(init_kwargs or {}, where)), params=params,
                buffers=buffers, modules=modules, attrs=attrs,
                source_chars=len(src) if isinstance(src, str) else 0)


def read_edm_pickle(path: str | os.PathLike) -> dict[str, Any]:
  """The contents of an EDM network pickle as plain data, without torch or running code.

  EDM's training loop writes `pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=...,
  dataset_kwargs=...))` (NVlabs/edm training/training_loop.py). Every class decorated
  with EDM's `persistence.persistent_class` pickles itself as
  `torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {'type': 'class',
  'version', 'module_src': the Python source of its module, 'class_name', 'state': the
  instance __dict__, with '_init_args' / '_init_kwargs' = its constructor arguments};
  unpickling with EDM's code would exec that source. Plain torch containers
  (torch.nn.ModuleDict) pickle by NEWOBJ + BUILD; tensors as
  torch._utils._rebuild_tensor_v2 / _rebuild_parameter of a storage that
  torch.storage._load_from_bytes rebuilds from a nested torch.save stream
  (models/pth.py reads those).

  Here `find_class` returns our own stand-ins for exactly those globals (plus
  collections.OrderedDict, dnnlib's EasyDict as dict, numpy scalars and numeric dtypes,
  builtins set / frozenset, and models/pth.py's tensor allow-list); any other global
  raises UserError naming it before anything is called. The embedded source is never
  run: a persistent object becomes a `Module` record with its class name, constructor
  arguments, parameters, buffers (persistent ones), submodules and plain attributes.

  Returns the top-level dict with every value converted (`Module`, numpy arrays, lists,
  dicts, scalars). Raises MissingFileError / UserError (missing, truncated or malformed
  file; a refused global).

      data = read_edm_pickle("edm-cifar10-32x32-cond-vp.pkl")
      ema = data["ema"]                    # Module(cls='EDMPrecond', ...)
      ema.modules["model"].init_kwargs     # SongUNet's constructor arguments
      sd = state_dict(ema.modules["model"])   # EDM's net.model.state_dict(), as numpy
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingFileError(f"no such EDM network pickle: {path}")
  try:
    with open(path, "rb") as f:
      obj = _Unpickler(f).load()
    out = _plain(obj, "pickle")
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, OSError, UnicodeDecodeError, zipfile.BadZipFile,
          RecursionError) as e:
    raise UserError(f"{path}: truncated or malformed EDM pickle "
                    f"({type(e).__name__}: {e})") from None
  if not isinstance(out, dict) or not isinstance(out.get("ema"), Module):
    raise UserError(f"{path}: not an EDM network pickle (expected a dict with an 'ema' "
                    "network)")
  return out


def state_dict(module: Module, prefix: str = "") -> "collections.OrderedDict[str, Any]":
  """torch's `module.state_dict()` of a `Module` record: parameters, then persistent
  buffers, then submodules', dot-joined names; unset (None) entries left out."""
  out: collections.OrderedDict = collections.OrderedDict()
  for table in (module.params, module.buffers):
    for k, v in table.items():
      if v is not None:
        out[prefix + k] = v
  for k, m in module.modules.items():
    if m is not None:
      out.update(state_dict(m, f"{prefix}{k}."))
  return out
