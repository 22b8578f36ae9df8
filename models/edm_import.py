"""EDM's released networks (NVlabs/edm `network-snapshot-*.pkl`, Karras et al. 2022) in our
SongUNet / DhariwalUNet: their constructor arguments as our config, their tensors as our
parameters (`load_edm_checkpoint`, `load_state_dict`)."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.errors import UserError
from models.layers import GroupNorm
from models.song_unet import Conv2d, FourierEmbedding, Linear, resample_kernel

__all__ = ["load_state_dict", "BACKBONES", "PRECONDS"]

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
