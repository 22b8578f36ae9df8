"""The class-label embedding of class-conditional networks, with a null label for
classifier-free guidance (details: `ClassEmbedding`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.errors import UserError


class ClassEmbedding(nnx.Module):
  """`emb(class_labels, batch) -> (B, features)`: a learned row per class plus the null row.

  class_labels: (B,) int in [0, num_classes] (num_classes is the null label), a scalar
  (broadcast to the batch), or None (every example gets the null label). Out-of-range
  labels give NaN rows under jit (jnp.take's fill mode) rather than a silently wrong row;
  `check_class_labels` raises for concrete ones first. Initialisation: flax's default
  embedding initializer (variance_scaling(1, fan_in, normal): N(0, 1) entries, like
  torch's nn.Embedding in ADM).

  A conditional backbone (NCSN++/DDPM++, the MLP with `num_classes > 0`) adds
  `ClassEmbedding(class_labels)` to its time / noise-level embedding, as ADM's conditional
  U-Net does (Dhariwal and Nichol 2021, openai/guided-diffusion unet.py:
  `emb = time_embed(t) + label_emb(y)`, `label_emb = nn.Embedding(num_classes, dim)`) and as
  EDM's SongUNet does with its `map_label` (Karras et al. 2022, NVlabs/edm
  training/networks.py). The table has num_classes + 1 rows: rows 0 .. num_classes - 1 are
  the classes and the last row, `null_label = num_classes`, means "no class". Label dropout
  in training (training/losses.py) replaces labels by the null label, so the same network
  is also the unconditional model that classifier-free guidance needs (Ho and Salimans
  2022; EDM instead zeroes its one-hot input, which is the same thing for a linear map
  without bias, up to the learned null row here).
  """

  def __init__(self, num_classes: int, features: int, *, rngs: nnx.Rngs):
    if int(num_classes) < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    self.num_classes = int(num_classes)
    self.embed = nnx.Embed(self.num_classes + 1, features, rngs=rngs)

  @property
  def null_label(self) -> int:
    return self.num_classes

  def __call__(self, class_labels: jax.Array | None, batch: int) -> jax.Array:
    if class_labels is None:
      labels = jnp.full((batch,), self.null_label, jnp.int32)
    else:
      labels = jnp.broadcast_to(jnp.asarray(class_labels), (batch,)).astype(jnp.int32)
    return self.embed(labels)


def check_class_labels(class_labels, num_classes: int) -> None:
  """UserError for class labels given to an unconditional network, or concrete labels
  outside [0, num_classes] (num_classes itself is the null label). Traced labels are not
  checked (their values are unknown)."""
  if class_labels is None:
    return
  if not num_classes:
    raise UserError("class labels were given to an unconditional network "
                    "(config.model.num_classes = 0); train a class-conditional model "
                    "(config.model.num_classes > 0) to condition on a class")
  if isinstance(class_labels, jax.core.Tracer):
    return
  labels = np.asarray(class_labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"class labels must be integers, got dtype {labels.dtype}")
  bad = labels[(labels < 0) | (labels > num_classes)]
  if bad.size:
    raise UserError(f"class label {int(bad[0])} out of range: labels must be in "
                    f"[0, {num_classes}) (or {num_classes}, the null label)")
