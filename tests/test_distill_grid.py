"""Rectified-flow distillation's time grid: the default Euler grid j T / k (where a k-step
Euler sampler from T queries v) and RectifiedFlow's grid (ImageGeneration/losses.py:
eps + j (T - eps) / k, j = 0..k-1, with t = 0 the noise there), (T - eps) j / k in our
time; unknown names are one UserError naming the config field."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from common.errors import UserError
from training.losses import get_continuous_loss_fn


@pytest.mark.parametrize("grid,top", [("euler", 1.0), ("rectified_flow", 1.0 - 1e-3)])
def test_distillation_times(grid, top):
  sde = sde_lib.RectifiedFlow()
  seen = []

  def model_fn(x, t):
    seen.append(np.asarray(t))
    return x

  for k in (1, 3):
    seen.clear()
    fn = get_continuous_loss_fn(sde, distill_steps=k, eps=1e-3, distill_grid=grid)
    fn(model_fn, {"x0": jnp.zeros((300, 2)), "z": jnp.ones((300, 2))}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.unique(seen[0]), top * np.arange(1, k + 1) / k, rtol=1e-6)


def test_unknown_grid():
  with pytest.raises(UserError, match=r"rf_distill_grid.*choices: euler, rectified_flow"):
    get_continuous_loss_fn(sde_lib.RectifiedFlow(), distill_steps=2, distill_grid="rf")
