"""Loading the checkpoints released with score_sde, score_sde_pytorch and RectifiedFlow into
our networks (`load_score_sde_checkpoint`), and the inverse maps for tests and tools."""
from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import zipfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import layers, normalization
from models import up_or_down_sampling as updown
from models.embeddings import GaussianFourierProjection
from models.pth import _LEGACY_MAGIC, load_pth
from models.registry import get_model
from common.errors import MissingFileError, UserError
from sde_lib import get_sde

__all__ = ["load_score_sde_checkpoint", "export_linen_params", "export_torch_state",
           "parameter_map"]


@dataclasses.dataclass(frozen=True)
class Entry:
  """One variable of our network and its names in the two released formats.

  ours: path in nnx.state(backbone); linen: '/'-joined path in params_ema; torch: state
  dict key without the DataParallel 'module.' prefix (None: not in the PyTorch model);
  kind: 'conv' (ours HWIO, torch OIHW), 'dense' (ours (in, out), torch (out, in)),
  'norm' (per-channel, may be stored (1, 1, 1, C)) or 'plain'; trainable: whether
  PyTorch's EMA tracks it (requires_grad)."""
  ours: tuple
  linen: str | None
  torch: str | None
  kind: str
  trainable: bool = True


# Leaves of our modules: (our name, linen name, torch name, kind), in PyTorch's
# registration order.
_LEAVES: dict[type, list[tuple[str, str, str, str]]] = {
    layers.Conv: [("kernel", "kernel", "weight", "conv"), ("bias", "bias", "bias", "plain")],
    updown.Conv2d: [("weight", "weight", "weight", "conv"),
                    ("bias", "bias", "bias", "plain")],
    layers.Dense: [("kernel", "kernel", "weight", "dense"),
                   ("bias", "bias", "bias", "plain")],
    layers.GroupNorm: [("scale", "scale", "weight", "norm"),
                       ("bias", "bias", "bias", "norm")],
    layers.NIN: [("W", "W", "W", "plain"), ("b", "b", "b", "plain")],
    GaussianFourierProjection: [("W", "W", "W", "plain")],
    # NCSNv2 (models/refinenet_layers.py): flax convs with PyTorch's init.
    nnx.Conv: [("kernel", "kernel", "weight", "conv"), ("bias", "bias", "bias", "plain")],
    # score_sde stores these (1, 1, 1, C); score_sde_pytorch's VarianceNorm2d calls its
    # scale `alpha`; nn.InstanceNorm2d (affine=False) has no parameters in PyTorch, so an
    # InstanceNorm network's .pth lacks them and is refused as a mismatch.
    normalization.InstanceNorm2dPlus: [("alpha", "alpha", "alpha", "norm"),
                                       ("gamma", "gamma", "gamma", "norm"),
                                       ("beta", "beta", "beta", "norm")],
    normalization.InstanceNorm2d: [("scale", "scale", "weight", "norm"),
                                   ("bias", "bias", "bias", "norm")],
    normalization.VarianceNorm2d: [("scale", "scale", "alpha", "norm"),
                                   ("bias", "bias", "bias", "norm")],
}


class _Walk:
  """Collects Entries while a family's walker visits our modules in build order.

  Linen names count per class within one parent scope (`scope`); PyTorch names index
  the top-level ModuleList (`all_modules.<i>`) and then use the same attribute names as
  linen inside blocks (score_sde_pytorch named them after the linen auto-names)."""

  def __init__(self, torch_list: str | None = "all_modules"):
    self.entries: list[Entry] = []
    self._counts: collections.Counter = collections.Counter()
    self._index = 0
    self._torch_list = torch_list

  def linen_name(self, cls: str) -> str:
    name = f"{cls}_{self._counts[cls]}"
    self._counts[cls] += 1
    return name

  def torch_name(self) -> str:
    name = f"{self._torch_list}.{self._index}"
    self._index += 1
    return name

  def leaf_module(self, mod, ours: tuple, linen: str | None, torch: str | None,
                  trainable: bool = True):
    """A module with parameters of its own (Conv, Dense, GroupNorm, NIN, ...)."""
    if type(mod) not in _LEAVES:
      raise TypeError(f"no parameter layout for {type(mod).__name__} at {ours}")
    for our_leaf, linen_leaf, torch_leaf, kind in _LEAVES[type(mod)]:
      if getattr(mod, our_leaf, None) is None:
        continue  # e.g. a conv without bias
      self.entries.append(Entry(
          ours + (our_leaf,), None if linen is None else f"{linen}/{linen_leaf}",
          None if torch is None else f"{torch}.{torch_leaf}", kind, trainable))

  def top(self, mod, ours: tuple, cls: str, *, in_torch_list: bool = True,
          sub: Callable | None = None):
    """A module built at the network's top scope: linen `<cls>_<k>`, torch
    `all_modules.<i>` (unless PyTorch keeps it outside the list: in_torch_list=False).
    `sub(walk, mod, ours, linen, torch)` maps a composite module's children; without
    it, mod is a leaf module (or None-with-no-params: only the names are consumed)."""
    linen = self.linen_name(cls)
    torch = self.torch_name() if in_torch_list else None
    if mod is None:
      return
    if sub is None:
      self.leaf_module(mod, ours, linen, torch)
    else:
      sub(self, mod, ours, linen, torch)


