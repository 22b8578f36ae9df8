"""Reading and writing PyTorch `.pth` files without torch and without running pickle code:
an allow-list unpickler for state dicts (the formats and the allow-list: `load_pth`)."""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from common.errors import MissingFileError, UserError

__all__ = ["load_pth", "save_pth"]

# torch's storage classes and the element type each one holds.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}
# torch dtypes as they appear in pickles (arguments of _rebuild_tensor_v3).
_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64), "double": np.dtype(np.float64),
    "float32": np.dtype(np.float32), "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16), "half": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64), "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32), "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16), "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8), "bool": np.dtype(np.bool_),
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


class _StorageType:
  """Stand-in for a torch storage class (`torch.FloatStorage`): only its dtype matters."""

  def __init__(self, name: str, dtype: np.dtype):
    self.name, self.dtype = name, dtype

  def __call__(self, *args):  # the class is never instantiated by a valid state dict
    raise UserError(f"a .pth pickle calls storage class torch.{self.name} directly; "
                    "only tensors rebuilt by torch._utils are supported")


class _TorchDtype:
  """Stand-in for a torch dtype object (`torch.float32`)."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype


def _tensor(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
  """The strided view of a flat storage that torch calls a tensor, copied (C order).

  storage: 1-D array of the storage's elements; offset, stride in elements."""
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise UserError("a tensor in the .pth pickle is not backed by a storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(offset)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise UserError(f"malformed tensor in the .pth pickle: size {size}, stride {stride}, "
                    f"offset {offset}")
  if 0 in size:
    return np.empty(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.shape[0]:
    raise UserError(f"malformed tensor in the .pth pickle: size {size}, stride {stride} "
                    f"and offset {offset} reach past its storage of "
                    f"{storage.shape[0]} elements")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=tuple(s * item for s in stride),
                                         writeable=False)
  return view


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # no meaning outside torch's autograd
  return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _TorchDtype):
    raise UserError("malformed tensor in the .pth pickle: no dtype")
  if isinstance(storage, np.ndarray) and storage.ndim == 1:
    nbytes = storage.nbytes - storage.nbytes % dtype.dtype.itemsize
    storage = storage.view(np.uint8)[:nbytes].view(dtype.dtype)
  return _tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


_REBUILDS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
}


def _allowed_global(module: str, name: str):
  """The stand-in for an allowed global, or UserError naming the refused one."""
  if module == "collections" and name == "OrderedDict":
    return collections.OrderedDict
  if module == "torch._utils" and name in _REBUILDS:
    return _REBUILDS[name]
  if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
    return _StorageType(name, _STORAGE_DTYPES[name])
  if module == "torch" and name in _TORCH_DTYPES:
    return _TorchDtype(_TORCH_DTYPES[name])
  raise UserError(
      f"refusing to unpickle {module}.{name}: a .pth file may hold only tensors, "
      "OrderedDicts and plain Python values (the classes torch.load(weights_only=True) "
      "accepts); this file asks for code to be run")


class _AllowListUnpickler(pickle.Unpickler):
  """An Unpickler whose globals come only from `_allowed_global`.

  `storage(key, dtype, numel)` returns the flat storage for a persistent id."""

  def __init__(self, file, storage):
    super().__init__(file)
    self._storage = storage

  def find_class(self, module, name):
    return _allowed_global(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      typename = pid[0] if isinstance(pid, tuple) and pid else pid
      raise UserError(f"unsupported persistent id {typename!r} in the .pth pickle "
                      "(only storages are supported)")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
      raise UserError(f"malformed storage reference {pid!r} in the .pth pickle")
    if len(pid) == 6 and pid[5] is not None:
      raise UserError("the .pth file uses legacy storage views (torch < 0.4); "
                      "load it with torch and save it again")
    return self._storage(key, storage_type.dtype, numel)


def _unpickle(data: bytes | io.BytesIO, storage) -> Any:
  f = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
  return _AllowListUnpickler(f, storage).load()


def _materialize(obj):
  """Copies every array (views of storages) into its own C-contiguous array."""
  if isinstance(obj, np.ndarray):
    return np.array(obj, copy=True, order="C")
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _materialize(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_materialize(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialize(v) for v in obj)
  return obj


def _load_zip(path: str, zf: zipfile.ZipFile) -> Any:
  names = zf.namelist()
  pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
  if len(pkls) != 1:
    raise UserError(f"{path}: a zip archive, but not a PyTorch .pth file "
                    f"(expected one <name>/data.pkl, found {len(pkls)})")
  prefix = pkls[0][:-len("data.pkl")]
  byteorder = "little"
  if prefix + "byteorder" in names:
    byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
      raise UserError(f"{path}: unknown byteorder {byteorder!r} (expected little or big)")
  cache: dict[str, np.ndarray] = {}

  def storage(key, dtype, numel):
    if key not in cache:
      entry = f"{prefix}data/{key}"
      if entry not in names:
        raise UserError(f"{path}: storage {entry} is missing from the archive")
      raw = zf.read(entry)
      if len(raw) < numel * dtype.itemsize:
        raise UserError(f"{path}: storage {entry} holds {len(raw)} bytes, fewer than its "
                        f"{numel} elements of {dtype.name}")
      arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if byteorder == "little"
                                                         else ">"), count=numel)
      cache[key] = arr.astype(dtype, copy=False) if arr.dtype != dtype else arr
    if cache[key].dtype != dtype:  # one storage read as two dtypes: v3 reinterprets
      return cache[key].view(np.uint8)
    return cache[key]

  return _materialize(_unpickle(zf.read(pkls[0]), storage))


