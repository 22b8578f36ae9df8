"""Guided model functions, classifier-free guidance and classifier guidance: both return an
ordinary model function `model_fn(x, t) -> native quantity` (the score for VP, sub-VP and
VE, the velocity for rectified flow; docs/ARCHITECTURE.md), so every sampler (PC, ODE, SDE,
fast samplers, the inpainter) uses them unchanged.
"""
from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from models import conv as conv_lib
from sde_lib.base import AbstractSDE, ModelFn, batch_mul
from common.errors import UserError

#: `cond_model_fn(x, t, class_labels) -> native`: x (B, ...), t (B,), class_labels (B,) int.
CondModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
#: `log_prob_fn(x, t) -> log p(y | x, t)`: (B,) nats, the labels y bound inside.
LogProbFn = Callable[[jax.Array, jax.Array], jax.Array]


class ClassifierFreeGuidance(eqx.Module):
  """`model_fn(x, t) = (1 + w) cond(x, t, y) - w cond(x, t, null)` (Ho and Salimans 2022,
  eq. 6, in the form eps~ = (1 + w) eps(x, c) - w eps(x)), on the native quantity.

  Why the native quantity is the right place, whatever it is: per t, the score, the noise
  prediction, the data prediction and the velocity are affine images of one another,
      q = a(t) x + b(t) score    (e.g. eps = -sigma score, x0 = (x + sigma^2 score)/alpha,
                                  RF: v = -(x + t score)/(1 - t)),
  with the same a(t), b(t) for the conditional and the unconditional outputs. The guided
  combination has weights (1 + w) and -w, summing to 1, so
      (1 + w) q_c - w q_u = a x + b [(1 + w) score_c - w score_u]:
  guiding any of them is guiding the score. So the velocity of rectified flow is guided
  directly, with no conversion (which would divide by t or 1 - t).

  Both halves come from ONE network call on the batch [x; x] with labels [y; null], as
  in Ho and Salimans' Alg. 2 and EDM/ADM-style implementations.

  Fields:
    cond_model_fn: `(x, t, class_labels) -> native`, trained with label dropout so that
      `null_label` means "no class".
    w: the guidance weight (w = 0: the conditional model; w > 0: sharper), scalar.
    class_labels: (B,) int, the requested classes.
    null_label: the label of the unconditional model (static int).

  An equinox Module: the guidance weight and the class labels (and any network parameters)
  are traced leaves, so a new weight or new labels reuse the compiled sampler.
  """

  cond_model_fn: CondModelFn
  w: jax.Array
  class_labels: jax.Array
  null_label: int = eqx.field(static=True)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    b = x.shape[0]
    labels = jnp.broadcast_to(jnp.asarray(self.class_labels), (b,))
    both = self.cond_model_fn(
        jnp.concatenate([x, x]), jnp.concatenate([t, t]),
        jnp.concatenate([labels, jnp.full_like(labels, self.null_label)]))
    cond, uncond = both[:b], both[b:]
    return (1.0 + self.w) * cond - self.w * uncond


def classifier_free_guidance(cond_model_fn: CondModelFn, w: float | jax.Array,
                             class_labels: jax.Array, null_label: int
                             ) -> ClassifierFreeGuidance:
  """A model function with classifier-free guidance weight w; see `ClassifierFreeGuidance`.

  Args:
    cond_model_fn: `(x, t, class_labels) -> native quantity`; x (B, ...), t (B,),
      class_labels (B,).
    w: guidance weight, >= 0 (w = 0 is plain conditional sampling).
    class_labels: (B,) ints (or a scalar, broadcast to the batch) in [0, null_label).
    null_label: the label meaning "unconditional" (label dropout's label; by convention
      the number of classes).

  Returns:
    `model_fn(x, t)`, one network evaluation (on a batch of 2B) per call.

  Raises:
    UserError: null_label is None (the model is unconditional: there is nothing to guide),
      a negative w, or a class label outside [0, null_label) (checked when not traced).
  """
  if null_label is None:
    raise UserError("classifier-free guidance needs a conditional model trained with "
                    "label dropout (a null label); this model has none "
                    "(config.model.num_classes / label_dropout unset)")
  if not isinstance(w, jax.core.Tracer) and float(w) < 0:
    raise UserError(f"guidance weight w must be >= 0, got {float(w)}")
  if not isinstance(class_labels, jax.core.Tracer):
    bad = np.asarray(class_labels)
    bad = bad[(bad < 0) | (bad >= int(null_label))]
    if bad.size:
      raise UserError(f"class label {int(bad[0])} out of range: labels must be in "
                      f"[0, {int(null_label)}) (the null label {int(null_label)} is "
                      f"the unconditional model)")
  return ClassifierFreeGuidance(cond_model_fn, jnp.asarray(w, jnp.float32),
                                jnp.asarray(class_labels, jnp.int32), int(null_label))