def _children(walk: _Walk, mod, ours, linen, torch, names: list[tuple[str, str]]):
  """Children of a composite module: (our attribute, linen/torch attribute name)."""
  for attr, ext in names:
    child = getattr(mod, attr)
    if child is not None:
      walk.leaf_module(child, ours + (attr,), f"{linen}/{ext}",
                       None if torch is None else f"{torch}.{ext}")


def _resblock(walk, mod, ours, linen, torch):
  """ResnetBlockDDPMpp / ResnetBlockBigGANpp / ResnetBlockDDPM (score_sde layerspp.py,
  layers.py): GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, then the shortcut:
  NIN_0 (DDPM-style, 1x1 'network in network') or Conv_2 (BigGAN's 1x1 conv, or a
  conv_shortcut)."""
  shortcut = getattr(mod, "shortcut", None)
  short_name = "NIN_0" if isinstance(shortcut, layers.NIN) else "Conv_2"
  _children(walk, mod, ours, linen, torch,
            [("norm0", "GroupNorm_0"), ("conv0", "Conv_0"), ("temb_proj", "Dense_0"),
             ("norm1", "GroupNorm_1"), ("conv1", "Conv_1"), ("shortcut", short_name)])


def _attn(walk, mod, ours, linen, torch):
  """AttnBlock(pp): GroupNorm_0, then NIN_0..3 = q, k, v, out."""
  _children(walk, mod, ours, linen, torch,
            [("norm", "GroupNorm_0"), ("q", "NIN_0"), ("k", "NIN_1"), ("v", "NIN_2"),
             ("out", "NIN_3")])


def _resample(walk, mod, ours, linen, torch):
  """layerspp Upsample / Downsample / Combine: one conv, `Conv_0` (plain conv) or
  `Conv2d_0` (StyleGAN2's fused FIR conv, up_or_down_sampling.Conv2d)."""
  conv = getattr(mod, "conv", None)
  if conv is not None:
    _children(walk, mod, ours, linen, torch,
              [("conv", "Conv2d_0" if isinstance(conv, updown.Conv2d) else "Conv_0")])


# ------------------------------------------------------------------------ the families


def _ncsnpp_entries(net) -> list[Entry]:
  """NCSN++ / DDPM++ (score_sde models/ncsnpp.py, score_sde_pytorch models/ncsnpp.py),
  following NCSNpp.__call__ (linen) and NCSNpp.__init__ (PyTorch) line by line."""
  w = _Walk()
  block_cls = ("ResnetBlockDDPMpp" if net.resblock_type == "ddpm"
               else "ResnetBlockBigGANpp")

  def block(mod, ours):
    w.top(mod, ours, block_cls, sub=_resblock)

  if net.fourier is not None:
    # requires_grad=False in PyTorch: not in the EMA list, read from the state dict.
    linen, torch = w.linen_name("GaussianFourierProjection"), w.torch_name()
    w.leaf_module(net.fourier, ("fourier",), linen, torch, trainable=False)
  if net.temb0 is not None:
    w.top(net.temb0, ("temb0",), "Dense")
    w.top(net.temb1, ("temb1",), "Dense")
  w.top(net.conv_in, ("conv_in",), "Conv")
  for i, level in enumerate(net.down_levels):
    p = ("down_levels", i)
    for j, b in enumerate(level.blocks):
      block(b, p + ("blocks", j))
      if len(level.attns):
        w.top(level.attns[j], p + ("attns", j), "AttnBlockpp", sub=_attn)
    if level.down is not None:
      if net.resblock_type == "ddpm":
        w.top(level.down, p + ("down",), "Downsample", sub=_resample)
      else:
        block(level.down, p + ("down",))
      if net.progressive_input == "input_skip":
        # PyTorch keeps this paramless module outside all_modules; linen counts it.
        w.top(level.pyramid_down, p + ("pyramid_down",), "Downsample",
              in_torch_list=False, sub=_resample)
        w.top(level.combine, p + ("combine",), "Combine", sub=_resample)
      elif net.progressive_input == "residual":
        w.top(level.pyramid_down, p + ("pyramid_down",), "Downsample", sub=_resample)
  block(net.mid_block0, ("mid_block0",))
  w.top(net.mid_attn, ("mid_attn",), "AttnBlockpp", sub=_attn)
  block(net.mid_block1, ("mid_block1",))
  for i, level in enumerate(net.up_levels):
    p = ("up_levels", i)
    for j, b in enumerate(level.blocks):
      block(b, p + ("blocks", j))
    if level.attn is not None:
      w.top(level.attn, p + ("attn",), "AttnBlockpp", sub=_attn)
    if net.progressive == "output_skip":
      if level.pyramid_up is not None:  # linen builds it before the norm; PyTorch: not listed
        w.top(level.pyramid_up, p + ("pyramid_up",), "Upsample", in_torch_list=False,
              sub=_resample)
      w.top(level.pyramid_norm, p + ("pyramid_norm",), "GroupNorm")
      w.top(level.pyramid_conv, p + ("pyramid_conv",), "Conv")
    elif net.progressive == "residual":
      if level.pyramid_up is None:
        w.top(level.pyramid_norm, p + ("pyramid_norm",), "GroupNorm")
        w.top(level.pyramid_conv, p + ("pyramid_conv",), "Conv")
      else:
        w.top(level.pyramid_up, p + ("pyramid_up",), "Upsample", sub=_resample)
    if level.up is not None:
      if net.resblock_type == "ddpm":
        w.top(level.up, p + ("up",), "Upsample", sub=_resample)
      else:
        block(level.up, p + ("up",))
  if net.conv_out is not None:
    w.top(net.out_norm, ("out_norm",), "GroupNorm")
    w.top(net.conv_out, ("conv_out",), "Conv")
  return w.entries


