"""score_sde's network semantics around any backbone, input centering and 1/sigma output
scaling, in one module (the shape of EDM's `VPPrecond` / `VEPrecond`, Karras et al. 2022);
the formulas: `Precond`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.class_embedding import check_class_labels
from sde_lib.chains import smld_sigmas


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> jax.Array:
  """SMLD noise levels, descending: exp(linspace(log sigma_max, log sigma_min, N)). (N,).

  score_sde's models/utils.get_sigmas: index 0 is the largest noise level.
  """
  return smld_sigmas(sigma_min, sigma_max, num_scales, descending=True, xp=jnp)


class Precond(nnx.Module):
  """Wraps a backbone `backbone(x, labels, *, train, key)` with score_sde's input
  centering and 1/sigma output scaling (below).

  Call: net(x, labels, *, class_labels=None, train=False, key=None). x: (B, ...) float,
  images NHWC; labels: (B,) float (a time, a noise level or a noise-level index);
  class_labels: (B,) int in [0, num_classes] (num_classes = the null label) or None (the
  null label of a conditional backbone; nothing for an unconditional one). Returns x's
  shape, float32. `key` is the dropout key, used by the backbone only when train=True.
  Raises UserError for class labels given to an unconditional backbone or concrete
  labels out of range.

  Attributes: backbone (the wrapped network; its parameters sit under `backbone` in the
  state), center_input, scale_by_sigma, continuous, sigma_min, sigma_max, num_scales.

      net(x, labels) = c_out(labels) * backbone(c_in(x), labels)

      c_in(x)   = 2 x - 1   for data in [0, 1] (image data, config.data.centered = False)
                = x         otherwise (centered image data in [-1, 1]; non-image data)
      c_out     = 1 / sigma(labels)  if scale_by_sigma (NCSNv2's technique 3: the network
                                     predicts sigma * score)
                = 1                  otherwise
      sigma(labels) = labels                                    if continuous (labels are
                                                                the noise levels)
                    = get_sigmas(sigma_min, sigma_max, N)[int(labels)]  otherwise (labels are
                                                                SMLD indices; descending table)

  This is exactly score_sde's `model.apply(x, labels)` (yang-song/score_sde, models/ncsnpp.py,
  ddpm.py, ncsnv2.py): they center with `2 * x - 1.` unless config.data.centered and divide
  by `sigmas[labels]` (NCSN++: `sigmas[time_cond.astype(jnp.int32)]`, a truncating cast) or
  by the labels themselves for the continuous Fourier-feature NCSN++.

  Class-conditional backbones (`num_classes > 0`: NCSN++/DDPM++, the MLP) also take
  `class_labels` (B,) int, passed through unchanged; None means the null label
  (models/class_embedding.py). `num_classes` and `null_label` are read off the backbone.

  What labels are fed and what the output means for the process is decided elsewhere, in
  models/parameterization.py (`get_score_fn`), by asking the process.
  """

  def __init__(self, backbone: nnx.Module, *, center_input: bool, scale_by_sigma: bool,
               continuous: bool, sigma_min: float | None = None,
               sigma_max: float | None = None, num_scales: int | None = None):
    if scale_by_sigma and not continuous and None in (sigma_min, sigma_max, num_scales):
      raise ValueError("scale_by_sigma with discrete labels needs sigma_min, sigma_max "
                       "and num_scales (the SMLD noise-level table)")
    self.backbone = backbone
    self.center_input = bool(center_input)
    self.scale_by_sigma = bool(scale_by_sigma)
    self.continuous = bool(continuous)
    self.sigma_min = None if sigma_min is None else float(sigma_min)
    self.sigma_max = None if sigma_max is None else float(sigma_max)
    self.num_scales = None if num_scales is None else int(num_scales)

  @property
  def num_classes(self) -> int:
    """The backbone's number of classes; 0 for an unconditional network."""
    return int(getattr(self.backbone, "num_classes", 0) or 0)

  @property
  def null_label(self) -> int | None:
    """The label meaning "no class" (= num_classes), or None if unconditional."""
    return self.num_classes or None

  def sigma(self, labels: jax.Array) -> jax.Array:
    """The noise level that labels (B,) stand for: (B,) float32 (the class docstring)."""
    if self.continuous:
      return labels.astype(jnp.float32)
    sigmas = get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
    # score_sde casts (truncates), it does not round: sigmas[time_cond.astype(int32)].
    return sigmas[labels.astype(jnp.int32)]

  def __call__(self, x: jax.Array, labels: jax.Array, *,
               class_labels: jax.Array | None = None, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    check_class_labels(class_labels, self.num_classes)
    if self.center_input:
      x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
    # Unconditional backbones (DDPM, NCSNv2, ...) do not take the keyword at all.
    extra = {} if class_labels is None else {"class_labels": class_labels}
    h = self.backbone(x, labels, train=train, key=key, **extra).astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / self.sigma(labels).reshape((-1,) + (1,) * (h.ndim - 1))
    return h
