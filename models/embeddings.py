"""Time / noise-level embeddings shared by all networks: labels (B,) -> features
(B, embedding_dim)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def sinusoidal_embedding(labels: jax.Array, embedding_dim: int,
                         max_positions: int = 10000) -> jax.Array:
  """DDPM's positional embedding (Ho et al. 2020, after Vaswani et al. 2017).

  emb[:, i] = sin(labels * w_i), emb[:, half + i] = cos(labels * w_i),
  w_i = max_positions^(-i / (half - 1)). labels: (B,) -> (B, embedding_dim).
  """
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape (B,), got {labels.shape}")
  half = embedding_dim // 2
  scale = math.log(max_positions) / (half - 1)
  freqs = jnp.exp(-scale * jnp.arange(half, dtype=jnp.float32))
  args = labels.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class GaussianFourierProjection(nnx.Module):
  """Random Fourier features of log-noise-level (Tancik et al. 2020; Song et al. 2021).

  emb = [sin(2 pi W labels), cos(2 pi W labels)], W ~ N(0, scale^2) fixed (not trained).
  labels: (B,) -> (B, 2 * embedding_size).
  """

  def __init__(self, embedding_size: int = 256, scale: float = 1.0, *, rngs: nnx.Rngs):
    # A non-trainable variable: excluded from the optimizer, saved with the model.
    self.W = nnx.Variable(
        jax.random.normal(rngs.params(), (embedding_size,)) * scale)

  def __call__(self, labels: jax.Array) -> jax.Array:
    proj = labels.astype(jnp.float32)[:, None] * self.W[...][None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