def _load_legacy(path: str, raw: bytes) -> Any:
  f = io.BytesIO(raw)
  no_storage = lambda key, dtype, numel: (_ for _ in ()).throw(  # noqa: E731
      UserError(f"{path}: a storage reference in a header pickle"))
  magic = _unpickle(f, no_storage)
  if magic != _LEGACY_MAGIC:
    raise UserError(f"{path}: not a PyTorch .pth file (neither a zip archive nor "
                    "torch's legacy format)")
  version = _unpickle(f, no_storage)
  if version != _LEGACY_PROTOCOL:
    raise UserError(f"{path}: legacy .pth protocol {version!r} is not supported "
                    f"(expected {_LEGACY_PROTOCOL})")
  sys_info = _unpickle(f, no_storage)
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise UserError(f"{path}: a big-endian legacy .pth file is not supported")
  buffers: dict[str, np.ndarray] = {}

  def storage(key, dtype, numel):
    # Filled in place after the object pickle, where the legacy format puts the bytes;
    # tensors are views of these buffers until _materialize copies them.
    if key not in buffers:
      buffers[key] = np.zeros(numel, dtype)
    return buffers[key]

  obj = _unpickle(f, storage)
  keys = _unpickle(f, no_storage)
  if not isinstance(keys, list):
    raise UserError(f"{path}: malformed legacy .pth file (no storage key list)")
  for key in keys:
    head = f.read(8)
    if len(head) != 8 or str(key) not in buffers:
      raise UserError(f"{path}: truncated or malformed legacy .pth file at storage {key}")
    (numel,) = struct.unpack("<q", head)
    buf = buffers[str(key)]
    nbytes = numel * buf.dtype.itemsize
    data = f.read(nbytes)
    if numel != buf.shape[0] or len(data) != nbytes:
      raise UserError(f"{path}: truncated or malformed legacy .pth file at storage {key}")
    buf[:] = np.frombuffer(data, buf.dtype)
  return _materialize(obj)


def load_pth(path: str | os.PathLike) -> Any:
  """Reads a PyTorch .pth file (zip or legacy format) without torch or pickle code.

  Returns the saved object with every tensor as a numpy array: typically an OrderedDict
  state dict {name: array}, or score_sde_pytorch's {'model': ..., 'ema': {...},
  'optimizer': ..., 'step': ...}. Raises UserError (naming the path or the refused
  class) for a missing, truncated or malformed file and for any pickle global outside
  the allow-list (below); nothing in the file is executed.

  `torch.save` (torch >= 1.6) writes a zip archive (stored, uncompressed):

      <name>/data.pkl      the object, pickled (protocol 2); every tensor is pickled as
                           torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
                           stride, requires_grad, backward_hooks), and every storage as the
                           persistent id ('storage', storage_type, key, location, numel)
      <name>/data/<key>    the raw bytes of storage <key> (numel elements, in `byteorder`)
      <name>/byteorder     'little' or 'big' (absent in old files: little)
      <name>/version       the format version

  Older torch (`_use_new_zipfile_serialization=False`, and every torch before 1.6) writes the
  "legacy" stream: five pickles back to back (magic number 0x1950a86a20f9469cfc6c, protocol
  version 1001, system info, the object with persistent ids ('storage', storage_type,
  root_key, location, numel, view_metadata), the sorted list of storage keys), then for each
  key an int64 element count followed by the storage's raw bytes. Both are read here.

  Unpickling runs only an allow-list, the subset of what `torch.load(weights_only=True)`
  accepts that state dicts need: `collections.OrderedDict`, the tensor rebuild functions of
  `torch._utils`, the storage classes and the dtypes. `find_class` returns our own numpy
  stand-ins for them, never torch's (torch need not be installed) and never anything else:
  any other global (`os.system`, `builtins.eval`, a module class) raises `UserError`
  naming it before anything is called.

      state = load_pth("checkpoint_8.pth")   # nested dicts / lists / scalars of np.ndarray
      save_pth("tiny.pth", {"w": np.ones((2, 3), np.float32)})   # the zip layout above

  Tensors come back as numpy arrays (C-contiguous copies, the storage's dtype; bfloat16 as
  `ml_dtypes.bfloat16`).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingFileError(f"no such .pth file: {path}")
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as zf:
        return _load_zip(path, zf)
    with open(path, "rb") as fh:
      return _load_legacy(path, fh.read())
  except UserError:
    raise
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
          KeyError, IndexError, AttributeError, struct.error, OSError,
          UnicodeDecodeError) as e:
    raise UserError(f"{path}: truncated or malformed .pth file "
                    f"({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- writer


class _Global:
  """A stand-in written as the pickle opcode GLOBAL '<module>\\n<name>\\n'.

  torch is not importable here, so its functions cannot be pickled by reference the
  usual way (pickle checks that the global exists); this writes the reference by hand."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires a reduce callable to be callable
    raise TypeError("a stand-in for pickling only")


