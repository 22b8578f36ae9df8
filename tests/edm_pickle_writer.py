"""Writes network pickles in NVlabs/edm's format without torch and without EDM's code, for
tests: `write_edm_pickle(path, precond_kwargs, backbone_cls, backbone_kwargs, state_dict)`.

The byte structure is what `pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=...,
dataset_kwargs=...))` of EDM's training loop produces (protocol 4): every EDM module as
`torch_utils.persistence._reconstruct_persistent_obj({'type': 'class', 'version': 6,
'module_src': <source>, 'class_name', 'state': <instance __dict__>})`, ModuleDicts as
NEWOBJ + BUILD, parameters as torch._utils._rebuild_parameter(_rebuild_tensor_v2(
storage, ...)), each storage as torch.storage._load_from_bytes(<legacy torch.save
stream>). The embedded module source is a dummy string of our own.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any

import numpy as np

from models import pth

DUMMY_SOURCE = "# stand-in for the module source that EDM's persistence embeds\n" * 4


class _Global(pth._Global):
  pass


class _Storage:
  def __init__(self, array: np.ndarray):
    self.array = np.ascontiguousarray(array, np.float32).reshape(-1)


class _Tensor:
  def __init__(self, array: np.ndarray, parameter: bool):
    self.array, self.parameter = np.ascontiguousarray(array, np.float32), parameter


class _Data:
  """A tensor's data under a Parameter."""

  def __init__(self, array: np.ndarray):
    self.array = array


class Call:
  """Pickled as <module>.<name>(*args): to test that the reader refuses such a global."""

  def __init__(self, module: str, name: str, *args):
    self.module, self.name, self.args = module, name, args


class WModule:
  """A torch module to write: persistent (EDM's classes) or a plain torch container."""

  def __init__(self, cls: str, *, persistent: bool = True, init_kwargs: dict | None = None,
               attrs: dict | None = None, torch_module: bool = True):
    self.cls, self.persistent, self.torch_module = cls, persistent, torch_module
    self.init_kwargs = dict(init_kwargs or {})
    self.attrs = dict(attrs or {})
    self.params: dict[str, Any] = collections.OrderedDict()
    self.buffers: dict[str, Any] = collections.OrderedDict()
    self.modules: dict[str, WModule] = collections.OrderedDict()

  def state(self) -> dict:
    if not self.torch_module:  # EDM's loss and augmentation pipe: plain classes
      return {**self.attrs, "_init_args": (), "_init_kwargs": dict(self.init_kwargs)}
    s = {"training": False, "_parameters": collections.OrderedDict(
        (k, None if v is None else _Tensor(v, True)) for k, v in self.params.items()),
         "_buffers": collections.OrderedDict(
             (k, None if v is None else _Tensor(v, False)) for k, v in self.buffers.items()),
         "_non_persistent_buffers_set": set(),
         "_backward_hooks": collections.OrderedDict(),
         "_forward_hooks": collections.OrderedDict(),
         "_forward_pre_hooks": collections.OrderedDict(),
         "_state_dict_hooks": collections.OrderedDict(),
         "_load_state_dict_pre_hooks": collections.OrderedDict(),
         "_modules": collections.OrderedDict(self.modules)}
    s.update(self.attrs)
    if self.persistent:
      s["_init_args"] = ()
      s["_init_kwargs"] = dict(self.init_kwargs)
    return s