class ClassifierGuidance(eqx.Module):
  """Guided score  score(x, t) + s grad_x log p(y | x, t)  (Song et al. 2021, Sec. 5 and
  App. I.1, eq. 49, with a scale s as in Dhariwal and Nichol 2021) as a native model
  function.

  With s = 1 and the exact noisy-data classifier p_t(y | x), this is the score of the
  conditional p_t(x | y) (Bayes: grad log p_t(x | y) = grad log p_t(x) +
  grad log p_t(y | x)).

  The guidance term is mapped to the native quantity through the process's conversion,
  which is affine in (x, score) jointly: native(x, score + d) = native(x, score) +
  [native(0, d) - native(0, 0)]. Adding that difference to the model's own output
  (rather than converting the output to a score and back) keeps the velocity of
  rectified flow free of the 1/t round trip. Where alpha(t) = 0 (rectified flow at t = T,
  where every sampler starts) the shift is its limit as t -> T, finite.

  grad_x is taken of sum_b log p(y_b | x_b, t_b): right when each example's log-probability
  depends only on its own x_b (no batch statistics in the classifier).

  Fields:
    model_fn: the unconditional `model_fn(x, t) -> native`.
    log_prob_fn: `(x, t) -> (B,)` log p(y | x, t) in nats for the requested labels.
    scale: s, scalar.
    sde: the process (static), for the conversion.

  An equinox Module: the scale is a traced leaf, as are the arrays that model_fn and
  log_prob_fn hold when they are pytrees (e.g. the labels and the classifier's
  parameters), so a new scale or new labels reuse the compiled sampler.
  """

  model_fn: ModelFn
  log_prob_fn: LogProbFn
  scale: jax.Array
  sde: AbstractSDE = eqx.field(static=True)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    sde = self.sde
    alpha, sigma = sde.alpha_sigma(t)
    # Where alpha(t) = 0 (rectified flow at T) the score-to-native map is infinite and the
    # classifier's gradient is 0: the product takes its limit (see `_shift_at_alpha_zero`).
    shift = jax.lax.cond(jnp.any(alpha == 0),
                         lambda: self._shift_at_alpha_zero(x, t, alpha, sigma),
                         lambda: self._shift(x, t))
    return self.model_fn(x, t) + shift

  def _grad(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """grad_x sum_b log p(y_b | x_b, t_b): x.shape."""
    # Reverse mode only: the input gradient in the form XLA's CPU backend runs fast
    # inside the sampler's loop (models/conv.py).
    with conv_lib.reverse_mode_layouts():
      return jax.grad(lambda v: jnp.sum(self.log_prob_fn(v, t)))(x)

  def _shift(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """native(x, score + s grad) - native(x, score), taken at x = 0 (the conversion is
    affine in (x, score) jointly; this avoids the cancellation of (x + d) - x)."""
    sde = self.sde
    zero = jnp.zeros_like(x)
    return (sde.native_from_score(self.scale * self._grad(x, t), zero, t)
            - sde.native_from_score(zero, zero, t))

  def _shift_at_alpha_zero(self, x: jax.Array, t: jax.Array, alpha: jax.Array,
                           sigma: jax.Array) -> jax.Array:
    """The shift's limit t' -> t where alpha(t) = 0, elsewhere `_shift`.

    The score shift d = s grad log p_t(y | x) moves the data prediction by sigma^2 d /
    alpha (x0 = (x + sigma^2 score) / alpha), and the native quantity is affine in x0 with
    finite coefficients where alpha = 0 (rectified flow: v = (x - x0) / t). At alpha = 0
    the classifier cannot tell classes apart (x_T carries no information on x_0), so
    d = 0 and d / alpha is 0/0; its limit is (dd/dt) / (dalpha/dt) (l'Hopital), the t-
    derivative of the gradient by forward mode (one jvp of the classifier's gradient).
    """
    sde = self.sde
    ones = jnp.ones_like(t)
    d_dt = jax.jvp(lambda tt: self._grad(x, tt), (t,), (ones,))[1]
    dalpha = jax.jvp(lambda tt: sde.alpha_sigma(tt)[0], (t,), (ones,))[1]
    singular = alpha == 0
    safe_dalpha = jnp.where(singular, dalpha, 1.0)
    dx0 = batch_mul(self.scale * sigma**2 / safe_dalpha, d_dt)
    zero = jnp.zeros_like(x)
    limit = sde.native_from_x0(dx0, zero, t) - sde.native_from_x0(zero, zero, t)
    # The plain shift is not finite where alpha = 0; `where` keeps the limit there.
    return jnp.where(singular.reshape((-1,) + (1,) * (x.ndim - 1)), limit,
                     self._shift(x, t))


def classifier_guidance(model_fn: ModelFn, log_prob_fn: LogProbFn,
                        scale: float | jax.Array, sde: AbstractSDE) -> ClassifierGuidance:
  """A model function guided by a noise-conditional classifier; see `ClassifierGuidance`.

  Args:
    model_fn: `model_fn(x, t)` of the unconditional model (native quantity of `sde`).
    log_prob_fn: `log_prob_fn(x, t) -> (B,)`, log p(y | x, t) of the requested labels
      (e.g. `jax.nn.log_softmax(classifier(x, t))[arange(B), y]`).
    scale: the guidance scale s (1 = the Bayes conditional score).
    sde: the process.

  Returns:
    `guided(x, t) -> native quantity`: one model evaluation and one classifier gradient
    per call.
  """
  return ClassifierGuidance(model_fn, log_prob_fn, jnp.asarray(scale, jnp.float32), sde)
