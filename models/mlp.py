"""A small time-conditioned (optionally class-conditional) MLP for low-dimensional (toy)
data: x (B, D), labels (B,) -> (B, D)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.choices import check_choice
from common.errors import UserError
from models.class_embedding import ClassEmbedding
from models.embeddings import GaussianFourierProjection, sinusoidal_embedding
from models.registry import register_model


class MLP(nnx.Module):
  """Call: net(x, labels, *, class_labels=None, train=False, key=None). x: (B, dim),
  labels: (B,) (time or noise level), class_labels: (B,) int or None (the null label;
  conditional networks only). Returns (B, dim) float32.

  x: (B, D), labels: (B,) -> (B, D). The label embedding (Gaussian Fourier features of
  log(labels) or sinusoidal features of labels, as in NCSN++/DDPM++) is projected and added
  to every hidden layer's pre-activation, so conditioning reaches the whole depth. The
  input is used as it is (toy data are not images in [0, 1]: registered with image=False);
  the 1/sigma of scale_by_sigma is models/precond.py's.

  Class-conditional (num_classes > 0): a learned class embedding (models/class_embedding.py,
  num_classes + 1 rows, the last the null label) is added to the projected time embedding
  before its nonlinearity, as ADM adds its label embedding to the time embedding.
  With num_classes = 0 the parameters and outputs are those of the unconditional MLP.
  """

  def __init__(self, dim: int, *, hidden: int = 256, num_layers: int = 3,
               embedding_type: str = "positional", embedding_dim: int = 64,
               fourier_scale: float = 16.0, dropout: float = 0.0,
               num_classes: int = 0, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    check_choice(embedding_type, ("fourier", "positional"), "embedding_type")
    self.embedding_type = embedding_type
    self.embedding_dim = embedding_dim
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
    self.num_classes = int(num_classes)
    # Built last: the other parameters are those of the unconditional MLP of the same seed.
    self.class_emb = (ClassEmbedding(self.num_classes, hidden, rngs=rngs)
                      if self.num_classes else None)

  def __call__(self, x: jax.Array, labels: jax.Array, *,
               class_labels: jax.Array | None = None, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    if class_labels is not None and self.class_emb is None:
      raise UserError("class labels were given to an unconditional MLP "
                      "(config.model.num_classes = 0)")
    if self.embedding_type == "fourier":
      emb = self.fourier(jnp.log(labels))
    else:
      emb = sinusoidal_embedding(labels, self.embedding_dim)
    emb = self.temb(emb.astype(self.dtype))
    if self.class_emb is not None:
      emb = emb + self.class_emb(class_labels, x.shape[0]).astype(emb.dtype)
    emb = nnx.silu(emb)
    h = self.inp(x.astype(self.dtype))
    keys = (jax.random.split(key, len(self.hidden)) if (train and key is not None)
            else [None] * len(self.hidden))
    for layer, proj, k in zip(self.hidden, self.temb_proj, keys):
      h = nnx.silu(h + proj(emb))
      h = self.dropout(h, deterministic=not train, rngs=k)
      h = layer(h)
    return self.out(nnx.silu(h)).astype(jnp.float32)


@register_model("mlp", image=False)
def build(config, rngs: nnx.Rngs) -> MLP:
  """Reads config.model.{nf, num_layers, embedding_type, embedding_dim, fourier_scale,
  dropout, num_classes (absent: 0), dtype} and the data dimension config.data.dim."""
  m = config.model
  return MLP(
      dim=int(config.data.dim), hidden=m.nf, num_layers=m.num_layers,
      embedding_type=m.embedding_type, embedding_dim=m.embedding_dim,
      fourier_scale=m.fourier_scale, dropout=m.dropout,
      num_classes=int(m.get("num_classes", 0)),
      dtype=jnp.dtype(m.get("dtype", "float32")), rngs=rngs)
