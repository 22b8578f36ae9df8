"""The allow-list .pth reader and writer (models/pth.py).

Every comparison is exact (np.testing.assert_array_equal, dtype equality): a .pth round
trip moves bytes, it computes nothing. Strided views are checked against numpy's own
indexing of the same storage, an independent reference for torch's (size, stride, offset)
convention.
"""
import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from models import pth
from sde_lib import MissingFileError, UserError


def _assert_same(a, b):
  """Recursive exact equality, including container types and dtypes."""
  assert type(a) is type(b), (type(a), type(b))
  if isinstance(a, np.ndarray):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.astype(np.float64) if a.dtype == ml_dtypes.bfloat16
                                  else a, b.astype(np.float64)
                                  if b.dtype == ml_dtypes.bfloat16 else b)
  elif isinstance(a, dict):
    assert list(a) == list(b)
    for k in a:
      _assert_same(a[k], b[k])
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b)
    for x, y in zip(a, b):
      _assert_same(x, y)
  else:
    assert a == b


def _checkpoint_like():
  rng = np.random.default_rng(0)
  model = collections.OrderedDict()
  model["module.all_modules.0.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
  model["module.all_modules.0.bias"] = rng.standard_normal(4).astype(np.float32)
  model["module.sigmas"] = np.geomspace(50, 0.01, 5)  # float64
  model["counts"] = np.arange(-3, 3, dtype=np.int64)
  model["mask"] = np.array([True, False, True])
  return {
      "model": model,
      "ema": {"decay": 0.9999, "num_updates": 7,
              "shadow_params": [rng.standard_normal((2, 5)).astype(np.float32),
                                np.arange(4, dtype=np.int32).astype(np.float16),
                                np.linspace(-2, 2, 6).astype(ml_dtypes.bfloat16),
                                np.zeros((3, 0), np.float32),
                                np.asarray(2.5, np.float32)]},
      "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999),
                                                   "params": [0, 1]}]},
      "step": 1300,
      "name": "ncsnpp",
      "nothing": None,
  }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_round_trip_is_exact(tmp_path, legacy):
  obj = _checkpoint_like()
  path = tmp_path / "checkpoint_1.pth"
  (pth._save_legacy_pth if legacy else pth.save_pth)(path, obj)
  assert zipfile.is_zipfile(path) is not legacy
  _assert_same(obj, pth.load_pth(path))


def test_zip_layout_is_torch_save_layout(tmp_path):
  """The entries torch.load looks for, and the tensor/storage pickle torch.save writes."""
  path = tmp_path / "a.pth"
  pth.save_pth(path, {"w": np.ones((2, 3), np.float32)})
  with zipfile.ZipFile(path) as zf:
    names = set(zf.namelist())
    pkl = zf.read("archive/data.pkl")
    assert zf.read("archive/byteorder") == b"little"
    assert len(zf.read("archive/data/0")) == 6 * 4
  assert {"archive/data.pkl", "archive/byteorder", "archive/version",
          "archive/data/0"} <= names
  assert pkl[:2] == b"\x80\x02"  # protocol 2
  assert b"ctorch._utils\n_rebuild_tensor_v2\n" in pkl
  assert b"ctorch\nFloatStorage\n" in pkl


class _View:
  """A tensor as torch pickles it: a (size, stride, offset) view of a shared storage."""

  def __init__(self, key, storage, offset, size, stride):
    self.key, self.storage, self.offset = key, storage, offset
    self.size, self.stride = size, stride


class _ViewPickler(pth._TorchPickler):
  dispatch = pth._TorchPickler.dispatch.copy()

  def __init__(self, f):
    super().__init__(f)
    self._shared = {}

  def reducer_override(self, obj):
    if isinstance(obj, _View):
      if obj.key not in self._shared:
        s = pth._Storage(obj.key, obj.storage)
        self._shared[obj.key] = s
        self.storages.append(s)
      return (pth._Global("torch._utils", "_rebuild_tensor_v2"),
              (self._shared[obj.key], obj.offset, obj.size, obj.stride, False,
               collections.OrderedDict()))
    return super().reducer_override(obj)


def _write_views(path, obj):
  buf = io.BytesIO()
  p = _ViewPickler(buf)
  p.dump(obj)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("weights/data.pkl", buf.getvalue())
    for s in p.storages:
      zf.writestr(f"weights/data/{s.key}", s.array.tobytes())