def _ddpm_entries(net) -> list[Entry]:
  """DDPM (score_sde models/ddpm.py, score_sde_pytorch models/ddpm.py): Dense_0/1,
  Conv_0, then ResnetBlockDDPM_k / AttnBlock_k / Downsample_k / Upsample_k in build
  order, GroupNorm_0 and Conv_1 at the end."""
  w = _Walk()
  if net.temb0 is not None:
    w.top(net.temb0, ("temb0",), "Dense")
    w.top(net.temb1, ("temb1",), "Dense")
  w.top(net.conv_in, ("conv_in",), "Conv")
  mids = [("mid_block0", "ResnetBlockDDPM", _resblock), ("mid_attn", "AttnBlock", _attn),
          ("mid_block1", "ResnetBlockDDPM", _resblock)]
  for side, levels in (("down", net.down), ("up", net.up)):
    for i, level in enumerate(levels):
      p = (side, i)
      for j, b in enumerate(level.blocks):
        w.top(b, p + ("blocks", j), "ResnetBlockDDPM", sub=_resblock)
        if side == "down" and len(level.attns):
          w.top(level.attns[j], p + ("attns", j), "AttnBlock", sub=_attn)
      if side == "up" and len(level.attns):
        w.top(level.attns[0], p + ("attns", 0), "AttnBlock", sub=_attn)
      if level.resample is not None:
        w.top(level.resample, p + ("resample",),
              "Downsample" if side == "down" else "Upsample", sub=_resample)
    if side == "down":
      for attr, cls, sub in mids:
        w.top(getattr(net, attr), (attr,), cls, sub=sub)
  w.top(net.out_norm, ("out_norm",), "GroupNorm")
  w.top(net.conv_out, ("conv_out",), "Conv")
  return w.entries


# score_sde_pytorch's attribute names of the encoder stages and RefineBlocks, per number
# of stages (ncsnv2_64: 4, ncsnv2_128: 5, ncsnv2_256: 6), our order. The 256 px net's extra
# stage is `res31`, fused by `refine31`, which PyTorch registers after `refine3`.
_NCSNV2_TORCH_STAGES = {
    4: ["res1", "res2", "res3", "res4"],
    5: ["res1", "res2", "res3", "res4", "res5"],
    6: ["res1", "res2", "res3", "res31", "res4", "res5"],
}
_NCSNV2_TORCH_REFINES = {  # (our refine index, torch name), in registration order
    4: [(0, "refine1"), (1, "refine2"), (2, "refine3"), (3, "refine4")],
    5: [(0, "refine1"), (1, "refine2"), (2, "refine3"), (3, "refine4"), (4, "refine5")],
    6: [(0, "refine1"), (1, "refine2"), (3, "refine3"), (2, "refine31"), (4, "refine4"),
        (5, "refine5")],
}
_NCSNV2_NORMS = (normalization.InstanceNorm2dPlus, normalization.InstanceNorm2d,
                 normalization.VarianceNorm2d)


