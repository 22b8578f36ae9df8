"""Sample-quality metrics for low-dimensional data: sliced Wasserstein distance and MMD.

Both compare two sample sets x: (n, d) and y: (m, d) and run on the device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sliced_wasserstein(key: jax.Array, x: jax.Array, y: jax.Array,
                       n_projections: int = 256) -> jax.Array:
  """Sliced 2-Wasserstein distance (Rabin et al. 2011), a scalar in data units.

  SW_2(x, y)^2 = E_theta W_2^2(theta.x, theta.y), theta uniform on the unit sphere. Each 1-D
  W_2 is computed exactly from sorted projections (equal sample sizes; for unequal sizes
  the quantile functions are compared at n_q = min(n, m) levels).
  """
  x = x.reshape(x.shape[0], -1)
  y = y.reshape(y.shape[0], -1)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"sample dimensions differ: {x.shape[1]} vs {y.shape[1]}")
  theta = jax.random.normal(key, (x.shape[1], n_projections))
  theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
  px = jnp.sort(x @ theta, axis=0)
  py = jnp.sort(y @ theta, axis=0)
  nq = min(x.shape[0], y.shape[0])
  levels = (jnp.arange(nq) + 0.5) / nq
  qx = jnp.quantile(px, levels, axis=0) if x.shape[0] != nq else px
  qy = jnp.quantile(py, levels, axis=0) if y.shape[0] != nq else py
  return jnp.sqrt(jnp.mean((qx - qy) ** 2))


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
