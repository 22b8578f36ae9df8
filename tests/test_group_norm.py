"""models.layers.GroupNorm against float64 numpy: the forward map and its input gradient,
on the shapes the networks use (NHWC feature maps, a (B, L, C) sequence, a (B, C) vector)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.layers import GroupNorm


def reference(x: np.ndarray, groups: int, scale: np.ndarray, bias: np.ndarray, eps: float):
  """Float64 group norm and, for a cotangent dy, its input gradient (closed form)."""
  b, c = x.shape[0], x.shape[-1]
  xg = x.astype(np.float64).reshape(b, -1, groups, c // groups)
  mean = xg.mean(axis=(1, 3), keepdims=True)
  std = np.sqrt(((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True) + eps)
  xhat = (xg - mean) / std
  s = scale.reshape(1, 1, groups, c // groups)
  y = (xhat * s + bias.reshape(1, 1, groups, c // groups)).reshape(x.shape)

  def grad(dy: np.ndarray) -> np.ndarray:
    # d/dx of sum(dy * y): (g - mean(g) - xhat mean(g xhat)) / std per group, g = dy * scale.
    g = dy.astype(np.float64).reshape(xg.shape) * s
    dx = (g - g.mean(axis=(1, 3), keepdims=True)
          - xhat * (g * xhat).mean(axis=(1, 3), keepdims=True)) / std
    return dx.reshape(x.shape)

  return y, grad


@pytest.mark.parametrize("shape,groups", [((3, 8, 6, 12), 4), ((2, 5, 16), 8), ((4, 6), 3),
                                          ((2, 4, 4, 8), 1)])
def test_group_norm_matches_float64(shape, groups):
  rng = np.random.default_rng(0)
  # Mean 3 and std 2 per element: the two-pass variance must not lose digits to the mean.
  x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
  dy = rng.standard_normal(shape).astype(np.float32)
  c = shape[-1]
  norm = GroupNorm(c, groups)
  scale = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
  bias = (0.1 * rng.standard_normal(c)).astype(np.float32)
  norm.scale[...] = jnp.asarray(scale)
  norm.bias[...] = jnp.asarray(bias)
  y_ref, grad_ref = reference(x, groups, scale, bias, norm.epsilon)
  y, dx = jax.jit(lambda x, dy: (norm(x), jax.vjp(norm, x)[1](dy)[0]))(x, dy)
  # float32 round-off on O(1) outputs: 1e-5 absolute.
  np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(dx), grad_ref(dy), atol=2e-5, rtol=0)


def test_group_norm_refuses_groups_that_do_not_divide_the_channels():
  with pytest.raises(ValueError, match="3 groups do not divide 8 channels"):
    GroupNorm(8, 3)