def _ncsnv2_residual(w: _Walk, mod, ours, linen, torch, down: bool):
  """ResidualBlock (score_sde layers.py; score_sde_pytorch layers.py).

  linen builds, in call order: the first norm `<Norm>_0`; then for resample='down' conv1
  `Conv_0`, `<Norm>_1`, and either (dilated) conv2 `Conv_1`, shortcut `Conv_2`, or
  conv2 `ConvMeanPool_0/Conv_0`, shortcut `ConvMeanPool_1/Conv_0`; for resample=None the
  shortcut conv first (when the width changes), then conv1, `<Norm>_1`, conv2.
  PyTorch registers conv1, normalize2, conv2 (ConvMeanPool: conv2.conv), shortcut,
  normalize1."""
  from models.refinenet_layers import ConvMeanPool
  nc = type(mod.norm1).__name__  # our norm classes carry score_sde's linen class names
  pooled = isinstance(mod.conv2, ConvMeanPool)
  if down:
    conv1, conv2, short = "Conv_0", "Conv_1", "Conv_2"
    if pooled:
      conv2, short = "ConvMeanPool_0/Conv_0", "ConvMeanPool_1/Conv_0"
  elif mod.shortcut is not None:
    short, conv1, conv2 = "Conv_0", "Conv_1", "Conv_2"
  else:
    short, conv1, conv2 = None, "Conv_0", "Conv_1"
  sub = ".conv" if pooled else ""
  w.leaf_module(mod.conv1, ours + ("conv1",), f"{linen}/{conv1}", f"{torch}.conv1")
  w.leaf_module(mod.norm2, ours + ("norm2",), f"{linen}/{nc}_1", f"{torch}.normalize2")
  w.leaf_module(mod.conv2.conv if pooled else mod.conv2,
                ours + ("conv2",) + (("conv",) if pooled else ()),
                f"{linen}/{conv2}", f"{torch}.conv2{sub}")
  if mod.shortcut is not None:
    w.leaf_module(mod.shortcut.conv if pooled else mod.shortcut,
                  ours + ("shortcut",) + (("conv",) if pooled else ()),
                  f"{linen}/{short}", f"{torch}.shortcut{sub}")
  w.leaf_module(mod.norm1, ours + ("norm1",), f"{linen}/{nc}_0", f"{torch}.normalize1")


def _ncsnv2_refine(w: _Walk, mod, ours, linen, torch):
  """RefineBlock. linen: RCUBlock_0..n-1 (one per input), MSFBlock_0 (not in the start
  block), CRPBlock_0, then the output RCUBlock_n; each holds Conv_k in call order (RCU:
  k = block * n_stages + stage). PyTorch registers adapt_convs.<i> (convs named
  '<block+1>_<stage+1>_conv'), output_convs, msf.convs.<i>, crp.convs.<k>."""

  def rcu(r, o, lin, tor):
    for k, conv in enumerate(r.convs):
      b, s = divmod(k, r.n_stages)
      w.leaf_module(conv, o + ("convs", k), f"{lin}/Conv_{k}", f"{tor}.{b + 1}_{s + 1}_conv")

  n = len(mod.adapt)
  for i, r in enumerate(mod.adapt):
    rcu(r, ours + ("adapt", i), f"{linen}/RCUBlock_{i}", f"{torch}.adapt_convs.{i}")
  rcu(mod.output, ours + ("output",), f"{linen}/RCUBlock_{n}", f"{torch}.output_convs")
  if mod.msf is not None:
    for i, conv in enumerate(mod.msf.convs):
      w.leaf_module(conv, ours + ("msf", "convs", i), f"{linen}/MSFBlock_0/Conv_{i}",
                    f"{torch}.msf.convs.{i}")
  for k, conv in enumerate(mod.crp.convs):
    w.leaf_module(conv, ours + ("crp", "convs", k), f"{linen}/CRPBlock_0/Conv_{k}",
                  f"{torch}.crp.convs.{k}")


def _ncsnv2_entries(net) -> list[Entry]:
  """NCSNv2 64 / 128 / 256 px (score_sde models/ncsnv2.py NCSNv2, NCSNv2_128, NCSNv2_256;
  score_sde_pytorch models/ncsnv2.py, same names). linen's top scope: Conv_0 (begin),
  ResidualBlock_<i> and RefineBlock_<k> in call order, `<Norm>_0` and Conv_1 (end).
  PyTorch: begin_conv, normalizer, end_conv, res<s>.<0|1>, refine<k> (registration
  order, used by the exporter; the loader pairs the EMA list with the file's own order).

  score_sde's NCSN (`ncsn`) is refused: neither original can build it (score_sde's
  ConditionalResidualBlock calls `self.normalization(h, y)`, constructing a module from
  arrays; score_sde_pytorch's NCSN takes the unconditional InstanceNorm2dPlus and calls
  it with labels), so no checkpoint of it exists."""
  if net.conditional:
    raise UserError("config.model.name='ncsn': score_sde's NCSN cannot be imported: "
                    "neither yang-song/score_sde nor score_sde_pytorch can run that "
                    "model (both fail while building its conditional residual blocks), "
                    "so no checkpoint of it exists; supported NCSN-family names: "
                    "ncsnv2_64, ncsnv2_128, ncsnv2_256")
  if not isinstance(net.out_norm, _NCSNV2_NORMS):
    raise UserError(f"importing an NCSNv2 with normalization "
                    f"{type(net.out_norm).__name__} is not supported (config.model."
                    "normalization); supported: InstanceNorm++, InstanceNorm, VarianceNorm")
  n = len(net.refine)
  if n not in _NCSNV2_TORCH_STAGES or len(net.encoder) != 2 * n:
    raise UserError(f"an NCSNv2 with {n} stages matches none of score_sde's networks "
                    "(ncsnv2_64: 4, ncsnv2_128: 5, ncsnv2_256: 6)")
  w = _Walk(torch_list=None)
  nc = type(net.out_norm).__name__
  w.leaf_module(net.begin_conv, ("begin_conv",), "Conv_0", "begin_conv")
  w.leaf_module(net.out_norm, ("out_norm",), f"{nc}_0", "normalizer")
  w.leaf_module(net.end_conv, ("end_conv",), "Conv_1", "end_conv")
  for i, block in enumerate(net.encoder):
    stage, j = divmod(i, 2)
    _ncsnv2_residual(w, block, ("encoder", i), f"ResidualBlock_{i}",
                     f"{_NCSNV2_TORCH_STAGES[n][stage]}.{j}", down=j == 0 and stage > 0)
  for k, name in _NCSNV2_TORCH_REFINES[n]:
    _ncsnv2_refine(w, net.refine[k], ("refine", k), f"RefineBlock_{k}", name)
  return w.entries