class _Storage:
  """A storage to be written as ('storage', FloatStorage, key, 'cpu', numel)."""

  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


_DTYPE_STORAGES = {dt: name for name, dt in _STORAGE_DTYPES.items()
                   if name != "UntypedStorage"}


class _TorchPickler(pickle._Pickler):  # the Python pickler: its dispatch is extensible
  """Pickles arrays as torch tensors (one storage each) and `_Global`s as GLOBALs."""

  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file):
    super().__init__(file, protocol=2)
    self.storages: list[_Storage] = []

  def save_stand_in(self, obj: _Global):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
    self.memoize(obj)

  dispatch[_Global] = save_stand_in

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      name = _DTYPE_STORAGES[obj.array.dtype]
      return ("storage", _Global("torch", name), obj.key, "cpu", obj.array.size)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, np.generic):
      obj = np.asarray(obj)
    if not isinstance(obj, np.ndarray):
      return NotImplemented
    if obj.dtype not in _DTYPE_STORAGES:
      raise TypeError(f"save_pth: no torch storage for dtype {obj.dtype}")
    arr = np.array(obj, copy=True, order="C")  # (ascontiguousarray makes 0-d 1-d)
    storage = _Storage(str(len(self.storages)), arr.reshape(-1))
    self.storages.append(storage)
    stride, acc = [], 1
    for n in reversed(arr.shape):
      stride.append(acc)
      acc *= n
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (storage, 0, tuple(arr.shape), tuple(reversed(stride)), False,
             collections.OrderedDict()))


def save_pth(path: str | os.PathLike, obj: Any, *, archive_name: str = "archive") -> None:
  """Writes `obj` in torch.save's zip layout (load_pth's docstring); arrays become tensors.

  obj: nested dicts / OrderedDicts / lists / tuples of numpy arrays and Python scalars
  and strings. torch.load reads the result; so does `load_pth`. Used by the tests to
  write files in the real format without torch.
  """
  buf = io.BytesIO()
  pickler = _TorchPickler(buf)
  pickler.dump(obj)
  with zipfile.ZipFile(os.fspath(path), "w", compression=zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{archive_name}/data.pkl", buf.getvalue())
    zf.writestr(f"{archive_name}/byteorder", "little")
    for s in pickler.storages:
      zf.writestr(f"{archive_name}/data/{s.key}", s.array.astype(
          s.array.dtype.newbyteorder("<"), copy=False).tobytes())
    zf.writestr(f"{archive_name}/version", "3\n")


def _save_legacy_pth(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` in torch's legacy (pre-1.6, non-zip) stream format; for tests."""

  class _LegacyPickler(_TorchPickler):

    def persistent_id(self, o):
      pid = super().persistent_id(o)
      return None if pid is None else pid + (None,)

  body = io.BytesIO()
  pickler = _LegacyPickler(body)
  pickler.dump(obj)
  with open(os.fspath(path), "wb") as f:
    for header in (_LEGACY_MAGIC, _LEGACY_PROTOCOL,
                   {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
      pickle.dump(header, f, protocol=2)
    f.write(body.getvalue())
    keys = [s.key for s in pickler.storages]
    pickle.dump(keys, f, protocol=2)
    for s in pickler.storages:
      f.write(struct.pack("<q", s.array.size))
      f.write(s.array.astype(s.array.dtype.newbyteorder("<"), copy=False).tobytes())
