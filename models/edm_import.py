"""EDM's released networks (NVlabs/edm `network-snapshot-*.pkl`, Karras et al. 2022) in our
SongUNet / DhariwalUNet: their constructor arguments as our config, their tensors as our
parameters (`load_edm_checkpoint`, `load_state_dict`)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.errors import MissingFileError, UserError
from models import edm_pickle
from models.layers import GroupNorm
from models.dhariwal_unet import DhariwalUNet
from models.registry import get_model
from models.song_unet import (Conv2d, FourierEmbedding, Linear, SongUNet, label_dim_of,
                              resample_kernel)

__all__ = ["load_state_dict", "edm_architecture", "check_config", "load_edm_backbone",
           "load_edm_checkpoint", "is_edm_pickle", "BACKBONES", "PRECONDS"]

#: EDM's backbone classes and our registered names.
BACKBONES = {"SongUNet": "song_unet", "DhariwalUNet": "dhariwal_unet"}
#: EDM's preconditioning classes (training/networks.py) and the kwargs each records.
PRECONDS = ("VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond")
# EDM's constructor defaults (training/networks.py), used where a pickle's recorded
# init kwargs leave an argument at its default.
_DEFAULTS = {
    "SongUNet": dict(label_dim=0, augment_dim=0, model_channels=128,
                     channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4,
                     attn_resolutions=[16], dropout=0.10, label_dropout=0,
                     embedding_type="positional", channel_mult_noise=1,
                     encoder_type="standard", decoder_type="standard",
                     resample_filter=[1, 1]),
    "DhariwalUNet": dict(label_dim=0, augment_dim=0, model_channels=192,
                         channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
                         attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0),
}
# Arguments that describe the architecture (compared with config.model); dropout and
# label_dropout are training settings, reported but not compared.
_ARCH_FIELDS = {
    "SongUNet": ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                 "attn_resolutions", "embedding_type", "channel_mult_noise",
                 "encoder_type", "decoder_type", "resample_filter", "augment_dim"),
    "DhariwalUNet": ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                     "attn_resolutions", "augment_dim"),
}


def _module_at(root: nnx.Module, names: list[str], key: str) -> Any:
  m = root
  for n in names:
    nxt = None
    if isinstance(m, nnx.Dict):
      nxt = m[n] if n in m else None
    elif isinstance(n, str) and not n.startswith("_"):
      nxt = getattr(m, n, None)
    if nxt is None or not isinstance(nxt, nnx.Module):
      raise UserError(f"EDM tensor {key!r} has no counterpart in our "
                      f"{type(root).__name__} (no module {'.'.join(names)!r})")
    m = nxt
  return m


def load_state_dict(backbone: nnx.Module, state_dict: Mapping[str, Any]) -> None:
  """Overwrites every variable of `backbone` (our SongUNet / DhariwalUNet) from EDM's
  state dict of the same network (keys as EDM's `net.model.state_dict()`, values numpy
  arrays), in place, as float32. Conv weights (out, in, k, k) become our (k, k, in, out),
  Linear weights (out, in) our (in, out), GroupNorm weight our scale; EDM's constant
  `resample_filter` buffers are checked against ours. Raises UserError naming the first
  EDM tensor without a counterpart (or of another shape), or the first variable of ours
  that the state dict leaves unfilled; `backbone` is unchanged on failure."""
  pending: list[tuple[nnx.Variable, np.ndarray, str]] = []
  filled: set[int] = set()
  for key, value in state_dict.items():
    if value is None:
      continue
    *path, leaf = key.split(".")
    module = _module_at(backbone, path, key)
    value = np.asarray(value)
    if leaf == "resample_filter":
      want = getattr(module, "resample_filter", None)
      ok = want is not None and value.shape[-2:] == resample_kernel(want).shape and (
          np.allclose(value.reshape(value.shape[-2:]), resample_kernel(want), rtol=1e-6))
      if not ok:
        raise UserError(f"EDM tensor {key!r}: a resampling filter our network does not "
                        "have (check config.model.resample_filter)")
      continue
    if isinstance(module, Conv2d) and leaf == "weight" and value.ndim == 4:
      var, value = module.kernel, value.transpose(2, 3, 1, 0)
    elif isinstance(module, Linear) and leaf == "weight" and value.ndim == 2:
      var, value = module.kernel, value.T
    elif isinstance(module, GroupNorm) and leaf == "weight":
      var = module.scale
    elif isinstance(module, FourierEmbedding) and leaf == "freqs":
      var = module.freqs
    elif leaf == "bias" and isinstance(module, (Conv2d, Linear, GroupNorm)):
      var = module.bias
    else:
      raise UserError(f"EDM tensor {key!r} has no counterpart in our "
                      f"{type(backbone).__name__}")
    if var is None:
      raise UserError(f"EDM tensor {key!r} has no counterpart in our "
                      f"{type(backbone).__name__}")
    if tuple(value.shape) != tuple(var.shape):
      raise UserError(f"EDM tensor {key!r} has shape {tuple(value.shape)}, ours "
                      f"{tuple(var.shape)} after transposing")
    pending.append((var, value, key))
    filled.add(id(var))
  for path, var in nnx.iter_graph(backbone):
    if isinstance(var, nnx.Variable) and id(var) not in filled and var.shape:
      name = "/".join(str(p) for p in path)
      raise UserError(f"our variable {name} is not in EDM's state dict (another "
                      "architecture than the checkpoint's?)")
  for var, value, _ in pending:
    var.set_value(jnp.asarray(value, jnp.float32))


def is_edm_pickle(path: str | os.PathLike) -> bool:
  """Whether `path` looks like an EDM network pickle: a pickle whose first 4 kB name EDM's
  persistence module (the 'ema' network is its first value)."""
  try:
    with open(os.fspath(path), "rb") as f:
      head = f.read(4096)
  except OSError:
    return False
  return head[:1] == b"\x80" and b"torch_utils.persistence" in head


def _norm(v):
  """Config values compared as plain data: sequences as tuples, ints as floats."""
  if isinstance(v, (list, tuple)):
    return tuple(_norm(x) for x in v)
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return v
  return float(v)


def edm_architecture(ema: edm_pickle.Module) -> dict[str, Any]:
  """What EDM's recorded constructor arguments say about the network in `ema` (the
  pickle's preconditioning module): {'precond': class name, 'precond_kwargs': its
  arguments (sigma_data, use_fp16, ...), 'backbone': 'SongUNet' | 'DhariwalUNet',
  'model': our registered name, 'kwargs': every backbone argument (EDM's defaults
  filled in)}. UserError for a class we do not have."""
  if ema.cls not in PRECONDS:
    raise UserError(f"the pickle's network is an EDM {ema.cls}; expected one of "
                    f"{', '.join(PRECONDS)}")
  model = ema.modules.get("model")
  if model is None or model.cls not in BACKBONES:
    got = "nothing" if model is None else model.cls
    raise UserError(f"the pickle's {ema.cls} wraps {got}; only EDM's "
                    f"{' and '.join(BACKBONES)} are supported")
  if not model.persistent or not model.init_kwargs:
    raise UserError(f"the pickle's {model.cls} does not record its constructor "
                    "arguments (EDM's persistence module does)")
  kwargs = dict(_DEFAULTS[model.cls])
  kwargs.update(model.init_kwargs)
  for k in ("img_resolution", "in_channels", "out_channels"):
    if k not in kwargs:
      raise UserError(f"the pickle's {model.cls} does not record {k}")
  return dict(precond=ema.cls, precond_kwargs=dict(ema.init_kwargs), backbone=model.cls,
              model=BACKBONES[model.cls], kwargs=kwargs)


def check_config(arch: dict[str, Any], config) -> None:
  """UserError naming the first field where `config` describes another network than the
  pickle's (`edm_architecture`): config.model.name, config.data.image_size and
  num_channels, the output channels, label_dim (or num_classes), config.model.precond
  ('edm' for EDMPrecond) and sigma_data, then EDM's architecture arguments in the
  order EDM's constructor lists them (model_channels, channel_mult, ...)."""
  m, d, kw = config.model, config.data, arch["kwargs"]
  if arch["precond"] != "EDMPrecond":
    raise UserError(f"the pickle's network uses EDM's {arch['precond']}; only EDMPrecond "
                    "networks (EDM's own training setup, config.model.precond = 'edm') "
                    "can be imported")
  checks = [
      ("config.model.name", m.get("name", None), arch["model"]),
      ("config.model.precond", m.get("precond", "score_sde"), "edm"),
      ("config.model.sigma_data", m.get("sigma_data", 0.5),
       arch["precond_kwargs"].get("sigma_data", 0.5)),
      ("config.data.image_size", d.get("image_size", None), kw["img_resolution"]),
      ("config.data.num_channels", d.get("num_channels", None), kw["in_channels"]),
      ("config.model.out_channels",
       m.get("out_channels", None) or d.get("num_channels", None), kw["out_channels"]),
      ("config.model.label_dim", label_dim_of(m), kw["label_dim"]),
  ]
  for field in _ARCH_FIELDS[arch["backbone"]]:
    ours = m.get(field, None)
    if field == "augment_dim":
      ours = m.get(field, 0)
    elif field == "channel_mult_emb":
      ours = m.get(field, 4)
    checks.append((f"config.model.{field}", ours, kw[field]))
  for name, ours, theirs in checks:
    if _norm(ours) != _norm(theirs):
      raise UserError(f"{name} = {ours!r}, but the EDM pickle's network has "
                      f"{theirs!r}: the config must describe the pickle's architecture")