def _ncsnv2_torch_backbone(backbone, config):
  """score_sde_pytorch's ncsnv2_64 (like ermongroup/ncsnv2) makes its third RefineBlock
  nf wide where score_sde's JAX net (our ncsnv2_64) uses 2 nf (models/ncsnv2.py): a
  .pth of it is loaded into our NCSNv2 class built with PyTorch's widths, refine
  (2, 2, 1, 1) nf. The 128 and 256 px nets agree in both codes."""
  from models import ncsnv2
  if len(backbone.refine) != 4:
    return None
  layout = dict(ncsnv2._LAYOUTS["ncsnv2_64"], refine_mults=(2, 2, 1, 1))
  m = config.model
  return ncsnv2.NCSNv2(
      channels=int(config.data.num_channels), nf=int(m.nf), **layout,
      normalization=m.get("normalization", "InstanceNorm++"),
      nonlinearity=m.get("nonlinearity", "elu"),
      interpolation=m.get("interpolation", "bilinear"),
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=nnx.Rngs(0))


def _ncsnpp_reverse_rf_time(net, params: dict[tuple, np.ndarray]) -> None:
  """Folds RectifiedFlow's time convention into NCSN++ weights (below):
  ours(x, l) = -theirs(x, 999 - l). params: ours-path -> array, modified in place.

  Rectified flow. RectifiedFlow's networks follow the opposite time convention: data at
  t_RF = 1, noise at t_RF = 0, x = t_RF x_1 + (1 - t_RF) z, the network predicts x_1 - z
  at labels 999 t_RF. Ours (docs/ARCHITECTURE.md, time direction): t = 1 - t_RF, labels 999 t, and the network predicts
  the velocity dx/dt = z - x_0. So ours(x, l) = -theirs(x, 999 - l). Both changes are
  folded into the weights, exactly: the positional embedding of 999 - l is a fixed
  rotation of the embedding of l per frequency (sin((c - l) w) = sin(cw) cos(lw) -
  cos(cw) sin(lw), cos((c - l) w) = cos(cw) cos(lw) + sin(cw) sin(lw)), which multiplies
  into the first time-embedding Dense layer, and the sign goes into the last conv. This is
  done for every .pth loaded for a process whose original code runs time the other way
  (`sde_lib.get_sde(config).reference_time_reversed`: rectified flow; score_sde has no
  rectified flow), so the imported network then samples and evaluates under our
  convention with no special case anywhere else.
  """
  if net.fourier is not None or net.temb0 is None:
    raise UserError("a RectifiedFlow checkpoint needs config.model.embedding_type="
                    "'positional' and conditional=True (its released DDPM++ networks)")
  kernel = params[("temb0", "kernel")].astype(np.float64)  # (nf, 4 nf)
  nf = kernel.shape[0]
  half = nf // 2
  # The frequencies exactly as models/embeddings.sinusoidal_embedding computes them.
  freqs = np.exp(-(np.log(10000.0) / (half - 1)) * np.arange(half, dtype=np.float32),
                 dtype=np.float32).astype(np.float64)
  c = 999.0 * freqs
  rot = np.zeros((nf, nf))  # embedding(999 - l) = rot @ embedding(l)
  i = np.arange(half)
  rot[i, i], rot[i, half + i] = -np.cos(c), np.sin(c)
  rot[half + i, i], rot[half + i, half + i] = np.sin(c), np.cos(c)
  params[("temb0", "kernel")] = (rot.T @ kernel).astype(np.float32)
  last = ([("conv_out",)] if net.conv_out is not None else
          [("up_levels", i, "pyramid_conv") for i in range(len(net.up_levels))])
  for mod in last:
    for leaf in ("kernel", "bias"):
      params[mod + (leaf,)] = -params[mod + (leaf,)]


