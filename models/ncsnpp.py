"""NCSN++ and DDPM++ (Song et al. 2021, section 4.4 and appendix H), one U-Net class
configured by keyword arguments with score_sde's names (the options: `NCSNpp`)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import layerspp
from models.class_embedding import ClassEmbedding
from models.embeddings import GaussianFourierProjection, sinusoidal_embedding
from models.layers import InitKeys, conv3x3, dense, get_act, group_norm
from models.registry import register_model
from common.choices import check_choice
from common.errors import UserError

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


def _check_options(resblock_type: str, progressive: str, progressive_input: str,
                   embedding_type: str, num_classes: int, conditional: bool,
                   image_size: int, num_resolutions: int) -> None:
  """Raises UserError for an option outside its choices or an image size the U-Net's
  num_resolutions - 1 halvings do not divide."""
  check_choice(resblock_type, ("ddpm", "biggan"), "resblock_type")
  check_choice(progressive, _PROGRESSIVE, "progressive")
  check_choice(progressive_input, _PROGRESSIVE_INPUT, "progressive_input")
  check_choice(embedding_type, ("fourier", "positional"), "embedding_type")
  if num_classes and not conditional:
    raise UserError("a class-conditional NCSN++ (config.model.num_classes > 0) adds its "
                    "class embedding to the time embedding: it needs "
                    "config.model.conditional = True")
  if image_size % 2 ** (num_resolutions - 1):
    raise UserError(f"image_size {image_size} is not divisible by "
                    f"2^{num_resolutions - 1}")


@dataclasses.dataclass
class _Blocks:
  """Builds the residual, attention and resampling blocks of one NCSN++ with its shared
  options, counting the residual blocks (each gets its own dropout key at call time)."""

  resblock_type: str
  temb_dim: int | None
  act: Callable
  dropout: float
  fir: bool
  fir_kernel: Sequence[int]
  skip_rescale: bool
  init_scale: float
  resamp_with_conv: bool
  dt: dict
  num_blocks: int = 0

  def resblock(self, in_ch: int, out_ch: int | None = None, up: bool = False,
               down: bool = False) -> nnx.Module:
    self.num_blocks += 1
    common = dict(temb_dim=self.temb_dim, act=self.act, dropout=self.dropout,
                  skip_rescale=self.skip_rescale, init_scale=self.init_scale, **self.dt)
    if self.resblock_type == "ddpm":
      return layerspp.ResnetBlockDDPMpp(in_ch, out_ch, **common)
    return layerspp.ResnetBlockBigGANpp(in_ch, out_ch, up=up, down=down, fir=self.fir,
                                        fir_kernel=self.fir_kernel, **common)

  def attn(self, ch: int) -> nnx.Module:
    return layerspp.AttnBlockpp(ch, skip_rescale=self.skip_rescale,
                                init_scale=self.init_scale, **self.dt)

  def downsample(self, ch: int) -> nnx.Module:
    """A Downsample layer (ddpm) or a down-sampling residual block (biggan)."""
    if self.resblock_type == "ddpm":
      return layerspp.Downsample(ch, with_conv=self.resamp_with_conv, fir=self.fir,
                                 fir_kernel=self.fir_kernel, **self.dt)
    return self.resblock(ch, down=True)

  def upsample(self, ch: int) -> nnx.Module:
    """An Upsample layer (ddpm) or an up-sampling residual block (biggan)."""
    if self.resblock_type == "ddpm":
      return layerspp.Upsample(ch, with_conv=self.resamp_with_conv, fir=self.fir,
                               fir_kernel=self.fir_kernel, **self.dt)
    return self.resblock(ch, up=True)


class NCSNpp(nnx.Module):
  """The NCSN++ / DDPM++ U-Net (the options below).

  Call: net(x, labels, *, class_labels=None, train=False, key=None).
  x: (B, image_size, image_size, channels), data already centered to [-1, 1]
  (models.precond.Precond does that); labels: (B,), a noise level sigma (fourier
  embedding, whose log is embedded), or a time / noise-level index (positional);
  class_labels: (B,) int in [0, num_classes], or None for the null label (class-
  conditional networks only). Returns (B, H, W, channels) float32, unscaled (the 1/sigma of
  scale_by_sigma is the wrapper's). Dropout is applied only when train=True, with `key`.

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
    _check_options(resblock_type, progressive, progressive_input, embedding_type,
                   num_classes, conditional, image_size, len(ch_mult))
    self.nf, self.num_res_blocks = nf, num_res_blocks
    self.num_resolutions = len(ch_mult)
    self.conditional = conditional
    self.skip_rescale = skip_rescale
    self.resblock_type = resblock_type
    self.progressive, self.progressive_input = progressive, progressive_input
    self.embedding_type = embedding_type
    self.dtype = dtype
    self.act = get_act(nonlinearity)
    keys = InitKeys.from_rngs(rngs)  # see InitKeys: one draw from the nnx.Rngs stream
    # The modules are built in score_sde's order (embedding, down path, middle, up path,
    # output): the parameters' names, order and initial values depend on it, and the
    # checkpoint importer (models/score_sde_import.py) relies on the names.
    temb_dim = self._build_embedding(nf, conditional, embedding_type, fourier_scale,
                                     dtype, keys)
    make = _Blocks(resblock_type=resblock_type, temb_dim=temb_dim, act=self.act,
                   dropout=dropout, fir=fir, fir_kernel=fir_kernel,
                   skip_rescale=skip_rescale, init_scale=init_scale,
                   resamp_with_conv=resamp_with_conv, dt=dict(dtype=dtype, rngs=keys))
    ch, skip_ch = self._build_down(make, channels, image_size, nf, ch_mult,
                                   num_res_blocks, attn_resolutions, progressive_input,
                                   progressive_combine)
    self.mid_block0 = make.resblock(ch)
    self.mid_attn = make.attn(ch)
    self.mid_block1 = make.resblock(ch)
    ch = self._build_up(make, ch, skip_ch, channels, image_size, nf, ch_mult,
                        num_res_blocks, attn_resolutions, progressive)
    self.num_blocks = make.num_blocks

    if progressive == "output_skip":
      self.out_norm, self.conv_out = None, None
    else:
      self.out_norm = group_norm(ch, **make.dt)
      self.conv_out = conv3x3(ch, channels, init_scale=init_scale, **make.dt)

    self.num_classes = int(num_classes)
    # Built last, from its own key: the other parameters are those of the unconditional
    # network of the same seed.
    self.class_emb = (ClassEmbedding(self.num_classes, temb_dim, rngs=keys)
                      if self.num_classes else None)

  def _build_embedding(self, nf: int, conditional: bool, embedding_type: str,
                       fourier_scale: float, dtype, keys: InitKeys) -> int | None:
    """The time / noise-level embedding and its 2-layer MLP of width 4 nf; returns that
    width (None without noise conditioning)."""
    if not conditional:
      self.fourier, self.temb0, self.temb1 = None, None, None
      return None
    if embedding_type == "fourier":
      self.fourier = GaussianFourierProjection(nf, fourier_scale, rngs=keys)
      emb_dim = 2 * nf
    else:
      self.fourier = None
      emb_dim = nf
    self.temb0 = dense(emb_dim, 4 * nf, dtype=dtype, rngs=keys)
    self.temb1 = dense(4 * nf, 4 * nf, dtype=dtype, rngs=keys)
    return 4 * nf

  def _build_down(self, make: "_Blocks", channels: int, image_size: int, nf: int,
                  ch_mult: Sequence[int], num_res_blocks: int,
                  attn_resolutions: Sequence[int], progressive_input: str,
                  progressive_combine: str) -> tuple[int, list[int]]:
    """The input conv and the encoder, one _DownLevel per resolution. Returns the channel
    count at the bottom and the channels of every skip connection, tracked exactly as
    the forward pass produces them."""
    dt = make.dt
    self.conv_in = conv3x3(channels, nf, **dt)
    skip_ch = [nf]
    ch, pyr_ch = nf, channels
    down_levels = []
    for i in range(len(ch_mult)):
      res = image_size // 2 ** i
      blocks, attns = [], []
      for _ in range(num_res_blocks):
        blocks.append(make.resblock(ch, nf * ch_mult[i]))
        ch = nf * ch_mult[i]
        if res in attn_resolutions:
          attns.append(make.attn(ch))
        skip_ch.append(ch)
      down = pyramid_down = combine = None
      if i != len(ch_mult) - 1:
        down = make.downsample(ch)
        if progressive_input == "input_skip":
          pyramid_down = layerspp.Downsample(pyr_ch, with_conv=False, fir=make.fir,
                                             fir_kernel=make.fir_kernel, **dt)
          combine = layerspp.Combine(pyr_ch, ch, method=progressive_combine, **dt)
          if progressive_combine == "cat":
            ch *= 2
        elif progressive_input == "residual":
          pyramid_down = layerspp.Downsample(pyr_ch, ch, with_conv=True, fir=make.fir,
                                             fir_kernel=make.fir_kernel, **dt)
          pyr_ch = ch
        skip_ch.append(ch)
      down_levels.append(_DownLevel(blocks, attns, down, pyramid_down, combine))
    self.down_levels = nnx.List(down_levels)
    return ch, skip_ch

  def _build_up(self, make: "_Blocks", ch: int, skip_ch: list[int], channels: int,
                image_size: int, nf: int, ch_mult: Sequence[int], num_res_blocks: int,
                attn_resolutions: Sequence[int], progressive: str) -> int:
    """The decoder, one _UpLevel per resolution from the lowest, consuming `skip_ch`.
    Returns the channel count at the top."""
    dt = make.dt
    up_levels = []
    pyr_ch = None
    num_resolutions = len(ch_mult)
    for i in reversed(range(num_resolutions)):
      res = image_size // 2 ** i
      blocks = []
      for _ in range(num_res_blocks + 1):
        blocks.append(make.resblock(ch + skip_ch.pop(), nf * ch_mult[i]))
        ch = nf * ch_mult[i]
      level_attn = make.attn(ch) if res in attn_resolutions else None
      pyramid_norm = pyramid_conv = pyramid_up = None
      if progressive == "output_skip":
        pyramid_norm = group_norm(ch, **dt)
        pyramid_conv = conv3x3(ch, channels, init_scale=make.init_scale, **dt)
        if i != num_resolutions - 1:
          pyramid_up = layerspp.Upsample(channels, with_conv=False, fir=make.fir,
                                         fir_kernel=make.fir_kernel, **dt)
      elif progressive == "residual":
        if i == num_resolutions - 1:
          pyramid_norm = group_norm(ch, **dt)
          pyramid_conv = conv3x3(ch, ch, **dt)
        else:
          pyramid_up = layerspp.Upsample(pyr_ch, ch, with_conv=True, fir=make.fir,
                                         fir_kernel=make.fir_kernel, **dt)
        pyr_ch = ch
      up = make.upsample(ch) if i != 0 else None
      up_levels.append(_UpLevel(blocks, level_attn, pyramid_norm, pyramid_conv,
                                pyramid_up, up))
    assert not skip_ch
    self.up_levels = nnx.List(up_levels)
    return ch

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
