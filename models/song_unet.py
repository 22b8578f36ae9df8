"""EDM's re-implementation of the DDPM++ / NCSN++ U-Net (Karras et al. 2022, appendix F.2:
`SongUNet` of NVlabs/edm training/networks.py), and the layers it shares with ADM's U-Net
(models/dhariwal_unet.py), in NHWC with EDM's module names."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.choices import check_choice
from common.errors import UserError
from models import conv as conv_lib
from models.layers import GroupNorm, InitKeys, Rngs, apply_dropout
from models.registry import register_model

_NHWC = ("NHWC", "HWIO", "NHWC")


def weight_init(key: jax.Array, shape: Sequence[int], mode: str, fan_in: int,
                fan_out: int) -> jax.Array:
  """EDM's initialisers: xavier_uniform U(+-sqrt(6 / (fan_in + fan_out))), xavier_normal
  N(0, 2 / (fan_in + fan_out)), kaiming_uniform U(+-sqrt(3 / fan_in)), kaiming_normal
  N(0, 1 / fan_in). float32 array of `shape`."""
  check_choice(mode, ("xavier_uniform", "xavier_normal", "kaiming_uniform",
                      "kaiming_normal"), "init mode")
  if mode.endswith("uniform"):
    u = jax.random.uniform(key, tuple(shape), jnp.float32, -1.0, 1.0)
    return u * (np.sqrt(6 / (fan_in + fan_out)) if mode == "xavier_uniform"
                else np.sqrt(3 / fan_in))
  n = jax.random.normal(key, tuple(shape), jnp.float32)
  return n * (np.sqrt(2 / (fan_in + fan_out)) if mode == "xavier_normal"
              else np.sqrt(1 / fan_in))


class Linear(nnx.Module):
  """x (..., in) @ kernel (in, out) + bias (out,); EDM's `Linear` (its weight is (out, in))."""

  def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
               init_mode: str = "kaiming_normal", init_weight: float = 1.0,
               init_bias: float = 0.0, dtype=jnp.float32, rngs: Rngs):
    self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
    fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
    self.kernel = nnx.Param(weight_init(rngs.params(), (in_features, out_features), **fans)
                            * init_weight)
    self.bias = (nnx.Param(weight_init(rngs.params(), (out_features,), **fans) * init_bias)
                 if bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def resample_kernel(resample_filter: Sequence[float]) -> np.ndarray:
  """The 2-D resampling filter f f^T / (sum f)^2: (k, k) float32 ([1, 1]: 2x2 box,
  [1, 3, 3, 1]: StyleGAN2's binomial filter)."""
  f = np.asarray(resample_filter, np.float32)
  return (np.outer(f, f) / np.square(f.sum())).astype(np.float32)


def _conv(x: jax.Array, w: jax.Array, pad: int, stride: int = 1, groups: int = 1,
          lhs_dilation: int = 1) -> jax.Array:
  return conv_lib.conv_general_dilated(
      x, w, (stride, stride), [(pad, pad), (pad, pad)],
      lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=_NHWC,
      feature_group_count=groups)


def _down(x: jax.Array, f: np.ndarray, pad: int) -> jax.Array:
  """Per-channel filtering with f, stride 2, symmetric zero padding `pad`."""
  c = x.shape[-1]
  w = jnp.broadcast_to(jnp.asarray(f, x.dtype)[:, :, None, None], f.shape + (1, c))
  return _conv(x, w, pad, stride=2, groups=c)


def _up(x: jax.Array, f: np.ndarray, pad: int) -> jax.Array:
  """PyTorch's conv_transpose2d(x, 4 f, stride=2, padding=pad, groups=C): the input
  zero-interleaved (lhs_dilation 2) and correlated with the flipped filter, padded by
  k - 1 - pad. (B, H, W, C) -> (B, 2H + k - 2 - 2 pad, ..., C)."""
  c, k = x.shape[-1], f.shape[0]
  w = jnp.broadcast_to(jnp.asarray(4 * f[::-1, ::-1], x.dtype)[:, :, None, None],
                       f.shape + (1, c))
  return _conv(x, w, k - 1 - pad, groups=c, lhs_dilation=2)


class Conv2d(nnx.Module):
  """EDM's `Conv2d`: a k x k convolution (symmetric padding k // 2) with optional 2x up- or
  down-sampling by the filter `resample_filter` (`resample_kernel`). kernel 0: no weights
  (resampling only). x: (B, H, W, in) -> (B, H', W', out), H' = 2H, H / 2 or H.

  Unfused: resample, then convolve. fused_resample (NCSN++'s residual input pyramid):
  downsampling convolves first (padding k // 2 + (len(f) - 1) // 2) and then filters with
  stride 2; upsampling filters first. kernel: (k, k, in, out) (EDM's weight is (out, in,
  k, k))."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True,
               up: bool = False, down: bool = False,
               resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
               init_mode: str = "kaiming_normal", init_weight: float = 1.0,
               init_bias: float = 0.0, dtype=jnp.float32, rngs: Rngs):
    if up and down:
      raise ValueError("a Conv2d cannot both up- and down-sample")
    self.in_channels, self.out_channels = in_channels, out_channels
    self.up, self.down, self.fused_resample = up, down, fused_resample
    self.dtype = dtype
    fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel,
                fan_out=out_channels * kernel * kernel)
    self.kernel = (nnx.Param(weight_init(rngs.params(),
                                         (kernel, kernel, in_channels, out_channels), **fans)
                             * init_weight) if kernel else None)
    self.bias = (nnx.Param(weight_init(rngs.params(), (out_channels,), **fans) * init_bias)
                 if kernel and bias else None)
    # A constant, not a variable: EDM's `resample_filter` buffer is rebuilt from the config.
    self.resample_filter = (tuple(float(v) for v in resample_filter) if up or down
                            else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    w = None if self.kernel is None else self.kernel[...].astype(self.dtype)
    f = None if self.resample_filter is None else resample_kernel(self.resample_filter)
    w_pad = 0 if w is None else w.shape[0] // 2
    f_pad = 0 if f is None else (f.shape[0] - 1) // 2
    if self.fused_resample and self.up and w is not None:
      x = _conv(_up(x, f, max(f_pad - w_pad, 0)), w, max(w_pad - f_pad, 0))
    elif self.fused_resample and self.down and w is not None:
      x = _down(_conv(x, w, w_pad + f_pad), f, 0)
    else:
      if self.up:
        x = _up(x, f, f_pad)
      if self.down:
        x = _down(x, f, f_pad)
      if w is not None:
        x = _conv(x, w, w_pad)
    return x if self.bias is None else x + self.bias[...].astype(self.dtype)


def group_norm(num_channels: int, eps: float = 1e-5, dtype=jnp.float32) -> GroupNorm:
  """EDM's GroupNorm: min(32, C // 4) groups (at least 4 channels per group)."""
  groups = min(32, num_channels // 4)
  if groups < 1 or num_channels % groups:
    raise UserError(f"a GroupNorm of {num_channels} channels: EDM's min(32, C // 4) = "
                    f"{groups} groups do not divide it; choose config.model.model_channels "
                    "and channel_mult so that every block's channel count does")
  return GroupNorm(num_channels, groups, epsilon=eps, dtype=dtype)


class UNetBlock(nnx.Module):
  """EDM's `UNetBlock`, the residual block of DDPM++, NCSN++ and ADM, with optional 2x
  resampling and multi-head self-attention. x: (B, H, W, in), emb: (B, emb) ->
  (B, H', W', out):

      h = conv0(silu(norm0(x)))                              (resampled if up / down)
      h = silu(shift + norm1(h) (1 + scale)), [scale, shift] = affine(emb)   adaptive_scale
        = silu(norm1(h + affine(emb)))                                     otherwise
      x = (conv1(dropout(h)) + skip(x)) * skip_scale
      x = (proj(attention(qkv(norm2(x)))) + x) * skip_scale                 if num_heads

  skip: a 1x1 conv (resampling too) when the channels change, or when resampling with
  resample_proj; resampling alone otherwise. Attention heads: num_heads, or
  out // channels_per_head when num_heads is None; none without `attention`. The qkv
  channels are laid out (head, channel, q/k/v) as EDM's reshape reads them."""

  def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *,
               up: bool = False, down: bool = False, attention: bool = False,
               num_heads: int | None = None, channels_per_head: int = 64,
               dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
               resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
               adaptive_scale: bool = True, init: dict | None = None,
               init_zero: dict | None = None, init_attn: dict | None = None,
               dtype=jnp.float32, rngs: Rngs):
    init = dict(init or {})
    init_zero = dict(init_weight=0.0) if init_zero is None else dict(init_zero)
    dt = dict(dtype=dtype, rngs=rngs)
    self.in_channels, self.out_channels = in_channels, out_channels
    self.num_heads = (0 if not attention else num_heads if num_heads is not None
                      else out_channels // channels_per_head)
    self.skip_scale = float(skip_scale)
    self.adaptive_scale = adaptive_scale
    self.dtype = dtype
    self.norm0 = group_norm(in_channels, eps, dtype)
    self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down,
                        resample_filter=resample_filter, **init, **dt)
    self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1),
                         **init, **dt)
    self.norm1 = group_norm(out_channels, eps, dtype)
    self.dropout = nnx.Dropout(dropout)
    self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero, **dt)
    skip = None
    if out_channels != in_channels or up or down:
      kernel = 1 if resample_proj or out_channels != in_channels else 0
      skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down,
                    resample_filter=resample_filter, **init, **dt)
    self.skip = skip
    norm2 = qkv = proj = None
    if self.num_heads:
      norm2 = group_norm(out_channels, eps, dtype)
      qkv = Conv2d(out_channels, out_channels * 3, 1,
                   **(init_attn if init_attn is not None else init), **dt)
      proj = Conv2d(out_channels, out_channels, 1, **init_zero, **dt)
    self.norm2, self.qkv, self.proj = norm2, qkv, proj

  def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    orig = x
    x = self.conv0(jax.nn.silu(self.norm0(x)))
    params = self.affine(emb)[:, None, None, :].astype(x.dtype)
    if self.adaptive_scale:
      scale, shift = jnp.split(params, 2, axis=-1)
      x = jax.nn.silu(shift + self.norm1(x) * (scale + 1))
    else:
      x = jax.nn.silu(self.norm1(x + params))
    x = self.conv1(apply_dropout(self.dropout, x, train, key))
    x = (x + (self.skip(orig) if self.skip is not None else orig.astype(x.dtype)))
    x = x * self.skip_scale
    if self.num_heads:
      b, h, w, c = x.shape
      qkv = self.qkv(self.norm2(x)).reshape(b, h * w, self.num_heads, c // self.num_heads, 3)
      q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]  # (B, HW, heads, c / heads)
      # Softmax in float32, as EDM's AttentionOp.
      logits = jnp.einsum("bqnc,bknc->bnqk", q.astype(jnp.float32),
                          k.astype(jnp.float32) / np.sqrt(k.shape[-1]))
      weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
      a = jnp.einsum("bnqk,bknc->bqnc", weights, v).reshape(b, h, w, c)
      x = (self.proj(a) + x) * self.skip_scale
    return x