@dataclasses.dataclass(frozen=True)
class _Family:
  entries: Callable[[Any], list[Entry]]
  torch_buffers: tuple[str, ...] = ()  # state-dict entries that are not parameters
  reverse_rf_time: Callable | None = None
  # (backbone, config) -> the backbone a .pth must be loaded into, or None: the same.
  torch_backbone: Callable | None = None
  linen_norm_4d: bool = False  # score_sde stores this family's norm parameters (1,1,1,C)


_FAMILIES: dict[type, _Family] = {}


def _register_families():
  from models.ddpm import DDPM
  from models.ncsnpp import NCSNpp
  _FAMILIES[DDPM] = _Family(_ddpm_entries, torch_buffers=("sigmas",))
  _FAMILIES[NCSNpp] = _Family(_ncsnpp_entries, torch_buffers=("sigmas",),
                              reverse_rf_time=_ncsnpp_reverse_rf_time)
  from models.ncsnv2 import NCSNv2
  _FAMILIES[NCSNv2] = _Family(_ncsnv2_entries, torch_buffers=("sigmas",),
                              torch_backbone=_ncsnv2_torch_backbone, linen_norm_4d=True)


_register_families()


def _family(backbone) -> _Family:
  fam = _FAMILIES.get(type(backbone))
  if fam is None:
    raise UserError(f"importing score_sde checkpoints is not supported for "
                    f"{type(backbone).__name__} networks; supported: "
                    f"{', '.join(sorted(t.__name__ for t in _FAMILIES))}")
  return fam


def _backbone(net):
  # get_model may wrap the backbone in the preconditioning module (attribute `backbone`).
  return getattr(net, "backbone", net)


def parameter_map(net) -> list[Entry]:
  """The Entries of every variable of `net`'s backbone, checked to cover its whole state
  exactly once (a missing mapping here is our bug, not the user's: AssertionError)."""
  backbone = _backbone(net)
  entries = _family(backbone).entries(backbone)
  ours = [path for path, _ in nnx.to_flat_state(nnx.state(backbone, nnx.Variable))]
  mapped = [e.ours for e in entries]
  dup = [p for p, n in collections.Counter(mapped).items() if n > 1]
  assert not dup, f"mapped twice: {dup[:5]}"
  assert set(mapped) == set(ours), (
      f"unmapped variables {sorted(set(ours) - set(mapped), key=str)[:5]}, "
      f"unknown paths {sorted(set(mapped) - set(ours), key=str)[:5]}")
  return entries


def _get(backbone, path: tuple):
  obj = backbone
  for p in path:
    obj = obj[p] if isinstance(p, int) else getattr(obj, p)
  return obj


def _from_linen(value: np.ndarray, kind: str) -> np.ndarray:
  value = np.asarray(value)
  if kind == "norm" and value.ndim > 1:
    value = value.reshape(value.shape[-1]) if value.size == value.shape[-1] else value
  return value


def _from_torch(value: np.ndarray, kind: str) -> np.ndarray:
  value = np.asarray(value)
  if kind == "conv" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if kind == "dense" and value.ndim == 2:
    return value.T
  return value


def _flatten_linen(tree, prefix="") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(_flatten_linen(v, name))
    else:
      out[name] = v
  return out


def _hint(config) -> str:
  return (f" (config.model.name={config.model.name!r}: is this the config the checkpoint "
          "was trained with? nf, ch_mult, num_res_blocks, attn_resolutions, "
          "resblock_type, progressive*, embedding_type, fir and conditional must match)")


def _check_names(path, config, found: set, expected: set, what: str):
  extra, missing = sorted(found - expected), sorted(expected - found)
  if extra or missing:
    parts = []
    if extra:
      parts.append(f"{len(extra)} {what} that the network has no place for, e.g. "
                   f"{', '.join(extra[:4])}")
    if missing:
      parts.append(f"{len(missing)} {what} that the network needs are absent, e.g. "
                   f"{', '.join(missing[:4])}")
    raise UserError(f"{path}: checkpoint does not match the configured network: "
                    + "; ".join(parts) + _hint(config))


