"""The tiny variant of any config, defined here once: a network small enough to compile and
run on a CPU in seconds, for smoke runs, the tests and `bench/ --tiny` (the sizes:
`shrink`). Run: python main.py --config configs/tiny.py:configs/vp/digits_ddpmpp_small.py
--workdir runs/tiny (config_flags passes the text after ':' to get_config)."""
from __future__ import annotations

import importlib.util
from typing import Any

import ml_collections

TINY_IMAGE: dict[str, Any] = {"model.nf": 8, "model.ch_mult": (1,),
                              "model.num_res_blocks": 1, "model.attn_resolutions": (),
                              "data.image_size": 8}
TINY_TOY: dict[str, Any] = {"model.nf": 16, "model.num_layers": 2,
                            "model.embedding_dim": 16}
TINY_BATCH = 4


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  """config.<field> = value for a dotted field name that the config already has."""
  *parents, leaf = field.split(".")
  node = config
  for name in parents:
    node = node[name]
  if leaf not in node:
    raise KeyError(f"config has no field {field!r}")
  node[leaf] = value


def tiny_fields(config) -> dict[str, Any]:
  """The fields `shrink` sets: TINY_TOY for toy data, TINY_IMAGE otherwise."""
  import data as data_lib
  return TINY_TOY if data_lib.is_toy(config) else TINY_IMAGE


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the tiny fields (in place; returns config). Fields the network does not have
  (e.g. num_layers of an image network) are not set.

  Image networks: nf 8, one resolution level (ch_mult (1,)), one residual block, no
  attention, 8x8 images; toy MLPs: 16 features, 2 layers, a 16-dim time embedding.
  """
  for field, value in tiny_fields(config).items():
    set_field(config, field, value)
  return config


def load(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a python config file."""
  spec = importlib.util.spec_from_file_location("_tiny_base_config", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(base: str = "configs/default_toy.py") -> ml_collections.ConfigDict:
  return shrink(load(base))
