"""EDM's preconditioning (Karras et al. 2022, Sec. 5 and Table 1): the denoiser
D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) around any backbone F."""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from flax import nnx

from common.errors import UserError
from models.class_embedding import check_class_labels


def edm_coefficients(sigma: jax.Array, sigma_data: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(c_skip, c_out, c_in, c_noise) of EDM's Table 1 at noise levels sigma: each (B,).

      c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
      c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
      c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
      c_noise = ln(sigma) / 4
  """
  sigma = sigma.astype(jnp.float32)
  var = sigma**2 + sigma_data**2
  return (sigma_data**2 / var, sigma * sigma_data * jax.lax.rsqrt(var), jax.lax.rsqrt(var),
          jnp.log(sigma) / 4)


def takes_edm_signature(backbone: nnx.Module) -> bool:
  """Whether backbone is called as EDM's networks are, F(x, noise_labels, class_labels,
  augment_labels, *, train, key) (models/song_unet.py, dhariwal_unet.py), rather than as
  this project's backbones, F(x, labels, *, train, key[, class_labels])."""
  return "augment_labels" in inspect.signature(type(backbone).__call__).parameters


class EDMPrecond(nnx.Module):
  """EDM's `EDMPrecond` around a backbone: a denoiser of x at noise level sigma.

  Call: net(x, sigma, *, class_labels=None, augment_labels=None, train=False, key=None).
  x: (B, ...) float, images NHWC, in the data's own (centered) units; sigma: (B,) the
  noise level (the EDM process's `network_labels`, sigma = t); class_labels: (B,) int in
  [0, num_classes] (num_classes = the null label), EDM's (B, label_dim) one-hot rows for
  a backbone with EDM's signature, or None; augment_labels: (B, augment_dim) or None (EDM
  backbones only). Returns D(x; sigma): x.shape, float32:

      D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, class_labels, augment_labels)

  with the coefficients of `edm_coefficients` (EDM's Table 1; sigma_data = 0.5 for data
  in [-1, 1], EDM's default). The backbone is called with EDM's signature if it has one
  (`takes_edm_signature`), else as F(c_in x, c_noise, *, train, key[, class_labels]).
  `key` is the dropout key, used by the backbone only when train=True.

  Attributes: backbone (its parameters sit under `backbone` in the state), sigma_data.
  """

  def __init__(self, backbone: nnx.Module, *, sigma_data: float = 0.5):
    if not float(sigma_data) > 0:
      raise UserError(f"config.model.sigma_data must be > 0, got {sigma_data}")
    self.backbone = backbone
    self.sigma_data = float(sigma_data)
    self.edm_signature = takes_edm_signature(backbone)

  @property
  def num_classes(self) -> int:
    """The backbone's number of classes; 0 for an unconditional network."""
    return int(getattr(self.backbone, "num_classes", 0) or 0)

  @property
  def null_label(self) -> int | None:
    """The label meaning "no class" (= num_classes), or None if unconditional."""
    return self.num_classes or None

  def __call__(self, x: jax.Array, sigma: jax.Array, *,
               class_labels: jax.Array | None = None,
               augment_labels: jax.Array | None = None, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    if class_labels is None or jnp.ndim(class_labels) < 2:
      check_class_labels(class_labels, self.num_classes)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
    shape = (-1,) + (1,) * (x.ndim - 1)
    x = x.astype(jnp.float32)
    x_in = c_in.reshape(shape) * x
    if self.edm_signature:
      f = self.backbone(x_in, c_noise, class_labels, augment_labels, train=train, key=key)
    else:
      if augment_labels is not None:
        raise UserError("augment_labels were given, but the backbone takes none (only "
                        "EDM's networks song_unet and dhariwal_unet condition on them)")
      extra = {} if class_labels is None else {"class_labels": class_labels}
      f = self.backbone(x_in, c_noise, train=train, key=key, **extra)
    return c_skip.reshape(shape) * x + c_out.reshape(shape) * f.astype(jnp.float32)
