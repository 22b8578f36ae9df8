"""NCSN++ and DDPM++ (Song et al. 2021, "Score-based generative modeling through SDEs",
section 4.4 and appendix H), one U-Net class configured by keyword arguments.

Both refine DDPM's U-Net (models/ddpm.py). The options, with score_sde's config names:

  resblock_type        'ddpm' (DDPM residual blocks, separate Down/Upsample layers) or
                       'biggan' (BigGAN residual blocks that resample themselves)
  fir, fir_kernel      anti-aliased FIR resampling (StyleGAN2) instead of naive
  skip_rescale         residual sums divided by sqrt(2)
  progressive          output side: 'none', 'output_skip' (sum of upsampled per-resolution
                       RGB outputs, StyleGAN2), 'residual' (a residual upsampling path)
  progressive_input    input side: 'none', 'input_skip' (the downsampled image merged in by
                       `Combine` at every resolution), 'residual'
  progressive_combine  how `input_skip` merges: 'sum' or 'cat'
  embedding_type       'fourier' (random Fourier features of log sigma; continuous VE) or
                       'positional' (DDPM's sinusoidal embedding of a time or an index)

Class-conditional (num_classes > 0): a learned class embedding of width 4 nf
(models/class_embedding.py; num_classes + 1 rows, the last the null label of
classifier-free guidance) is added to the output of the time-embedding MLP, which every
residual block then reads, exactly where ADM adds its `label_emb(y)`
(openai/guided-diffusion unet.py; EDM's SongUNet adds its `map_label` to the noise
embedding, before its mapping MLP). It needs the noise-conditional embedding
(conditional=True). With num_classes = 0 the parameters and
outputs are those of the unconditional network.

NCSN++ (VE) is biggan + fir + progressive_input='residual' + fourier (+ scale_by_sigma in
the wrapper); DDPM++ (VP) is biggan, no FIR, no progressive paths, positional. This is the
backbone only: input centering and the 1/sigma output scaling are models/precond.py's,
and what the output means for a process is models/parameterization.py's.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import layerspp
from models.class_embedding import ClassEmbedding
from models.embeddings import GaussianFourierProjection, sinusoidal_embedding
from models.layers import InitKeys, conv3x3, dense, get_act, group_norm
from models.registry import register_model
from sde_lib import UserError

_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


class _DownLevel(nnx.Module):
  """The modules of one encoder resolution (filled in by NCSNpp.__init__)."""

  def __init__(self, blocks, attns, down, pyramid_down, combine):
    self.blocks = nnx.List(blocks)
    self.attns = nnx.List(attns)  # empty, or one per block
    self.down = down  # None at the lowest resolution
    self.pyramid_down = pyramid_down
    self.combine = combine


class _UpLevel(nnx.Module):
  """The modules of one decoder resolution (filled in by NCSNpp.__init__)."""

  def __init__(self, blocks, attn, pyramid_norm, pyramid_conv, pyramid_up, up):
    self.blocks = nnx.List(blocks)
    self.attn = attn
    self.pyramid_norm = pyramid_norm
    self.pyramid_conv = pyramid_conv
    self.pyramid_up = pyramid_up
    self.up = up  # None at the highest resolution


class NCSNpp(nnx.Module):
  """The NCSN++ / DDPM++ U-Net (see module docstring for the options).

  Call: net(x, labels, *, class_labels=None, train=False, key=None).
  x: (B, image_size, image_size, channels), data already centered to [-1, 1]
  (models.precond.Precond does that); labels: (B,), a noise level sigma (fourier
  embedding, whose log is embedded), or a time / noise-level index (positional);
  class_labels: (B,) int in [0, num_classes], or None for the null label (class-
  conditional networks only). Returns (B, H, W, channels) float32, unscaled (the 1/sigma of
  scale_by_sigma is the wrapper's). Dropout is applied only when train=True, with `key`.
  """

  def __init__(self, *, channels: int = 3, image_size: int = 32, nf: int = 128,
               ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
               attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
               resamp_with_conv: bool = True, conditional: bool = True,
               fir: bool = True, fir_kernel: Sequence[int] = (1, 3, 3, 1),
               skip_rescale: bool = True, resblock_type: str = "biggan",
               progressive: str = "none", progressive_input: str = "residual",
               progressive_combine: str = "sum", embedding_type: str = "fourier",
               fourier_scale: float = 16.0, init_scale: float = 0.0,
               nonlinearity: str = "swish", num_classes: int = 0,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    resblock_type, progressive = resblock_type.lower(), progressive.lower()
    progressive_input = progressive_input.lower()
    embedding_type = embedding_type.lower()
    if resblock_type not in ("ddpm", "biggan"):
      raise ValueError(f"resblock_type must be 'ddpm' or 'biggan', got {resblock_type!r}")
    if progressive not in _PROGRESSIVE:
      raise ValueError(f"progressive must be one of {_PROGRESSIVE}, got {progressive!r}")
    if progressive_input not in _PROGRESSIVE_INPUT:
      raise ValueError(f"progressive_input must be one of {_PROGRESSIVE_INPUT}, "
                       f"got {progressive_input!r}")
    if embedding_type not in ("fourier", "positional"):
      raise ValueError(f"embedding_type must be 'fourier' or 'positional', "
                       f"got {embedding_type!r}")
    if num_classes and not conditional:
      raise UserError("a class-conditional NCSN++ (config.model.num_classes > 0) adds its "
                      "class embedding to the time embedding: it needs "
                      "config.model.conditional = True")
    num_resolutions = len(ch_mult)
    if image_size % 2 ** (num_resolutions - 1):
      raise ValueError(f"image_size {image_size} is not divisible by "
                       f"2^{num_resolutions - 1}")

    self.nf, self.num_res_blocks = nf, num_res_blocks
    self.num_resolutions = num_resolutions
    self.conditional = conditional
    self.skip_rescale = skip_rescale
    self.resblock_type = resblock_type
    self.progressive, self.progressive_input = progressive, progressive_input
    self.embedding_type = embedding_type
    self.dtype = dtype
    act = get_act(nonlinearity)
    self.act = act
    keys = InitKeys.from_rngs(rngs)  # see InitKeys: one draw from the nnx.Rngs stream
    dt = dict(dtype=dtype, rngs=keys)

    # Time / noise-level embedding -> a 2-layer MLP of width 4 nf.
    if conditional:
      if embedding_type == "fourier":
        self.fourier = GaussianFourierProjection(nf, fourier_scale, rngs=keys)
        emb_dim = 2 * nf
      else:
        self.fourier = None
        emb_dim = nf
      self.temb0 = dense(emb_dim, 4 * nf, **dt)
      self.temb1 = dense(4 * nf, 4 * nf, **dt)
      temb_dim = 4 * nf
    else:
      self.fourier, self.temb0, self.temb1, temb_dim = None, None, None, None

    num_blocks = [0]  # residual blocks built, one dropout key each

    def resblock(in_ch, out_ch=None, up=False, down=False):
      num_blocks[0] += 1
      if resblock_type == "ddpm":
        return layerspp.ResnetBlockDDPMpp(in_ch, out_ch, temb_dim=temb_dim, act=act,
                                          dropout=dropout, skip_rescale=skip_rescale,
                                          init_scale=init_scale, **dt)
      return layerspp.ResnetBlockBigGANpp(in_ch, out_ch, temb_dim=temb_dim, act=act,
                                          up=up, down=down, dropout=dropout, fir=fir,
                                          fir_kernel=fir_kernel, skip_rescale=skip_rescale,
                                          init_scale=init_scale, **dt)

    def attn(ch):
      return layerspp.AttnBlockpp(ch, skip_rescale=skip_rescale, init_scale=init_scale, **dt)

    # Channel counts are tracked exactly as the forward pass produces them.
    self.conv_in = conv3x3(channels, nf, **dt)
    skip_ch = [nf]
    ch, pyr_ch = nf, channels
    down_levels = []
    for i in range(num_resolutions):
      res = image_size // 2 ** i
      blocks, attns = [], []
      for _ in range(num_res_blocks):
        blocks.append(resblock(ch, nf * ch_mult[i]))
        ch = nf * ch_mult[i]
        if res in attn_resolutions:
          attns.append(attn(ch))
        skip_ch.append(ch)
      down = pyramid_down = combine = None
      if i != num_resolutions - 1:
        if resblock_type == "ddpm":
          down = layerspp.Downsample(ch, with_conv=resamp_with_conv, fir=fir,
                                     fir_kernel=fir_kernel, **dt)
        else:
          down = resblock(ch, down=True)
        if progressive_input == "input_skip":
          pyramid_down = layerspp.Downsample(pyr_ch, with_conv=False, fir=fir,
                                             fir_kernel=fir_kernel, **dt)
          combine = layerspp.Combine(pyr_ch, ch, method=progressive_combine, **dt)
          if progressive_combine == "cat":
            ch *= 2
        elif progressive_input == "residual":
          pyramid_down = layerspp.Downsample(pyr_ch, ch, with_conv=True, fir=fir,
                                             fir_kernel=fir_kernel, **dt)
          pyr_ch = ch
        skip_ch.append(ch)
      down_levels.append(_DownLevel(blocks, attns, down, pyramid_down, combine))
    self.down_levels = nnx.List(down_levels)

    self.mid_block0 = resblock(ch)
    self.mid_attn = attn(ch)
    self.mid_block1 = resblock(ch)

    up_levels = []
    pyr_ch = None
    for i in reversed(range(num_resolutions)):
      res = image_size // 2 ** i
      blocks = []
      for _ in range(num_res_blocks + 1):
        blocks.append(resblock(ch + skip_ch.pop(), nf * ch_mult[i]))
        ch = nf * ch_mult[i]
      level_attn = attn(ch) if res in attn_resolutions else None
      pyramid_norm = pyramid_conv = pyramid_up = None
      if progressive == "output_skip":
        pyramid_norm = group_norm(ch, **dt)
        pyramid_conv = conv3x3(ch, channels, init_scale=init_scale, **dt)
        if i != num_resolutions - 1:
          pyramid_up = layerspp.Upsample(channels, with_conv=False, fir=fir,
                                         fir_kernel=fir_kernel, **dt)
      elif progressive == "residual":
        if i == num_resolutions - 1:
          pyramid_norm = group_norm(ch, **dt)
          pyramid_conv = conv3x3(ch, ch, **dt)
        else:
          pyramid_up = layerspp.Upsample(pyr_ch, ch, with_conv=True, fir=fir,
                                         fir_kernel=fir_kernel, **dt)
        pyr_ch = ch
      up = None
      if i != 0:
        if resblock_type == "ddpm":
          up = layerspp.Upsample(ch, with_conv=resamp_with_conv, fir=fir,
                                 fir_kernel=fir_kernel, **dt)
        else:
          up = resblock(ch, up=True)
      up_levels.append(_UpLevel(blocks, level_attn, pyramid_norm, pyramid_conv,
                                pyramid_up, up))
    assert not skip_ch
    self.up_levels = nnx.List(up_levels)
    self.num_blocks = num_blocks[0]

    if progressive == "output_skip":
      self.out_norm, self.conv_out = None, None
    else:
      self.out_norm = group_norm(ch, **dt)
      self.conv_out = conv3x3(ch, channels, init_scale=init_scale, **dt)

    self.num_classes = int(num_classes)
    # Built last, from its own key: the other parameters are those of the unconditional
    # network of the same seed.
    self.class_emb = (ClassEmbedding(self.num_classes, temb_dim, rngs=keys)
                      if self.num_classes else None)

  def __call__(self, x: jax.Array, labels: jax.Array, *,
               class_labels: jax.Array | None = None, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    if class_labels is not None and self.class_emb is None:
      raise UserError("class labels were given to an unconditional NCSN++ "
                      "(config.model.num_classes = 0)")
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
      if self.embedding_type == "fourier":
        temb = self.fourier(jnp.log(labels.astype(jnp.float32)))
      else:
        temb = sinusoidal_embedding(labels.astype(jnp.float32), self.nf)
      temb = self.temb1(act(self.temb0(temb)))
      if self.class_emb is not None:
        temb = temb + self.class_emb(class_labels, x.shape[0]).astype(temb.dtype)
    else:
      temb = None

    x = x.astype(self.dtype)

    # Encoder. input_pyramid is the image at the current resolution (input_skip) or a
    # residual stream that starts from it (residual).
    input_pyramid = x if self.progressive_input != "none" else None
    hs = [self.conv_in(x)]
    for level in self.down_levels:
      for j, res_block in enumerate(level.blocks):
        h = block(res_block, hs[-1], temb)
        if len(level.attns):
          h = level.attns[j](h)
        hs.append(h)
      if level.down is not None:
        if self.resblock_type == "ddpm":
          h = level.down(hs[-1])
        else:
          h = block(level.down, hs[-1], temb)
        if self.progressive_input == "input_skip":
          input_pyramid = level.pyramid_down(input_pyramid)
          h = level.combine(input_pyramid, h)
        elif self.progressive_input == "residual":
          input_pyramid = self._skip_sum(level.pyramid_down(input_pyramid), h)
          h = input_pyramid
        hs.append(h)

    h = hs[-1]
    h = block(self.mid_block0, h, temb)
    h = self.mid_attn(h)
    h = block(self.mid_block1, h, temb)

    # Decoder. pyramid is the running output image (output_skip) or residual stream.
    pyramid = None
    for level in self.up_levels:
      for res_block in level.blocks:
        h = block(res_block, jnp.concatenate([h, hs.pop().astype(h.dtype)], axis=-1), temb)
      if level.attn is not None:
        h = level.attn(h)
      if self.progressive == "output_skip":
        out = level.pyramid_conv(act(level.pyramid_norm(h)))
        pyramid = out if pyramid is None else level.pyramid_up(pyramid) + out
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = level.pyramid_conv(act(level.pyramid_norm(h)))
        else:
          pyramid = self._skip_sum(level.pyramid_up(pyramid), h)
          h = pyramid
      if level.up is not None:
        if self.resblock_type == "ddpm":
          h = level.up(h)
        else:
          h = block(level.up, h, temb)
    assert not hs

    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = self.conv_out(act(self.out_norm(h)))
    return h.astype(jnp.float32)

  def _skip_sum(self, a: jax.Array, b: jax.Array) -> jax.Array:
    s = a + b.astype(a.dtype)
    return s / np.sqrt(2.0) if self.skip_rescale else s


@register_model("ncsnpp")
def build_ncsnpp(config, rngs: nnx.Rngs) -> NCSNpp:
  """Builds the NCSN++ / DDPM++ backbone from config.

  Reads config.model.{nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
  resamp_with_conv, conditional, fir, fir_kernel, skip_rescale, resblock_type, progressive,
  progressive_input, progressive_combine, embedding_type, fourier_scale, init_scale,
  nonlinearity, num_classes (absent: 0), dtype} and the image shape
  config.data.{num_channels, image_size};
  config.training.continuous only to reject the Fourier embedding with discrete labels.
  """
  m = config.model
  if str(m.embedding_type).lower() == "fourier" and not config.training.continuous:
    # log(label) of a discrete index (0 included) is meaningless; score_sde asserts too.
    raise UserError("config.model.embedding_type = 'fourier' (Fourier features of log "
                    "sigma) takes noise levels: it needs config.training.continuous = True; "
                    "discrete (index) labels need 'positional'")
  return NCSNpp(
      channels=int(config.data.num_channels), image_size=int(config.data.image_size),
      nf=int(m.nf), ch_mult=tuple(m.ch_mult), num_res_blocks=int(m.num_res_blocks),
      attn_resolutions=tuple(m.attn_resolutions), dropout=float(m.dropout),
      resamp_with_conv=bool(m.resamp_with_conv), conditional=bool(m.conditional),
      fir=bool(m.fir), fir_kernel=tuple(m.fir_kernel), skip_rescale=bool(m.skip_rescale),
      resblock_type=m.resblock_type, progressive=m.progressive,
      progressive_input=m.progressive_input, progressive_combine=m.progressive_combine,
      embedding_type=m.embedding_type, fourier_scale=float(m.fourier_scale),
      init_scale=float(m.init_scale), nonlinearity=m.nonlinearity,
      num_classes=int(m.get("num_classes", 0)),
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)