def test_strided_views_of_a_shared_storage(tmp_path):
  """Transposed, offset and broadcast (stride 0) views of one storage, as torch writes
  tensors that share memory; no byteorder/version entries (older torch files)."""
  storage = np.arange(24, dtype=np.float32)
  obj = collections.OrderedDict(
      full=_View("7", storage, 0, (4, 6), (6, 1)),
      transposed=_View("7", storage, 0, (6, 4), (1, 6)),
      offset=_View("7", storage, 5, (3, 2), (4, 2)),
      broadcast=_View("7", storage, 3, (2, 3), (0, 1)))
  path = tmp_path / "views.pth"
  _write_views(path, obj)
  out = pth.load_pth(path)
  ref = {"full": storage.reshape(4, 6), "transposed": storage.reshape(4, 6).T,
         "offset": storage[5:].reshape(-1)[:3 * 4].reshape(3, 4)[:, ::2],
         "broadcast": np.broadcast_to(storage[3:6], (2, 3))}
  assert list(out) == list(ref)
  for k, v in ref.items():
    assert out[k].flags.c_contiguous and out[k].dtype == np.float32
    np.testing.assert_array_equal(out[k], v)
  out["full"][0, 0] = 99.0  # copies: writing one tensor does not change another
  assert out["transposed"][0, 0] == 0.0


def test_view_past_its_storage_is_refused(tmp_path):
  path = tmp_path / "bad_view.pth"
  _write_views(path, {"w": _View("0", np.zeros(4, np.float32), 2, (2, 2), (2, 1))})
  with pytest.raises(UserError, match="past its storage"):
    pth.load_pth(path)


class _Evil:
  """Pickles as a call of `fn(arg)`: what a malicious checkpoint does."""

  def __init__(self, fn, arg):
    self.fn, self.arg = fn, arg

  def __reduce__(self):
    return (self.fn, (self.arg,))


@pytest.mark.parametrize("fn,name", [(os.system, "system"), (eval, "eval"),
                                     (open, "open")])
def test_disallowed_global_is_refused_unexecuted(tmp_path, fn, name):
  """A pickle calling os.system / eval / open on a side-effecting argument, nested inside
  an otherwise valid checkpoint: refused with the class named, and the side effect (a
  file appearing) did not happen."""
  marker = tmp_path / "pwned"
  arg = {os.system: f"touch {marker}", eval: f"open({str(marker)!r}, 'w')",
         open: str(marker)}[fn]
  if fn is open:  # open(path) in read mode would not create; use a 2-arg form
    evil = type("E", (), {"__reduce__": lambda self: (open, (str(marker), "w"))})()
  else:
    evil = _Evil(fn, arg)
  obj = {"model": collections.OrderedDict(w=np.ones(2, np.float32)), "x": [evil]}
  buf = io.BytesIO()
  pickler = pth._TorchPickler(buf)
  pickler.dump(obj)  # the tensor as torch writes it, then the payload
  data = buf.getvalue()
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", data)
    zf.writestr("archive/data/0", pickler.storages[0].array.tobytes())
  with pytest.raises(UserError, match=rf"refusing to unpickle \w+\.{name}"):
    pth.load_pth(path)
  assert not marker.exists()
  # The same payload really executes under an unrestricted unpickler (so the test can
  # fail): a plain Unpickler, given only the storage, creates the marker.
  class Unrestricted(pickle.Unpickler):

    def persistent_load(self, pid):
      return np.ones(2, np.float32)

    def find_class(self, module, name):
      if module.startswith("torch"):
        return pth._rebuild_tensor_v2
      return super().find_class(module, name)

  Unrestricted(io.BytesIO(data)).load()
  assert marker.exists()


def test_module_class_is_refused(tmp_path):
  """Whole-module pickles (torch.save(model)) need torch.nn classes: refused by name."""
  data = (b"\x80\x02ctorch.nn.modules.conv\nConv2d\nq\x00)\x81q\x01.")
  path = tmp_path / "module.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", data)
  with pytest.raises(UserError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
    pth.load_pth(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.5, 0.97, 10])
def test_truncated_or_garbage_file_is_a_user_error(tmp_path, legacy, keep):
  path = tmp_path / "full.pth"
  (pth._save_legacy_pth if legacy else pth.save_pth)(path, _checkpoint_like())
  raw = path.read_bytes()
  bad = tmp_path / "bad.pth"
  bad.write_bytes(raw[:int(len(raw) * keep)] if keep < 1 else raw[:keep])
  with pytest.raises(UserError, match="bad.pth"):
    pth.load_pth(bad)


def test_not_a_pth_file(tmp_path):
  bad = tmp_path / "notes.pth"
  bad.write_bytes(b"hello, I am text\n" * 10)
  with pytest.raises(UserError, match="notes.pth"):
    pth.load_pth(bad)
  with pytest.raises(MissingFileError, match="nowhere.pth"):
    pth.load_pth(tmp_path / "nowhere.pth")


def test_missing_storage_entry(tmp_path):
  path = tmp_path / "a.pth"
  pth.save_pth(path, {"w": np.ones(3, np.float32)})
  stripped = tmp_path / "stripped.pth"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(stripped, "w") as dst:
    for n in src.namelist():
      if "/data/" not in n:
        dst.writestr(n, src.read(n))
  with pytest.raises(UserError, match="archive/data/0 is missing"):
    pth.load_pth(stripped)