def load_edm_backbone(path: str | os.PathLike) -> tuple[nnx.Module, dict[str, Any]]:
  """Our SongUNet / DhariwalUNet holding the 'ema' network of EDM pickle `path`, built
  from the pickle's recorded constructor arguments alone, and `edm_architecture`'s
  description. Works for any of EDM's preconditionings (the backbone is the same
  class); the preconditioning itself is left to the caller."""
  data = edm_pickle.read_edm_pickle(path)
  arch = edm_architecture(data["ema"])
  kw = {k: v for k, v in arch["kwargs"].items()}
  kw["channel_mult"] = tuple(kw["channel_mult"])
  kw["attn_resolutions"] = tuple(kw["attn_resolutions"])
  if "resample_filter" in kw:
    kw["resample_filter"] = tuple(kw["resample_filter"])
  cls = SongUNet if arch["backbone"] == "SongUNet" else DhariwalUNet
  try:
    net = nnx.eval_shape(lambda: cls(**kw, rngs=nnx.Rngs(0)))
  except TypeError as e:
    raise UserError(f"{path}: the pickle's {arch['backbone']} arguments do not fit ours "
                    f"({e})") from None
  sd = edm_pickle.state_dict(data["ema"].modules["model"])
  try:
    load_state_dict(net, sd)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  return net, arch