def _linen_params(path: str, raw: bytes, config, entries) -> dict[tuple, np.ndarray]:
  from flax import serialization
  try:
    state = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types on bad input
    raise UserError(f"{path}: not a readable score_sde checkpoint (flax msgpack): "
                    f"{type(e).__name__}: {e}") from None
  if not isinstance(state, dict):
    raise UserError(f"{path}: a msgpack file, but not a score_sde train state")
  if "params_ema" in state:
    tree = state["params_ema"]
  elif "params" in state:  # a bare linen variable dict
    tree = state["params"]
  else:
    raise UserError(f"{path}: no 'params_ema' in the checkpoint (keys: "
                    f"{', '.join(map(str, state))}); expected a score_sde train state")
  if not isinstance(tree, dict):
    raise UserError(f"{path}: 'params_ema' is not a parameter tree")
  flat = _flatten_linen(tree)
  _check_names(path, config, set(flat), {e.linen for e in entries}, "parameters")
  return {e.ours: _from_linen(flat[e.linen], e.kind) for e in entries}


def _strip_prefix(sd: dict) -> dict:
  if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
    return {k[len("module."):]: v for k, v in sd.items()}  # DataParallel's prefix
  return dict(sd)


def _torch_params(path: str, obj, config, entries, buffers) -> dict[tuple, np.ndarray]:
  if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
    sd, ema = _strip_prefix(obj["model"]), obj.get("ema")
  elif isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
    sd, ema = _strip_prefix(obj), None
  else:
    raise UserError(f"{path}: a .pth file, but neither a score_sde_pytorch checkpoint "
                    "({'model', 'ema', 'optimizer', 'step'}) nor a state dict")
  for b in buffers:
    sd.pop(b, None)
  _check_names(path, config, set(sd), {e.torch for e in entries}, "state-dict entries")
  values = {e.torch: np.asarray(sd[e.torch]) for e in entries}
  if ema is not None:
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list):
      raise UserError(f"{path}: 'ema' holds no 'shadow_params' list")
    # model.parameters() order is the state dict's order restricted to parameters.
    trainable = [k for k in sd if k in {e.torch for e in entries if e.trainable}]
    if len(shadow) != len(trainable):
      raise UserError(f"{path}: the EMA has {len(shadow)} parameters, the network "
                      f"{len(trainable)}" + _hint(config))
    for name, value in zip(trainable, shadow):
      value = np.asarray(value)
      if value.shape != values[name].shape:
        raise UserError(f"{path}: EMA parameter for {name} has shape {value.shape}, the "
                        f"state dict {values[name].shape}: the EMA list is not in "
                        "model.parameters() order")
      values[name] = value
  return {e.ours: _from_torch(values[e.torch], e.kind) for e in entries}


def _is_pth(path: str) -> bool:
  if zipfile.is_zipfile(path):
    return True
  # torch's legacy format starts with its magic number, pickled (protocol 2).
  magic = pickle.dumps(_LEGACY_MAGIC, protocol=2)[:-1]
  with open(path, "rb") as f:
    return f.read(len(magic)) == magic