def positional_embedding(x: jax.Array, num_channels: int, max_positions: int = 10000,
                         endpoint: bool = False) -> jax.Array:
  """EDM's `PositionalEmbedding`: [cos(x w_i), sin(x w_i)], w_i = max_positions^(-i / d),
  i < num_channels / 2, d = num_channels / 2 - 1 (endpoint) or num_channels / 2.
  x: (B,) -> (B, num_channels) float32."""
  half = num_channels // 2
  freqs = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
  freqs = (1.0 / max_positions) ** freqs
  args = x.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=1)


class FourierEmbedding(nnx.Module):
  """EDM's `FourierEmbedding`: [cos(2 pi f x), sin(2 pi f x)], f ~ N(0, scale^2) fixed.
  x: (B,) -> (B, num_channels)."""

  def __init__(self, num_channels: int, scale: float = 16.0, *, rngs: Rngs):
    # A non-trainable variable (EDM's buffer `freqs`): saved, never optimised.
    self.freqs = nnx.Variable(jax.random.normal(rngs.params(), (num_channels // 2,))
                              * scale)

  def __call__(self, x: jax.Array) -> jax.Array:
    args = x.astype(jnp.float32)[:, None] * (2 * np.pi * self.freqs[...])[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=1)


def class_input(class_labels: jax.Array | None, label_dim: int, batch: int) -> jax.Array:
  """class_labels as EDM's (B, label_dim) float input: a one-hot (or any) float matrix as
  it is; (B,) integer labels one-hot, where label_dim itself (our null label) gives the
  zero vector that EDM feeds for "no class"; None: zeros."""
  if class_labels is None:
    return jnp.zeros((batch, label_dim), jnp.float32)
  class_labels = jnp.asarray(class_labels)
  if class_labels.ndim == 1 or (class_labels.ndim == 0):
    labels = jnp.broadcast_to(class_labels, (batch,))
    return jax.nn.one_hot(labels, label_dim, dtype=jnp.float32)  # label_dim -> zeros
  if class_labels.shape[-1] != label_dim:
    raise UserError(f"class labels of shape {tuple(class_labels.shape)}: expected "
                    f"(B, {label_dim}) one-hot rows or (B,) integer labels")
  return jnp.broadcast_to(class_labels.astype(jnp.float32), (batch, label_dim))


def drop_labels(labels: jax.Array, p: float, key: jax.Array | None) -> jax.Array:
  """EDM's in-network label dropout: each row zeroed with probability p."""
  if key is None:
    raise ValueError("train=True with label_dropout > 0 needs a `key`")
  keep = jax.random.uniform(key, (labels.shape[0], 1)) >= p
  return labels * keep.astype(labels.dtype)


class SongUNet(nnx.Module):
  """The DDPM++ / NCSN++ U-Net as EDM writes it (Karras et al. 2022; NVlabs/edm
  training/networks.py `SongUNet`), with EDM's constructor arguments and module names.

  Call: F(x, noise_labels, class_labels=None, augment_labels=None, *, train=False,
  key=None). x: (B, img_resolution, img_resolution, in_channels) float32 (NHWC);
  noise_labels: (B,) (EDM's c_noise); class_labels: (B, label_dim) one-hot float, or (B,)
  int with label_dim meaning "no class" (zero row), or None (zeros); augment_labels:
  (B, augment_dim) or None. Returns (B, H, W, out_channels) float32, EDM's raw F_x (its
  preconditioning is applied outside). Dropout and label dropout only when train=True,
  with `key`.

  Mapping: emb = [sin, cos] halves of the noise embedding (positional with endpoint, or
  Fourier features with scale 16), + map_label(sqrt(label_dim) class_labels) +
  map_augment(augment_labels), then two Linear + SiLU layers to model_channels *
  channel_mult_emb features, read by every UNetBlock.

  Options, EDM's names and choices:
    embedding_type      'positional' (DDPM++) or 'fourier' (NCSN++)
    channel_mult_noise  noise embedding width in model_channels: 1 (DDPM++), 2 (NCSN++)
    encoder_type        'standard' (DDPM++), 'skip' (the downsampled input added through a
                        1x1 conv at every level) or 'residual' (NCSN++: a residual input
                        pyramid, fused 3x3 down-convolutions, sums divided by sqrt 2)
    decoder_type        'standard' or 'skip' (the output summed over levels, StyleGAN2)
    resample_filter     [1, 1] (DDPM++) or [1, 3, 3, 1] (NCSN++)
  Every block has skip_scale sqrt(1/2), GroupNorm eps 1e-6, one attention head, a
  projected skip when resampling; decoder attention at the last block of each level in
  attn_resolutions and in the first block of the lowest level.
  """

  def __init__(self, *, img_resolution: int, in_channels: int, out_channels: int,
               label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
               channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
               num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
               dropout: float = 0.10, label_dropout: float = 0.0,
               embedding_type: str = "positional", channel_mult_noise: int = 1,
               encoder_type: str = "standard", decoder_type: str = "standard",
               resample_filter: Sequence[float] = (1, 1), dtype=jnp.float32,
               rngs: Rngs):
    check_choice(embedding_type, ("fourier", "positional"), "embedding_type")
    check_choice(encoder_type, ("standard", "skip", "residual"), "encoder_type")
    check_choice(decoder_type, ("standard", "skip"), "decoder_type")
    if img_resolution % 2 ** (len(channel_mult) - 1):
      raise UserError(f"img_resolution {img_resolution} is not divisible by "
                      f"2^{len(channel_mult) - 1}")
    keys = InitKeys.from_rngs(rngs)
    self.label_dim, self.augment_dim = int(label_dim), int(augment_dim)
    self.label_dropout = float(label_dropout)
    self.embedding_type = embedding_type
    self.dtype = dtype
    emb_channels = model_channels * channel_mult_emb
    noise_channels = model_channels * channel_mult_noise
    self.noise_channels = noise_channels
    init = dict(init_mode="xavier_uniform")
    init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
    init_attn = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
    dt = dict(dtype=dtype, rngs=keys)
    block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout,
                        skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=resample_filter,
                        resample_proj=True, adaptive_scale=False, init=init,
                        init_zero=init_zero, init_attn=init_attn, **dt)

    # Mapping.
    self.map_noise = (FourierEmbedding(noise_channels, rngs=keys)
                      if embedding_type == "fourier" else None)
    self.map_label = (Linear(label_dim, noise_channels, **init, **dt) if label_dim
                      else None)
    self.map_augment = (Linear(augment_dim, noise_channels, bias=False, **init, **dt)
                        if augment_dim else None)
    self.map_layer0 = Linear(noise_channels, emb_channels, **init, **dt)
    self.map_layer1 = Linear(emb_channels, emb_channels, **init, **dt)

    # Encoder.
    enc: dict[str, nnx.Module] = {}
    cout = caux = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin, cout = cout, model_channels
        enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init, **dt)
      else:
        enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
        if encoder_type == "skip":
          enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                resample_filter=resample_filter, **dt)
          enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init, **dt)
        if encoder_type == "residual":
          enc[f"{res}x{res}_aux_residual"] = Conv2d(
              caux, cout, 3, down=True, resample_filter=resample_filter,
              fused_resample=True, **init, **dt)
          caux = cout
      for idx in range(num_blocks):
        cin, cout = cout, model_channels * mult
        enc[f"{res}x{res}_block{idx}"] = UNetBlock(
            cin, cout, attention=res in attn_resolutions, **block_kwargs)
    skips = [b.out_channels for name, b in enc.items() if "aux" not in name]

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
            cin, cout, attention=idx == num_blocks and res in attn_resolutions,
            **block_kwargs)
      if decoder_type == "skip" or level == 0:
        if decoder_type == "skip" and level < len(channel_mult) - 1:
          dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                              resample_filter=resample_filter, **dt)
        dec[f"{res}x{res}_aux_norm"] = group_norm(cout, 1e-6, dtype)
        dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero, **dt)
    # nnx.Dict does not keep insertion order through split / merge: the order is kept here.
    self.enc_names, self.dec_names = tuple(enc), tuple(dec)
    self.enc, self.dec = nnx.Dict(enc), nnx.Dict(dec)
    self.num_unet_blocks = sum(isinstance(b, UNetBlock) for b in [*enc.values(),
                                                                   *dec.values()])

  @property
  def num_classes(self) -> int:
    """label_dim, under the name models.precond.Precond reads (0: unconditional)."""
    return self.label_dim

  def __call__(self, x: jax.Array, noise_labels: jax.Array,
               class_labels: jax.Array | None = None,
               augment_labels: jax.Array | None = None, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    batch = x.shape[0]
    if self.map_noise is not None:
      emb = self.map_noise(noise_labels)
    else:
      emb = positional_embedding(noise_labels, self.noise_channels, endpoint=True)
    half = emb.shape[1] // 2
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=1)  # [cos, sin] -> [sin, cos]
    keys = (jax.random.split(key, self.num_unet_blocks + 1) if train and key is not None
            else None)
    if self.map_label is not None:
      labels = class_input(class_labels, self.label_dim, batch)
      if train and self.label_dropout:
        labels = drop_labels(labels, self.label_dropout, None if keys is None else keys[-1])
      emb = emb + self.map_label(labels * np.sqrt(self.label_dim))
    elif class_labels is not None:
      raise UserError("class labels were given to an unconditional SongUNet (label_dim 0)")
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels)
    emb = jax.nn.silu(self.map_layer1(jax.nn.silu(self.map_layer0(emb))))
    counter = iter(range(self.num_unet_blocks))

    def run(block, h):
      i = next(counter)
      return block(h, emb, train=train, key=None if keys is None else keys[i])

    skips = []
    aux = x = x.astype(self.dtype)
    for name in self.enc_names:
      block = self.enc[name]
      if "aux_down" in name:
        aux = block(aux)
      elif "aux_skip" in name:
        x = skips[-1] = x + block(aux)
      elif "aux_residual" in name:
        x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
      else:
        x = run(block, x) if isinstance(block, UNetBlock) else block(x)
        skips.append(x)

    aux = tmp = None
    for name in self.dec_names:
      block = self.dec[name]
      if "aux_up" in name:
        aux = block(aux)
      elif "aux_norm" in name:
        tmp = block(x)
      elif "aux_conv" in name:
        tmp = block(jax.nn.silu(tmp))
        aux = tmp if aux is None else tmp + aux
      else:
        if x.shape[-1] != block.in_channels:
          x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = run(block, x)
    return aux.astype(jnp.float32)


