"""Turning a network's output into the process's native quantity: `get_score_fn(sde, model)`
is the one place that feeds a network and maps its output, by asking the process."""
from __future__ import annotations

import equinox as eqx
import jax
from flax import nnx

from models.guidance import ClassifierFreeGuidance, classifier_free_guidance
from sde_lib import AbstractSDE


class NetworkFn(eqx.Module):
  """The raw network as a function of (x, labels[, class_labels]):
  `model(x, labels, class_labels=..., train, key)`; class_labels is passed only when
  given (unconditional networks do not take it). Its input is the network's labels and
  its output the network's own prediction; `ScoreFn` turns it into a model function
  (sde_lib's `ModelFn`: (x, t) -> the process's native quantity)."""

  model: nnx.Module
  train: bool = eqx.field(static=True, default=False)
  key: jax.Array | None = None

  def __call__(self, x: jax.Array, labels: jax.Array,
               class_labels: jax.Array | None = None,
               augment_labels: jax.Array | None = None) -> jax.Array:
    # Each keyword only when given: networks without it do not take it.
    extra = {} if augment_labels is None else {"augment_labels": augment_labels}
    if class_labels is not None:
      extra["class_labels"] = class_labels
    return self.model(x, labels, train=self.train, key=self.key, **extra)


def get_model_fn(model: nnx.Module, train: bool = False,
                 key: jax.Array | None = None) -> NetworkFn:
  """The network itself as `fn(x, labels)`; dropout uses `key` when train=True."""
  return NetworkFn(model, train, key)


class ScoreFn(eqx.Module):
  """`model_fn(x, t)` returning the native quantity of `sde` (below).

  x: (B, ...), t: (B,), class_labels: (B,) int or None (a conditional network's null
  label) -> x.shape.

  `get_score_fn(sde, model, ...)` returns `model_fn(x, t)`: the score grad log p_t(x) for
  VP, sub-VP and VE, the velocity dx/dt for rectified flow (docs/ARCHITECTURE.md). This is the one
  place that feeds a network: it asks the process for the labels at time t and for the
  native quantity from the network output,

      labels = sde.network_labels(t, continuous)
      native = sde.native_from_network(net(x, labels), x, t, continuous)

  so it never tests the process's type. With score_sde's conventions (sde_lib holds them):
  VP / sub-VP networks get 999 t (continuous) or the DDPM index t (N - 1) and predict the
  noise, score = -out / std; VE networks get sigma(t) or the NCSN index round((T - t)(N - 1))
  and predict the score (any 1/sigma is applied by models/precond.py); rectified-flow
  networks get 999 t and predict the velocity.

  Class-conditional networks: both functions take an optional third argument `class_labels`
  (B,) int, so `get_score_fn(sde, model)` is also the conditional model function
  `model_fn(x, t, class_labels)` that `models.guidance.classifier_free_guidance` wants;
  without it a conditional network is evaluated at its null label (the unconditional
  model that label dropout trains). `get_guided_score_fn` puts the two together.
  `augment_labels` (B, augment_dim), EDM's augmentation parameters (data/edm_augment.py),
  go to a network that takes them (models/edm_precond.py) in training; None otherwise.

  The returned function is an equinox Module holding the network as a pytree, so it can be
  passed to jitted samplers as an argument: new parameters do not recompile.
  """

  net: NetworkFn
  sde: AbstractSDE = eqx.field(static=True)
  continuous: bool = eqx.field(static=True, default=True)

  def __call__(self, x: jax.Array, t: jax.Array,
               class_labels: jax.Array | None = None,
               augment_labels: jax.Array | None = None) -> jax.Array:
    labels = self.sde.network_labels(t, self.continuous)
    out = self.net(x, labels, class_labels, augment_labels)
    return self.sde.native_from_network(out, x, t, self.continuous)


def get_score_fn(sde: AbstractSDE, model: nnx.Module, train: bool = False,
                 continuous: bool = True, key: jax.Array | None = None) -> ScoreFn:
  """`model_fn(x, t) -> native quantity` of `sde` from a network (score_sde's name).

  model: a network called as model(x, labels, train=..., key=...), e.g. models.get_model's.
  For rectified flow the native quantity is the velocity, not the score.
  """
  return ScoreFn(get_model_fn(model, train, key), sde, continuous)


def get_guided_score_fn(sde: AbstractSDE, model: nnx.Module, w: float | jax.Array,
                        class_labels: jax.Array, continuous: bool = True
                        ) -> ClassifierFreeGuidance:
  """Classifier-free guidance of a class-conditional network: `model_fn(x, t)` returning
  (1 + w) native(x, t, y) - w native(x, t, null) (Ho and Salimans 2022, eq. 6; see
  models.guidance.ClassifierFreeGuidance), one network call on a batch of 2B per call.

  model: a network from models.get_model with config.model.num_classes > 0, trained with
    label dropout (config.model.label_dropout > 0) so that its null label is the
    unconditional model. w: guidance weight >= 0 (0: plain conditional sampling).
  class_labels: (B,) int in [0, num_classes), or a scalar for the whole batch.

  Raises:
    UserError: an unconditional model (nothing to guide), w < 0, or a label out of range.
  """
  null_label = getattr(model, "null_label", None)
  return classifier_free_guidance(get_score_fn(sde, model, continuous=continuous), w,
                                  class_labels, null_label)