def load_edm_checkpoint(path: str | os.PathLike, config) -> nnx.Module:
  """`models.get_model(config)` (an EDMPrecond around song_unet / dhariwal_unet) with
  the EMA weights of EDM network pickle `path` (NVlabs/edm's `network-snapshot-*.pkl`
  or a released `edm-*.pkl`), read by models/edm_pickle.py without torch and without
  running the pickle's code. `net(x, sigma, class_labels=...)` then equals EDM's
  `net(x, sigma, class_labels)` on NHWC data.

  The pickle records the network's constructor arguments; `config` must describe the
  same network: the first field that differs raises UserError naming it
  (`check_config`), as does a missing file, a refused pickle global, a tensor without
  a counterpart or a variable left unfilled. The network is built abstractly
  (nnx.eval_shape), so no initialisation is computed."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingFileError(f"no such EDM network pickle: {path}")
  backbone, arch = load_edm_backbone(path)
  try:
    check_config(arch, config)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  net = nnx.eval_shape(lambda: get_model(config, nnx.Rngs(0)))
  if type(net.backbone) is not type(backbone):
    raise UserError(f"{path}: config.model builds {type(net.backbone).__name__}, the "
                    f"pickle holds {arch['backbone']}")
  net.backbone = backbone
  leftover = [p for p, v in nnx.iter_graph(net)
              if isinstance(v, nnx.Variable) and isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  if leftover:
    raise UserError(f"{path}: variable {'/'.join(map(str, leftover[0]))} of our network "
                    "has no counterpart in the pickle")
  return net
