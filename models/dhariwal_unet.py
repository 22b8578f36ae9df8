"""ADM's U-Net (Dhariwal and Nichol 2021) as EDM re-implements it (Karras et al. 2022;
NVlabs/edm training/networks.py `DhariwalUNet`), NHWC, with EDM's module names."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.errors import UserError
from models.layers import InitKeys, Rngs
from models.registry import register_model
from models.song_unet import (Conv2d, Linear, UNetBlock, class_input, drop_labels,
                              group_norm, label_dim_of, positional_embedding)


class DhariwalUNet(nnx.Module):
  """ADM's U-Net with EDM's constructor arguments (the call: models.song_unet.SongUNet).

  F(x, noise_labels, class_labels=None, augment_labels=None, *, train=False, key=None):
  x (B, H, W, in_channels) -> (B, H, W, out_channels) float32.

  Mapping: emb = silu(map_layer1(silu(map_layer0(PE(noise_labels) +
  map_augment(augment_labels)))) + map_label(class_labels)), PE the positional embedding
  [cos, sin] of model_channels features without endpoint. Blocks: adaptive scale/shift
  from emb (ADM's scale-shift norm), skip_scale 1, GroupNorm eps 1e-5, unprojected
  resampling skips, attention with out / channels_per_head heads (64 in ADM and EDM;
  a block narrower than that has none) at attn_resolutions in the encoder and decoder and
  in the first block of the lowest level.
  """

  def __init__(self, *, img_resolution: int, in_channels: int, out_channels: int,
               label_dim: int = 0, augment_dim: int = 0, model_channels: int = 192,
               channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_emb: int = 4,
               num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
               dropout: float = 0.10, label_dropout: float = 0.0,
               channels_per_head: int = 64, dtype=jnp.float32, rngs: Rngs):
    if img_resolution % 2 ** (len(channel_mult) - 1):
      raise UserError(f"img_resolution {img_resolution} is not divisible by "
                      f"2^{len(channel_mult) - 1}")
    keys = InitKeys.from_rngs(rngs)
    self.label_dim, self.augment_dim = int(label_dim), int(augment_dim)
    self.label_dropout = float(label_dropout)
    self.model_channels = model_channels
    self.dtype = dtype
    emb_channels = model_channels * channel_mult_emb
    init = dict(init_mode="kaiming_uniform", init_weight=np.sqrt(1 / 3),
                init_bias=np.sqrt(1 / 3))
    init_zero = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)
    dt = dict(dtype=dtype, rngs=keys)
    block_kwargs = dict(emb_channels=emb_channels, channels_per_head=channels_per_head,
                        dropout=dropout, init=init, init_zero=init_zero, **dt)

    # Mapping.
    self.map_augment = (Linear(augment_dim, model_channels, bias=False, **init_zero, **dt)
                        if augment_dim else None)
    self.map_layer0 = Linear(model_channels, emb_channels, **init, **dt)
    self.map_layer1 = Linear(emb_channels, emb_channels, **init, **dt)
    self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                             init_weight=np.sqrt(label_dim), **dt) if label_dim else None)

    # Encoder.
    enc: dict[str, nnx.Module] = {}
    cout = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin, cout = cout, model_channels * mult
        enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init, **dt)
      else:
        enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
      for idx in range(num_blocks):
        cin, cout = cout, model_channels * mult
        enc[f"{res}x{res}_block{idx}"] = UNetBlock(
            cin, cout, attention=res in attn_resolutions, **block_kwargs)
    skips = [b.out_channels for b in enc.values()]

    # Decoder.
    dec: dict[str, nnx.Module] = {}
    for level, mult in reversed(list(enumerate(channel_mult))):
      res = img_resolution >> level
      if level == len(channel_mult) - 1:
        dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
        dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
      else:
        dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
      for idx in range(num_blocks + 1):
        cin, cout = cout + skips.pop(), model_channels * mult
        dec[f"{res}x{res}_block{idx}"] = UNetBlock(
            cin, cout, attention=res in attn_resolutions, **block_kwargs)
    self.enc_names, self.dec_names = tuple(enc), tuple(dec)  # nnx.Dict sorts its keys
    self.enc, self.dec = nnx.Dict(enc), nnx.Dict(dec)
    self.num_unet_blocks = len(enc) - 1 + len(dec)
    self.out_norm = group_norm(cout, 1e-5, dtype)
    self.out_conv = Conv2d(cout, out_channels, 3, **init_zero, **dt)

  @property
  def num_classes(self) -> int:
    """label_dim, under the name models.precond.Precond reads (0: unconditional)."""
    return self.label_dim

  def __call__(self, x: jax.Array, noise_labels: jax.Array,
               class_labels: jax.Array | None = None,
               augment_labels: jax.Array | None = None, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    batch = x.shape[0]
    keys = (jax.random.split(key, self.num_unet_blocks + 1) if train and key is not None
            else None)
    emb = positional_embedding(noise_labels, self.model_channels)
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels)
    emb = self.map_layer1(jax.nn.silu(self.map_layer0(emb)))
    if self.map_label is not None:
      labels = class_input(class_labels, self.label_dim, batch)
      if train and self.label_dropout:
        labels = drop_labels(labels, self.label_dropout, None if keys is None else keys[-1])
      emb = emb + self.map_label(labels)
    elif class_labels is not None:
      raise UserError("class labels were given to an unconditional DhariwalUNet "
                      "(label_dim 0)")
    emb = jax.nn.silu(emb)
    counter = iter(range(self.num_unet_blocks))

    def run(block, h):
      i = next(counter)
      return block(h, emb, train=train, key=None if keys is None else keys[i])

    skips = []
    x = x.astype(self.dtype)
    for name in self.enc_names:
      block = self.enc[name]
      x = run(block, x) if isinstance(block, UNetBlock) else block(x)
      skips.append(x)
    for name in self.dec_names:
      block = self.dec[name]
      if x.shape[-1] != block.in_channels:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = run(block, x)
    return self.out_conv(jax.nn.silu(self.out_norm(x))).astype(jnp.float32)


@register_model("dhariwal_unet")
def build_dhariwal_unet(config, rngs: nnx.Rngs) -> DhariwalUNet:
  """DhariwalUNet from config.model.{model_channels, channel_mult, channel_mult_emb,
  num_blocks, attn_resolutions, dropout, augment_dim (absent: 0), label_dim or
  num_classes (absent: 0), channels_per_head (absent: 64), out_channels (absent:
  num_channels; 2 num_channels for iDDPM's learned variance), dtype},
  img_resolution = config.data.image_size, in_channels = config.data.num_channels. Label
  dropout is the training loss's (config.model.label_dropout)."""
  m = config.model
  channels = int(config.data.num_channels)
  return DhariwalUNet(
      img_resolution=int(config.data.image_size), in_channels=channels,
      out_channels=int(m.get("out_channels", None) or channels),
      label_dim=label_dim_of(m), augment_dim=int(m.get("augment_dim", 0)),
      model_channels=int(m.model_channels), channel_mult=tuple(m.channel_mult),
      channel_mult_emb=int(m.get("channel_mult_emb", 4)), num_blocks=int(m.num_blocks),
      attn_resolutions=tuple(m.attn_resolutions), dropout=float(m.dropout),
      channels_per_head=int(m.get("channels_per_head", 64)),
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)
