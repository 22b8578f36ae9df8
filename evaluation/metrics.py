"""Sample-quality metrics for low-dimensional data, sliced Wasserstein distance and MMD: both
compare two sample sets x: (n, d) and y: (m, d) and run on the device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _directions(key: jax.Array, d: int, n_projections: int) -> jax.Array:
  """(d, n_projections) unit vectors, uniform on the sphere."""
  theta = jax.random.normal(key, (d, n_projections))
  return theta / jnp.linalg.norm(theta, axis=0, keepdims=True)


def _quantiles(x: jax.Array, theta: jax.Array, nq: int) -> jax.Array:
  """(nq, n_projections): the projections' quantiles at levels (i + 0.5) / nq, which for
  nq = len(x) are the sorted projections themselves."""
  px = jnp.sort(x.reshape(x.shape[0], -1) @ theta, axis=0)
  if x.shape[0] == nq:
    return px
  return jnp.quantile(px, (jnp.arange(nq) + 0.5) / nq, axis=0)


def sliced_wasserstein(key: jax.Array, x: jax.Array, y: jax.Array,
                       n_projections: int = 256) -> jax.Array:
  """Sliced 2-Wasserstein distance (Rabin et al. 2011), a scalar in data units.

  SW_2(x, y)^2 = E_theta W_2^2(theta.x, theta.y), theta uniform on the unit sphere. Each 1-D
  W_2 is computed exactly from sorted projections (equal sample sizes; for unequal sizes
  the quantile functions are compared at n_q = min(n, m) levels).
  """
  d = x.reshape(x.shape[0], -1).shape[1]
  if d != y.reshape(y.shape[0], -1).shape[1]:
    raise ValueError(f"sample dimensions differ: {d} vs {y.reshape(y.shape[0], -1).shape[1]}")
  theta = _directions(key, d, n_projections)
  nq = min(x.shape[0], y.shape[0])
  return jnp.sqrt(jnp.mean((_quantiles(x, theta, nq) - _quantiles(y, theta, nq)) ** 2))


def sliced_wasserstein_to(key: jax.Array, y: jax.Array, n: int,
                          n_projections: int = 256):
  """`distance(x)`: sliced_wasserstein(key, x, y, n_projections) for sets x of n <= len(y)
  points, with y's projections and quantiles computed once (for many x against one large
  reference set y)."""
  d = y.reshape(y.shape[0], -1).shape[1]
  theta = _directions(key, d, n_projections)
  qy = _quantiles(y, theta, min(n, y.shape[0]))

  def distance(x: jax.Array) -> jax.Array:
    if x.shape[0] != n or x.reshape(n, -1).shape[1] != d:
      raise ValueError(f"expected {n} points of dimension {d}, got shape {x.shape}")
    return jnp.sqrt(jnp.mean((_quantiles(x, theta, qy.shape[0]) - qy) ** 2))

  return distance


def mmd_rbf(x: jax.Array, y: jax.Array, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> jax.Array:
  """Unbiased squared MMD with a sum of RBF kernels k(a, b) = exp(-|a-b|^2 / (2 h^2))."""
  x = x.reshape(x.shape[0], -1)
  y = y.reshape(y.shape[0], -1)

  def gram(a, b):
    sq = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
    sq = jnp.maximum(sq, 0.0)
    return sum(jnp.exp(-sq / (2 * h**2)) for h in bandwidths)

  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
  kxx = (kxx.sum() - jnp.trace(kxx)) / (n * (n - 1))
  kyy = (kyy.sum() - jnp.trace(kyy)) / (m * (m - 1))
  return kxx + kyy - 2 * kxy.mean()