def legacy_storage_bytes(array: np.ndarray) -> bytes:
  """torch.save(storage, _use_new_zipfile_serialization=False) of a float32 storage."""

  class Root:
    pass

  root = Root()

  class P(pth._TorchPickler):
    def persistent_id(self, obj):
      if obj is root:
        return ("storage", pth._Global("torch", "FloatStorage"), "0", "cpu", array.size,
                None)
      return None

  out = io.BytesIO()
  for header in (pth._LEGACY_MAGIC, pth._LEGACY_PROTOCOL,
                 {"protocol_version": pth._LEGACY_PROTOCOL, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
    pickle.dump(header, out, protocol=2)
  P(out).dump(root)
  pickle.dump(["0"], out, protocol=2)
  out.write(struct.pack("<q", array.size))
  out.write(array.astype("<f4").tobytes())
  return out.getvalue()


class _EDMPickler(pickle._Pickler):  # the Python pickler: its dispatch is extensible
  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file, extra_globals=()):
    super().__init__(file, protocol=4)
    self.extra = dict(extra_globals)

  def save_global_stand_in(self, obj):
    self.save(obj.module)
    self.save(obj.name)
    self.write(pickle.STACK_GLOBAL)
    self.memoize(obj)

  def save_module(self, obj: WModule):
    if obj.persistent:
      meta = {"type": "class", "version": 6, "module_src": DUMMY_SOURCE,
              "class_name": obj.cls, "state": obj.state()}
      self.save_reduce(_Global("torch_utils.persistence", "_reconstruct_persistent_obj"),
                       (meta,), obj=obj)
    else:
      self.save(_Global("torch.nn.modules.container", obj.cls))
      self.save(())
      self.write(pickle.NEWOBJ)
      self.memoize(obj)
      self.save(obj.state())
      self.write(pickle.BUILD)

  def save_tensor(self, obj: _Tensor):
    shape = tuple(obj.array.shape)
    stride, acc = [], 1
    for n in reversed(shape):
      stride.append(acc)
      acc *= n
    if obj.parameter:
      self.save_reduce(_Global("torch._utils", "_rebuild_parameter"),
                       (_Tensor(obj.array, False), False, collections.OrderedDict()),
                       obj=obj)
    else:
      self.save_reduce(_Global("torch._utils", "_rebuild_tensor_v2"),
                       (_Storage(obj.array), 0, shape, tuple(reversed(stride)), False,
                        collections.OrderedDict()), obj=obj)

  def save_storage(self, obj: _Storage):
    self.save_reduce(_Global("torch.storage", "_load_from_bytes"),
                     (legacy_storage_bytes(obj.array),), obj=obj)

  def save_call(self, obj: Call):
    self.save_reduce(_Global(obj.module, obj.name), obj.args, obj=obj)

  dispatch[Call] = save_call
  dispatch[_Global] = save_global_stand_in
  dispatch[pth._Global] = save_global_stand_in
  dispatch[WModule] = save_module
  dispatch[_Tensor] = save_tensor
  dispatch[_Storage] = save_storage


_LINEAR = ("map_label", "map_augment", "map_layer0", "map_layer1", "affine")


def _class_of(name: str, leaves: set[str], backbone_kwargs: dict) -> str:
  """EDM's class for a submodule name of SongUNet / DhariwalUNet."""
  if name in ("enc", "dec"):
    return "ModuleDict"
  if name in _LINEAR:
    return "Linear"
  if name == "map_noise":
    return "FourierEmbedding" if "freqs" in leaves else "PositionalEmbedding"
  if "norm" in name:
    return "GroupNorm"
  if any(s in name for s in ("_block", "_down", "_up", "_in0", "_in1")) and "aux" not in name:
    return "UNetBlock"
  return "Conv2d"


def backbone_tree(cls: str, kwargs: dict, state_dict: dict) -> WModule:
  """EDM's module tree for `cls` ('SongUNet' | 'DhariwalUNet') with constructor kwargs
  and state dict (EDM names), classes inferred from EDM's module names."""
  root = WModule(cls, init_kwargs=kwargs, attrs={"label_dropout": 0.0})
  leaves_under: dict[str, set] = collections.defaultdict(set)
  for key in state_dict:
    parts = key.split(".")
    for i in range(1, len(parts)):
      leaves_under[".".join(parts[:i])].add(parts[-1])
  if "map_noise.freqs" not in state_dict:  # PositionalEmbedding: no tensors
    root.modules["map_noise"] = WModule("PositionalEmbedding",
                                        attrs={"num_channels": 0, "endpoint": False})
  for key, value in state_dict.items():
    *path, leaf = key.split(".")
    node = root
    for i, name in enumerate(path):
      if name not in node.modules:
        full = ".".join(path[:i + 1])
        kind = _class_of(name, leaves_under[full], kwargs)
        node.modules[name] = WModule(kind, persistent=kind != "ModuleDict")
        if kind == "UNetBlock":  # EDM records numpy scalars among the arguments
          node.modules[name].init_kwargs["skip_scale"] = np.float64(np.sqrt(0.5))
          node.modules[name].attrs["skip_scale"] = np.float64(np.sqrt(0.5))
      node = node.modules[name]
    table = node.buffers if leaf in ("resample_filter", "freqs") else node.params
    table[leaf] = np.asarray(value, np.float32)
  return root


def write_edm_pickle(path: str, backbone_cls: str, backbone_kwargs: dict,
                     state_dict: dict, *, precond: str = "EDMPrecond",
                     precond_kwargs: dict | None = None,
                     extra: dict | None = None) -> None:
  """Writes an EDM network pickle: {'ema': <precond>(model=<backbone>), 'loss_fn',
  'augment_pipe', 'dataset_kwargs'}. backbone_kwargs: the backbone's constructor
  arguments (img_resolution, in_channels, ... as EDM records them); state_dict: EDM's
  net.model.state_dict() as numpy arrays; extra: more top-level entries (anything
  picklable, e.g. a stand-in global to test refusals)."""
  kw = dict(backbone_kwargs)
  pk = dict(img_resolution=kw["img_resolution"], img_channels=kw["in_channels"],
            label_dim=kw.get("label_dim", 0), use_fp16=False, sigma_data=0.5,
            model_type=backbone_cls)
  pk.update(precond_kwargs or {})
  model_kwargs = {k: v for k, v in kw.items()
                  if k not in ("img_resolution", "in_channels", "out_channels", "label_dim")}
  model = backbone_tree(backbone_cls, kw, state_dict)
  ema = WModule(precond, init_kwargs={**{k: v for k, v in pk.items()}, **model_kwargs},
                attrs={"img_resolution": pk["img_resolution"],
                       "img_channels": pk["img_channels"], "label_dim": pk["label_dim"],
                       "use_fp16": False, "sigma_min": 0, "sigma_max": float("inf"),
                       "sigma_data": pk["sigma_data"]})
  ema.modules["model"] = model
  loss = WModule("EDMLoss", attrs={"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5},
                 torch_module=False)
  augment = WModule("AugmentPipe", init_kwargs={"p": 0.12, "xflip": 100000000.0},
                    attrs={"p": 0.12, "xflip": 100000000.0, "yflip": 0},
                    torch_module=False)
  data = {"ema": ema, "loss_fn": loss, "augment_pipe": augment,
          "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset",
                             "path": "datasets/tiny.zip", "use_labels": True,
                             "xflip": False, "cache": True, "resolution": 8,
                             "max_size": 10}}
  data.update(extra or {})
  with open(path, "wb") as f:
    _EDMPickler(f).dump(data)
