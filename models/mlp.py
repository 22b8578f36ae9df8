"""A small time-conditioned MLP for low-dimensional (toy) data.

x: (B, D), labels: (B,) -> (B, D). The label embedding (Gaussian Fourier features of
log(labels) or sinusoidal features of labels, as in NCSN++/DDPM++) is projected and added
to every hidden layer's pre-activation, so conditioning reaches the whole depth.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.embeddings import GaussianFourierProjection, sinusoidal_embedding
from models.registry import register_model


class MLP(nnx.Module):

  def __init__(self, dim: int, *, hidden: int = 256, num_layers: int = 3,
               embedding_type: str = "positional", embedding_dim: int = 64,
               fourier_scale: float = 16.0, scale_by_sigma: bool = False,
               dropout: float = 0.0, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if embedding_type not in ("fourier", "positional"):
      raise ValueError(f"unknown embedding_type {embedding_type!r}; "
                       "choices: fourier, positional")
    self.embedding_type = embedding_type
    self.embedding_dim = embedding_dim
    self.scale_by_sigma = scale_by_sigma
    self.dtype = dtype
    if embedding_type == "fourier":
      self.fourier = GaussianFourierProjection(embedding_dim // 2, fourier_scale, rngs=rngs)
    dense = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.temb = dense(embedding_dim, hidden)
    self.inp = dense(dim, hidden)
    self.hidden = nnx.List([dense(hidden, hidden) for _ in range(num_layers)])
    self.temb_proj = nnx.List([dense(hidden, hidden) for _ in range(num_layers)])
    self.out = dense(hidden, dim)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, labels: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    if self.embedding_type == "fourier":
      emb = self.fourier(jnp.log(labels))
    else:
      emb = sinusoidal_embedding(labels, self.embedding_dim)
    emb = nnx.silu(self.temb(emb.astype(self.dtype)))
    h = self.inp(x.astype(self.dtype))
    keys = (jax.random.split(key, len(self.hidden)) if (train and key is not None)
            else [None] * len(self.hidden))
    for layer, proj, k in zip(self.hidden, self.temb_proj, keys):
      h = nnx.silu(h + proj(emb))
      h = self.dropout(h, deterministic=not train, rngs=k)
      h = layer(h)
    h = self.out(nnx.silu(h)).astype(jnp.float32)
    if self.scale_by_sigma:
      # labels are the noise levels sigma (VE, continuous): the score scales as 1/sigma.
      h = h / labels[:, None]
    return h


@register_model("mlp")
def build(config, rngs: nnx.Rngs) -> MLP:
  m = config.model
  return MLP(
      dim=int(config.data.dim), hidden=m.nf, num_layers=m.num_layers,
      embedding_type=m.embedding_type, embedding_dim=m.embedding_dim,
      fourier_scale=m.fourier_scale, scale_by_sigma=m.scale_by_sigma, dropout=m.dropout,
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)
