"""`check_model_config`: config.model's architecture fields checked before any mode
builds or compiles a network, so a bad value is one line naming the field: sizes and
ranges by name (a field means the same in every network that has it), names (network,
nonlinearity, normalization...) by the network's own constructor run abstractly on a
one-level copy of the config (nnx.eval_shape: no parameter is computed, nothing compiled;
about 0.1 s)."""
from __future__ import annotations

import copy
import math
from typing import Any

from flax import nnx

from common.choices import check_choice
from common.errors import UserError
from models.registry import get_model

#: Network dtypes (config.model.dtype): the compute dtype; parameters stay float32.
DTYPES = ("float32", "bfloat16", "float16")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _int(m, name: str, low: int) -> None:
  v = m[name]
  if not _is_int(v) or v < low:
    raise UserError(f"config.model.{name} = {v!r} must be an integer >= {low}")


def _number(m, name: str, low: float, high: float | None = None, *,
            low_open: bool = False, high_open: bool = False) -> None:
  v = m[name]
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  if ok:
    ok = (v > low if low_open else v >= low) and (
        high is None or (v < high if high_open else v <= high))
  if not ok:
    rng = f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
      rng += f" and {'<' if high_open else '<='} {high:g}"
    raise UserError(f"config.model.{name} = {v!r} must be a number {rng}")


def check_model_config(config) -> None:
  """Raises UserError naming the first bad architecture field of config.model (or of
  the input shape: config.data.{dim, image_size, num_channels} integers >= 1): sizes
  (nf, num_layers, embedding_dim, num_res_blocks, every ch_mult entry; EDM's
  model_channels, num_blocks, channel_mult_emb, channel_mult_noise, channels_per_head,
  every channel_mult entry) integers >= 1; label_dim, augment_dim >= 0;
  dropout and label_dropout in [0, 1); fourier_scale > 0; init_scale >= 0; fir_kernel and
  resample_filter non-empty sequences of numbers with a non-zero sum; num_classes >= 0;
  dtype one of DTYPES; for the U-Nets (ch_mult or channel_mult present), image_size
  divisible by 2^(len(ch_mult) - 1)
  and every attn_resolutions entry one of the levels' resolutions image_size / 2^i, i <
  len(ch_mult) (another value would silently give a network without that attention).
  Fields a network lacks are skipped. Then `check_network_names`."""
  _check_sizes(config)
  check_network_names(config)


def check_network_names(config) -> None:
  """The network's constructor (models.get_model) run abstractly (nnx.eval_shape) on a
  copy of `config` with one resolution level, one residual block and no attention: it
  checks config.model.name and every name it reads (common.choices: nonlinearity,
  normalization, resblock_type, progressive*, embedding_type, interpolation...) and the
  combinations it refuses, in about 0.1 s whatever the network's size."""
  small = copy.deepcopy(config)
  if "ch_mult" in small.model:
    small.model.ch_mult = (1,)
    small.model.num_res_blocks = 1
    small.model.attn_resolutions = ()
  if "channel_mult" in small.model:  # EDM's networks
    small.model.channel_mult = (1,)
    small.model.num_blocks = 1
    small.model.attn_resolutions = ()
  nnx.eval_shape(lambda: get_model(small, nnx.Rngs(0)))


def _check_sizes(config) -> None:
  d = config.data
  for name in ("dim", "image_size", "num_channels"):  # the network's input shape
    v = d.get(name, None)
    if v is not None and (not _is_int(v) or v < 1):
      raise UserError(f"config.data.{name} = {v!r} must be an integer >= 1")
  m = config.model
  for name in ("nf", "num_layers", "embedding_dim", "num_res_blocks",
               # EDM's networks (song_unet, dhariwal_unet)
               "model_channels", "num_blocks", "channel_mult_emb", "channel_mult_noise",
               "channels_per_head"):
    if name in m:
      _int(m, name, 1)
  for name in ("num_classes", "label_dim", "augment_dim"):
    if name in m:
      _int(m, name, 0)
  for name in ("dropout", "label_dropout"):
    if name in m:
      _number(m, name, 0.0, 1.0, high_open=True)
  if "fourier_scale" in m:
    _number(m, "fourier_scale", 0.0, low_open=True)
  if "init_scale" in m:
    _number(m, "init_scale", 0.0)
  if "dtype" in m:
    check_choice(str(m.dtype), DTYPES, "network dtype (config.model.dtype)")
  for name in ("fir_kernel", "resample_filter"):
    if name not in m:
      continue
    k = m[name]
    if (not isinstance(k, (tuple, list)) or not k
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) for v in k) or sum(k) == 0):
      raise UserError(f"config.model.{name} = {k!r} must be a non-empty sequence of "
                      "numbers with a non-zero sum (a FIR filter, normalised by its sum)")
  # The U-Nets' channel multipliers: score_sde's ch_mult, EDM's channel_mult.
  mult_name = "ch_mult" if "ch_mult" in m else "channel_mult" if "channel_mult" in m else None
  if mult_name is None:
    return
  ch_mult = m[mult_name]
  if (not isinstance(ch_mult, (tuple, list)) or not ch_mult
      or not all(_is_int(c) and c >= 1 for c in ch_mult)):
    raise UserError(f"config.model.{mult_name} = {ch_mult!r} must be a non-empty sequence "
                    "of integers >= 1 (channel multipliers, one per resolution)")
  size = config.data.get("image_size", None)
  if not _is_int(size) or size < 1:
    return  # config.data's own check names it
  levels = len(ch_mult)
  if size % 2 ** (levels - 1):
    raise UserError(f"config.data.image_size = {size} must be divisible by "
                    f"2^{levels - 1} for config.model.{mult_name} = {tuple(ch_mult)} "
                    f"({levels} resolutions, each half the previous)")
  resolutions = [size // 2 ** i for i in range(levels)]
  attn = m.get("attn_resolutions", ())
  if not isinstance(attn, (tuple, list)):
    raise UserError(f"config.model.attn_resolutions = {attn!r} must be a sequence of "
                    f"resolutions among {resolutions}")
  bad = [r for r in attn if r not in resolutions]
  if bad:
    raise UserError(f"config.model.attn_resolutions = {tuple(attn)!r}: {bad[0]!r} is not "
                    f"a resolution of this network: image_size {size} with "
                    f"{levels} levels gives {resolutions}")
