"""NCSNv2 (Song & Ermon 2020, "Improved techniques for training score-based generative
models") and score_sde's NCSN, as Flax NNX modules: one RefineNet class in three sizes
(details: `NCSNv2`)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models.normalization import get_normalization
from models.precond import get_sigmas  # noqa: F401  (its home before models/precond.py)
from models.refinenet_layers import RefineBlock, ResidualBlock, get_act, ncsn_conv
from models.registry import register_model
from common.errors import UserError


class NCSNv2(nnx.Module):
  """RefineNet score network of NCSNv2 (and, with conditional=True, of NCSN).

  x: (B, H, W, channels), data already centered to [-1, 1] (models.precond.Precond does
  that); labels: (B,), ignored unless conditional, where they are noise-level indices
  0 ... num_classes - 1 (int or float; cast to int32, truncating, as score_sde's
  Embed lookup of integer labels). Returns (B, H, W, channels) float32, unscaled (the
  1/sigma of scale_by_sigma is the wrapper's). H and W must be divisible by 2^(number of
  non-dilated down-sampling stages). There is no dropout: `train` and `key` are accepted
  for the common calling convention and ignored.

  NCSNv2 is a RefineNet (models/refinenet_layers.py) that does not see the noise level:
  following the paper's technique 3 it predicts s(x), and the wrapper models/precond.py
  (scale_by_sigma) returns s(x) / sigma_i, which makes ||sigma_i s_theta(x, sigma_i)||
  roughly noise-independent, as the true score of a Gaussian perturbation is. The noise
  levels are the SMLD geometric sequence (sde_lib.smld_sigmas, via models.precond.get_sigmas)

      sigma_i = exp(linspace(log sigma_max, log sigma_min, num_scales))_i,  i = 0 ... N - 1,

  descending (index 0 is the largest noise), as score_sde's get_sigmas; the labels a network
  receives in discrete VE mode are those indices (the process's network_labels:
  round((T - t)(N - 1))). The conditional NCSN looks its normalization parameters up by
  that index.

  Three sizes, registered under score_sde's names, share one class and differ in their
  encoder stages (channels as multiples of nf; "d" = dilation, "/2" = 2x down-sampling) and
  in the widths of the RefineBlocks that climb back:

      ncsnv2_64  (<= 64 px):  encoder nf, 2nf/2, 2nf d2, 2nf d4
                              refine  2nf, 2nf, 2nf, nf
      ncsnv2_128 (128 px):    encoder nf, 2nf/2, 2nf/2, 4nf d2, 4nf d4
                              refine  4nf, 2nf, 2nf, nf, nf
      ncsnv2_256 (256 px):    encoder nf, 2nf/2, 2nf/2, 2nf/2, 4nf d2, 4nf d4
                              refine  4nf, 2nf, 2nf, 2nf, nf, nf

  The widths follow score_sde's JAX port; the PyTorch NCSNv2 (ermongroup/ncsnv2) used nf
  for the third RefineBlock of the 64 px net, so its CIFAR-10 network is smaller than
  score_sde's (33,970,563 parameters at nf = 128). "ncsn" is score_sde's NCSN: the
  ncsnv2_64 layout with conditional InstanceNorm++ (one class per noise level) everywhere.
  """

  def __init__(self, *, channels: int = 3, nf: int = 128,
               stage_mults: Sequence[int] = (1, 2, 2, 2),
               stage_dilations: Sequence[int] = (1, 1, 2, 4),
               refine_mults: Sequence[int] = (2, 2, 2, 1),
               conditional: bool = False, num_classes: int | None = None,
               normalization: str = "InstanceNorm++", nonlinearity: str = "elu",
               interpolation: str = "bilinear", dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    if len(stage_mults) != len(stage_dilations) or len(refine_mults) != len(stage_mults):
      raise ValueError("stage_mults, stage_dilations and refine_mults must have one "
                       "entry per encoder stage")
    if conditional and not num_classes:
      raise ValueError("a noise-conditional NCSN needs num_classes (the number of noise "
                       "levels)")
    self.conditional = conditional
    self.dtype = dtype
    act = get_act(nonlinearity)
    self.act = act
    norm = get_normalization(normalization, conditional=conditional,
                             num_classes=int(num_classes) if conditional else None,
                             dtype=dtype)

    self.begin_conv = ncsn_conv(channels, nf, dtype=dtype, rngs=rngs)
    # Encoder: per stage, a (down-sampling or dilated) block then a same-width block.
    widths = [m * nf for m in stage_mults]
    blocks = []
    c_in = nf
    for s, (c, d) in enumerate(zip(widths, stage_dilations)):
      resample = None if s == 0 else "down"
      blocks.append(ResidualBlock(c_in, c, normalization=norm, act=act, resample=resample,
                                  dilation=d, dtype=dtype, rngs=rngs))
      blocks.append(ResidualBlock(c, c, normalization=norm, act=act, dilation=d,
                                  dtype=dtype, rngs=rngs))
      c_in = c
    self.encoder = nnx.List(blocks)

    # Decoder: RefineBlocks from the deepest stage up, each fusing one encoder stage with
    # the path from below.
    refine_norm = norm if conditional else None
    refines = []
    c_path = None
    n = len(widths)
    for k, m in enumerate(refine_mults):
      c_skip = widths[n - 1 - k]
      ins = [c_skip] if k == 0 else [c_skip, c_path]
      refines.append(RefineBlock(ins, m * nf, act=act, interpolation=interpolation,
                                 start=k == 0, end=k == n - 1, normalization=refine_norm,
                                 dtype=dtype, rngs=rngs))
      c_path = m * nf
    self.refine = nnx.List(refines)

    self.out_norm = norm(c_path, rngs=rngs)
    self.end_conv = ncsn_conv(c_path, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, labels: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    del train, key  # no dropout or batch statistics in NCSNv2
    cond = labels.astype(jnp.int32) if self.conditional else None

    h = self.begin_conv(x.astype(self.dtype))
    skips = []
    for i, block in enumerate(self.encoder):
      h = block(h, cond)
      if i % 2 == 1:
        skips.append(h)

    path = None
    for k, refine in enumerate(self.refine):
      skip = skips[len(skips) - 1 - k]
      xs = [skip] if path is None else [skip, path]
      path = refine(xs, skip.shape[1:3], cond)

    h = self.out_norm(path, cond) if self.conditional else self.out_norm(path)
    return self.end_conv(self.act(h)).astype(jnp.float32)


# Encoder / decoder layouts of score_sde's three NCSNv2 sizes (NCSNv2's docstring).
_LAYOUTS = {
    "ncsnv2_64": dict(stage_mults=(1, 2, 2, 2), stage_dilations=(1, 1, 2, 4),
                      refine_mults=(2, 2, 2, 1)),
    "ncsnv2_128": dict(stage_mults=(1, 2, 2, 4, 4), stage_dilations=(1, 1, 1, 2, 4),
                       refine_mults=(4, 2, 2, 1, 1)),
    "ncsnv2_256": dict(stage_mults=(1, 2, 2, 2, 4, 4), stage_dilations=(1, 1, 1, 1, 2, 4),
                       refine_mults=(4, 2, 2, 2, 1, 1)),
}


def _build(config, rngs: nnx.Rngs, layout: str, conditional: bool) -> NCSNv2:
  """Reads config.model.{nf, num_scales (conditional only: one class per noise level),
  normalization, nonlinearity, interpolation, dtype} and config.data.num_channels;
  config.training.continuous only to reject continuous labels for the conditional NCSN."""
  m = config.model
  if conditional and config.training.get("continuous", False):
    raise UserError("config.model.name = 'ncsn' looks its normalization up by noise-level "
                    "index: it needs config.training.continuous = False")
  return NCSNv2(
      channels=int(config.data.num_channels), nf=int(m.nf), **_LAYOUTS[layout],
      conditional=conditional, num_classes=int(m.num_scales) if conditional else None,
      normalization=m.get("normalization", "InstanceNorm++"),
      nonlinearity=m.get("nonlinearity", "elu"),
      interpolation=m.get("interpolation", "bilinear"),
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)


@register_model("ncsnv2_64")
def build_ncsnv2_64(config, rngs: nnx.Rngs) -> NCSNv2:
  return _build(config, rngs, "ncsnv2_64", conditional=False)


@register_model("ncsnv2_128")
def build_ncsnv2_128(config, rngs: nnx.Rngs) -> NCSNv2:
  return _build(config, rngs, "ncsnv2_128", conditional=False)


@register_model("ncsnv2_256")
def build_ncsnv2_256(config, rngs: nnx.Rngs) -> NCSNv2:
  return _build(config, rngs, "ncsnv2_256", conditional=False)


@register_model("ncsn")
def build_ncsn(config, rngs: nnx.Rngs) -> NCSNv2:
  """score_sde's NCSN: ncsnv2_64's layout, conditional InstanceNorm++ (num_scales classes)."""
  return _build(config, rngs, "ncsnv2_64", conditional=True)
