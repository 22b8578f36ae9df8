"""Parameter counts of the full-size score_sde networks equal the reference implementation's.

Counted abstractly (nnx.eval_shape: nothing is allocated, compiled or run). The reference
numbers are those of yang-song/score_sde's Flax models, whose parameter trees include the
fixed random Fourier-feature weights W of the NCSN++ embedding (nf = 128 entries, made a
parameter there and held fixed by stop_gradient). Here W is a non-trainable nnx.Variable,
so the test checks both: trainable nnx.Param entries, and all variables (Param + W),
which must equal the reference count.
"""
from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

import models
import models.ddpm  # noqa: F401  (registers "ddpm")
import models.ncsnpp  # noqa: F401  (registers "ncsnpp")

# config module: (reference count, Fourier W entries)
_EXPECTED = {
    "configs.vp.cifar10_ddpmpp_continuous": (61_804_419, 0),
    "configs.subvp.cifar10_ddpmpp_deep_continuous": (106_632_579, 0),
    "configs.ve.cifar10_ncsnpp_continuous": (62_758_915, 128),
    "configs.ve.cifar10_ncsnpp_deep_continuous": (107_587_075, 128),
    "configs.vp.ddpm.cifar10_continuous": (35_218_947, 0),
    "configs.ve.celebahq_256_ncsnpp_continuous": (65_574_549, 128),
}


def _size(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("config_name", list(_EXPECTED))
def test_param_count_matches_score_sde(config_name):
  reference, fourier = _EXPECTED[config_name]
  config = importlib.import_module(config_name).get_config()
  model = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  assert _size(params) == reference - fourier  # trainable
  assert _size(nnx.state(model)) == reference  # trainable + the fixed Fourier W
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(nnx.state(model)))
