"""DDPM's U-Net (Ho et al. 2020, appendix B) as score_sde's "ddpm" model: the backbone only
(centering and 1/sigma are models/precond.py's)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models.embeddings import sinusoidal_embedding
from models.layers import (AttnBlock, Downsample, InitKeys, ResnetBlockDDPM, Upsample,
                           conv3x3, dense, get_act, group_norm)
from models.registry import register_model
from common.errors import UserError


class _Level(nnx.Module):
  """The modules of one U-Net resolution (filled in by DDPM.__init__)."""

  def __init__(self, blocks, attns, resample):
    self.blocks = nnx.List(blocks)
    self.attns = nnx.List(attns)  # empty, or one per block (down) / one (up)
    self.resample = resample  # Downsample / Upsample, or None at the last level


class DDPM(nnx.Module):
  """DDPM's U-Net.

  Call: net(x, labels, train=False, key=None). x: (B, image_size, image_size, channels),
  data already centered to [-1, 1] (models.precond.Precond does that); labels: (B,)
  timesteps (a DDPM index, 999 t, or an SMLD index), embedded sinusoidally. Returns
  (B, H, W, channels) float32. Channel counts nf * ch_mult must be multiples of 32
  (GroupNorm).

  A PixelCNN++-style U-Net: per resolution num_res_blocks residual blocks (GroupNorm with 32
  groups, swish, dropout), single-head self-attention at attn_resolutions, 2x resampling by
  strided / nearest-neighbour convolutions, skip connections concatenated on the way up, and
  a sinusoidal embedding of the timestep added inside every residual block. This is the
  backbone only: input centering and the 1/sigma output scaling of scale_by_sigma (SMLD) are
  models/precond.py's; what the output means for a process is models/parameterization.py's.
  """

  def __init__(self, *, channels: int = 3, image_size: int = 32, nf: int = 128,
               ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
               attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
               resamp_with_conv: bool = True, conditional: bool = True,
               nonlinearity: str = "swish", dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    num_resolutions = len(ch_mult)
    if image_size % 2 ** (num_resolutions - 1):
      raise ValueError(f"image_size {image_size} is not divisible by "
                       f"2^{num_resolutions - 1}")
    self.nf = nf
    self.conditional = conditional
    self.dtype = dtype
    act = get_act(nonlinearity)
    self.act = act
    keys = InitKeys.from_rngs(rngs)  # see InitKeys: one draw from the nnx.Rngs stream
    dt = dict(dtype=dtype, rngs=keys)

    if conditional:
      self.temb0 = dense(nf, 4 * nf, **dt)
      self.temb1 = dense(4 * nf, 4 * nf, **dt)
      temb_dim = 4 * nf
    else:
      self.temb0 = self.temb1 = temb_dim = None

    num_blocks = [0]  # residual blocks built, one dropout key each

    def resblock(in_ch, out_ch=None):
      num_blocks[0] += 1
      return ResnetBlockDDPM(in_ch, out_ch, temb_dim=temb_dim, act=act, dropout=dropout,
                             **dt)

    # Channel counts are tracked exactly as the forward pass produces them.
    self.conv_in = conv3x3(channels, nf, **dt)
    skip_ch = [nf]
    ch = nf
    down = []
    for i in range(num_resolutions):
      blocks, attns = [], []
      for _ in range(num_res_blocks):
        blocks.append(resblock(ch, nf * ch_mult[i]))
        ch = nf * ch_mult[i]
        if image_size // 2 ** i in attn_resolutions:
          attns.append(AttnBlock(ch, **dt))
        skip_ch.append(ch)
      resample = None
      if i != num_resolutions - 1:
        resample = Downsample(ch, with_conv=resamp_with_conv, **dt)
        skip_ch.append(ch)
      down.append(_Level(blocks, attns, resample))
    self.down = nnx.List(down)

    self.mid_block0 = resblock(ch)
    self.mid_attn = AttnBlock(ch, **dt)
    self.mid_block1 = resblock(ch)

    up = []
    for i in reversed(range(num_resolutions)):
      blocks = []
      for _ in range(num_res_blocks + 1):
        blocks.append(resblock(ch + skip_ch.pop(), nf * ch_mult[i]))
        ch = nf * ch_mult[i]
      attns = [AttnBlock(ch, **dt)] if image_size // 2 ** i in attn_resolutions else []
      resample = Upsample(ch, with_conv=resamp_with_conv, **dt) if i != 0 else None
      up.append(_Level(blocks, attns, resample))
    assert not skip_ch
    self.up = nnx.List(up)
    self.num_blocks = num_blocks[0]

    self.out_norm = group_norm(ch, 32, **dt)
    self.conv_out = conv3x3(ch, channels, init_scale=0.0, **dt)

  def __call__(self, x: jax.Array, labels: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    act = self.act
    # A distinct dropout key per residual block, all from one split of `key` (a single
    # PRNG call: per-block fold_ins would each add a hash for XLA to compile).
    block_keys = (jax.random.split(key, self.num_blocks) if train and key is not None
                  else None)
    counter = iter(range(self.num_blocks))

    def block(module, h, temb):
      i = next(counter)
      return module(h, temb, train=train, key=None if block_keys is None else block_keys[i])

    if self.conditional:
      temb = sinusoidal_embedding(labels.astype(jnp.float32), self.nf)
      temb = self.temb1(act(self.temb0(temb)))
    else:
      temb = None

    hs = [self.conv_in(x.astype(self.dtype))]
    for level in self.down:
      for j, res_block in enumerate(level.blocks):
        h = block(res_block, hs[-1], temb)
        if len(level.attns):
          h = level.attns[j](h)
        hs.append(h)
      if level.resample is not None:
        hs.append(level.resample(hs[-1]))

    h = hs[-1]
    h = block(self.mid_block0, h, temb)
    h = self.mid_attn(h)
    h = block(self.mid_block1, h, temb)

    for level in self.up:
      for res_block in level.blocks:
        h = block(res_block, jnp.concatenate([h, hs.pop()], axis=-1), temb)
      if len(level.attns):
        h = level.attns[0](h)
      if level.resample is not None:
        h = level.resample(h)
    assert not hs

    return self.conv_out(act(self.out_norm(h))).astype(jnp.float32)


@register_model("ddpm")
def build_ddpm(config, rngs: nnx.Rngs) -> DDPM:
  """Builds DDPM's U-Net backbone from config.

  Reads config.model.{nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
  resamp_with_conv, conditional, nonlinearity, normalization (must be 'GroupNorm'), dtype}
  and the image shape config.data.{num_channels, image_size}.
  """
  m = config.model
  normalization = m.get("normalization", "GroupNorm")
  if normalization != "GroupNorm":
    raise UserError(f"the DDPM network uses GroupNorm, got normalization={normalization!r}")
  return DDPM(
      channels=int(config.data.num_channels), image_size=int(config.data.image_size),
      nf=int(m.nf), ch_mult=tuple(m.ch_mult), num_res_blocks=int(m.num_res_blocks),
      attn_resolutions=tuple(m.attn_resolutions), dropout=float(m.dropout),
      resamp_with_conv=bool(m.resamp_with_conv), conditional=bool(m.conditional),
      nonlinearity=m.nonlinearity, dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)