def load_score_sde_checkpoint(path: str | os.PathLike, config) -> nnx.Module:
  """The network of `config` with the EMA weights of a released score_sde checkpoint.

  path: score_sde's `checkpoint_N` (flax msgpack) or score_sde_pytorch's /
  RectifiedFlow's `checkpoint_N.pth`; config: the matching config (config.model
  describes the architecture). Returns `models.get_model(config, ...)` with every
  variable of its backbone set from the file, in float32; `net(x, labels, train=False)` then
  equals the original code's model output on the same input (for RectifiedFlow, under
  our time convention: `_ncsnpp_reverse_rf_time`). Raises UserError for a missing, unreadable or
  mismatching file; nothing is modified on failure.

  Usage:

      net = models.load_score_sde_checkpoint("exp/ve/cifar10_ncsnpp_continuous/checkpoint_24",
                                             config)
      y = net(x, labels, train=False)     # = score_sde's model.apply with params_ema

  `config` is the score_sde config the checkpoint was trained with (ours, under configs/,
  carry the same fields); the network is built from it by `models.get_model`, abstractly
  (nnx.eval_shape: no initialisation is computed), and its parameters are set to the
  checkpoint's EMA weights. The format is detected from the file:

  * score_sde (JAX, yang-song/score_sde): `checkpoint_N` is flax msgpack of the whole train
    state {'step', 'optimizer', 'lr', 'model_state', 'ema_rate', 'params_ema', 'rng'}; the
    network is `params_ema`, a tree of flax.linen auto-names. Linen names a submodule
    `<Class>_<k>` with one counter per class within its parent, counted in the order the
    modules are built (paramless ones included: NCSN++'s input_skip pyramid Downsample takes
    a `Downsample_k` number that the main Downsamples then skip).
  * score_sde_pytorch (yang-song/score_sde_pytorch) and RectifiedFlow (gnobitab/RectifiedFlow):
    `checkpoint_N.pth` = {'model': state_dict, 'ema': {'decay', 'num_updates',
    'shadow_params'}, 'optimizer', 'step'}, read by the allow-list reader models/pth.py.
    The EMA weights are `shadow_params`, a list in `model.parameters()` order (registration
    order: NCSN++'s `all_modules` ModuleList, each module's own parameters before its
    children's) holding only parameters with requires_grad: the Fourier features' W
    (requires_grad=False) comes from the state dict. Conv weights are OIHW (ours HWIO),
    Linear weights (out, in) (ours (in, out)). A bare state dict is accepted too (its
    weights are used as they are).

  Every variable of the network is filled exactly once; a name in the file that does not
  map, a variable the file does not fill, or a shape that differs raises `UserError`
  naming it (and the config field most likely wrong). GroupNorm-style parameters stored
  (1, 1, 1, C) are squeezed to (C,).

  NCSNv2 (ncsnv2_64 / _128 / _256; models/ncsnv2.py). Both formats; InstanceNorm++ (the
  released configs), InstanceNorm and VarianceNorm for msgpack. score_sde_pytorch's
  ncsnv2_64 differs from score_sde's JAX one (ours): its third RefineBlock is nf wide, not
  2 nf, so a .pth is loaded into our NCSNv2 class built with PyTorch's widths (the returned
  net's backbone is then not exactly `get_model(config)`'s: its shapes differ there). Its
  RefineBlocks also resize with align_corners=True where score_sde and ours use half-pixel
  centres, so a .pth NCSNv2 reproduces PyTorch's output only up to that interpolation
  difference; msgpack NCSNv2 reproduces score_sde's exactly. score_sde's NCSN (`ncsn`) is
  refused: neither original code can build it, so no checkpoint of it exists.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingFileError(f"no such checkpoint file: {path}")
  # Built abstractly (nothing initialised or compiled): every variable is overwritten.
  net = nnx.eval_shape(lambda: get_model(config, nnx.Rngs(0)))
  backbone = _backbone(net)
  fam = _family(backbone)
  is_pth = _is_pth(path)
  if is_pth and fam.torch_backbone is not None:
    other = nnx.eval_shape(lambda: fam.torch_backbone(backbone, config))
    if other is not None:
      net.backbone = backbone = other
  entries = parameter_map(net)
  if is_pth:
    params = _torch_params(path, load_pth(path), config, entries, fam.torch_buffers)
    if get_sde(config).reference_time_reversed:
      fam_rev = fam.reverse_rf_time
      if fam_rev is None:
        raise UserError(f"RectifiedFlow checkpoints are not supported for "
                        f"{type(backbone).__name__}")
      fam_rev(backbone, params)
  else:
    with open(path, "rb") as f:
      params = _linen_params(path, f.read(), config, entries)
  for e in entries:
    var = _get(backbone, e.ours)
    value = params[e.ours]
    if value.shape != var.shape:
      raise UserError(f"{path}: {e.linen or e.torch} has shape {value.shape}, the "
                      f"network's {'.'.join(map(str, e.ours))} {var.shape}"
                      + _hint(config))
    if not np.all(np.isfinite(value)):
      raise UserError(f"{path}: {e.linen or e.torch} holds non-finite values")
  for e in entries:
    var = _get(backbone, e.ours)
    var.set_value(jnp.asarray(params[e.ours], dtype=jnp.float32))
  leftover = [p for p, v in nnx.iter_graph(net)
              if isinstance(v.get_value() if isinstance(v, nnx.Variable) else v,
                            jax.ShapeDtypeStruct)]
  if leftover:
    raise UserError(f"{path}: variable {'/'.join(map(str, leftover[0]))} of our network "
                    "has no counterpart in the checkpoint")
  return net


# ----------------------------------------------------- the inverse maps (tests, tools)


def export_linen_params(net) -> dict:
  """The backbone's variables as a score_sde `params_ema` tree (nested dicts of linen
  auto-names, GroupNorm as (C,)): what score_sde's model.init would have built."""
  backbone = _backbone(net)
  norm_4d = _family(backbone).linen_norm_4d
  tree: dict = {}
  for e in parameter_map(net):
    node = tree
    *scopes, leaf = e.linen.split("/")
    for s in scopes:
      node = node.setdefault(s, {})
    value = np.asarray(_get(backbone, e.ours)[...])
    node[leaf] = value.reshape(1, 1, 1, -1) if norm_4d and e.kind == "norm" else value
  return tree


def export_torch_state(net) -> tuple[collections.OrderedDict, list[np.ndarray]]:
  """(state_dict, shadow_params) as score_sde_pytorch would hold them for this network:
  the state dict in registration order (OIHW convs, (out, in) Linear weights, without
  buffers or the 'module.' prefix) and the list of its trainable parameters in
  model.parameters() order."""
  backbone = _backbone(net)
  sd, shadow = collections.OrderedDict(), []
  for e in parameter_map(net):
    value = np.asarray(_get(backbone, e.ours)[...])
    if e.kind == "conv":
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif e.kind == "dense":
      value = value.T
    sd[e.torch] = np.ascontiguousarray(value)
    if e.trainable:
      shadow.append(sd[e.torch])
  return sd, shadow