def label_dim_of(m) -> int:
  """config.model.label_dim (EDM's name) or, absent, config.model.num_classes (the name
  the training loss and the guidance read); UserError if both are set and differ."""
  ld, nc = m.get("label_dim", None), m.get("num_classes", None)
  if ld is not None and nc is not None and int(ld) != int(nc):
    raise UserError(f"config.model.label_dim = {ld} and config.model.num_classes = {nc} "
                    "name the same number of classes; set one, or both equal")
  return int(ld if ld is not None else nc or 0)


@register_model("song_unet")
def build_song_unet(config, rngs: nnx.Rngs) -> SongUNet:
  """SongUNet from config.model.{model_channels, channel_mult, channel_mult_emb,
  num_blocks, attn_resolutions, dropout, embedding_type, channel_mult_noise, encoder_type,
  decoder_type, resample_filter, augment_dim (absent: 0), label_dim or num_classes (absent:
  0), out_channels (absent: num_channels), dtype}, img_resolution = config.data.image_size,
  in_channels = config.data.num_channels. Label dropout is the training loss's
  (config.model.label_dropout, training/losses.py), so the network's own is 0 here."""
  m = config.model
  channels = int(config.data.num_channels)
  return SongUNet(
      img_resolution=int(config.data.image_size), in_channels=channels,
      out_channels=int(m.get("out_channels", None) or channels),
      label_dim=label_dim_of(m), augment_dim=int(m.get("augment_dim", 0)),
      model_channels=int(m.model_channels), channel_mult=tuple(m.channel_mult),
      channel_mult_emb=int(m.get("channel_mult_emb", 4)), num_blocks=int(m.num_blocks),
      attn_resolutions=tuple(m.attn_resolutions), dropout=float(m.dropout),
      embedding_type=str(m.embedding_type), channel_mult_noise=int(m.channel_mult_noise),
      encoder_type=str(m.encoder_type), decoder_type=str(m.decoder_type),
      resample_filter=tuple(m.resample_filter),
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)
