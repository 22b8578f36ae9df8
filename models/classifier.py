"""Noise-conditional classifiers p_t(y | x_t) for classifier guidance (Song et al. 2021,
Sec. 5 and App. I.1), registered as "wideresnet_noise_conditional" and "mlp_classifier",
and the log-probability function that guidance needs."""
from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.choices import check_choice
from common.errors import UserError
from models import conv as conv_lib
from models.embeddings import GaussianFourierProjection, sinusoidal_embedding
from models.parameterization import NetworkFn, get_model_fn
from models.registry import register_model
from sde_lib import AbstractSDE

# He (Kaiming) normal initialization, fan-out mode, gain 2 (score_sde's
# conv_kernel_init_fn, after the autoaugment WRN).
_conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense_out_init(key, shape, dtype=jnp.float32):
  """U[-1/sqrt(n_out), 1/sqrt(n_out)]: score_sde's init of the final dense layer."""
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / np.sqrt(shape[1])


def classifier_labels(sde: AbstractSDE, t: jax.Array) -> jax.Array:
  """The classifier's conditioning label at time t: sigma(t), (B,) (below).

  Both are called as backbones are (models/registry.py): `net(x, labels, *, train, key)`,
  x: (B, ...) float, labels: (B,) the noise level sigma(t) > 0; they return logits
  (B, num_classes), float32.
  """
  return sde.alpha_sigma(t)[1]


def _group_norm(channels: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
  # score_sde: GroupNorm(num_groups=min(C // 4, 32), epsilon=1e-5), scale and bias.
  return nnx.GroupNorm(channels, num_groups=min(channels // 4, 32), epsilon=1e-5,
                       rngs=rngs)


class WideResnetBlock(nnx.Module):
  """Pre-activation residual block: norm-relu-conv3x3(stride)-[+ Dense(swish(temb))]-
  norm-relu-conv3x3, plus the shortcut (avg-pooled and zero-padded in channels when the
  shape changes, as score_sde's `_output_add`)."""

  def __init__(self, in_ch: int, out_ch: int, temb_dim: int, stride: int, *,
               activate_before_residual: bool, rngs: nnx.Rngs):
    self.stride = stride
    self.activate_before_residual = activate_before_residual
    self.norm1 = _group_norm(in_ch, rngs)
    self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), (stride, stride), padding="SAME",
                          use_bias=False, kernel_init=_conv_init,
                          conv_general_dilated=conv_lib.conv_general_dilated, rngs=rngs)
    self.temb = nnx.Linear(temb_dim, out_ch, rngs=rngs)
    self.norm2 = _group_norm(out_ch, rngs)
    self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), padding="SAME", use_bias=False,
                          kernel_init=_conv_init,
                          conv_general_dilated=conv_lib.conv_general_dilated, rngs=rngs)

  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    if self.activate_before_residual:
      # The shortcut takes the activated input too (the autoaugment WRN's first group).
      x = nnx.relu(self.norm1(x))
      h = x
    else:
      h = nnx.relu(self.norm1(x))
    h = self.conv1(h)
    h = h + self.temb(nnx.silu(temb))[:, None, None, :]
    h = self.conv2(nnx.relu(self.norm2(h)))
    return _output_add(h, x)


def _output_add(block_x: jax.Array, orig_x: jax.Array) -> jax.Array:
  """block_x + orig_x, the shortcut average-pooled by the block's stride and zero-padded
  in channels when the channel count changes (score_sde's `_output_add`)."""
  stride = orig_x.shape[-2] // block_x.shape[-2]
  if block_x.shape[-1] != orig_x.shape[-1]:
    orig_x = nnx.avg_pool(orig_x, (stride, stride), (stride, stride))
    extra = block_x.shape[-1] - orig_x.shape[-1]
    orig_x = jnp.pad(orig_x, [(0, 0), (0, 0), (0, 0), (0, extra)])
  return block_x + orig_x


class WideResnetNoiseConditional(nnx.Module):
  """score_sde's noise-conditional Wide-ResNet classifier.

  x: (B, H, W, C) images (H, W divisible by 4), labels: (B,) noise levels sigma > 0 ->
  logits (B, num_classes). Depth 6 blocks_per_group + 4, widths (16, 32, 64) *
  channel_multiplier; score_sde's CIFAR-10 classifier is blocks_per_group = 4,
  channel_multiplier = 10 (WRN-28-10).

  Forward pass (as score_sde):
    x <- (x - input_mean) / input_std  per channel, if given (score_sde's `get_logit_fn`
         applies CIFAR-10's channel statistics before the network);
    x <- (x - mean(x)) / max(std(x), 1 / sqrt(H W C))  per image;
    temb = Dense(swish(Dense(Fourier_128(log sigma), 512)), 512), Fourier scale 16;
    conv3x3(16), three groups of blocks (strides 1, 2, 2), norm-relu, global average
    pool, Dense(num_classes).

  Networks (registered by name; `models.get_model` builds them from a config whose `model`
  section is the classifier's, see training/classifier.py):

    "wideresnet_noise_conditional"  score_sde's Wide-ResNet (yang-song/score_sde,
        models/wideresnet_noise_conditional.py, the classifier of its class-conditional
        CIFAR-10 demo): WRN-(6n+4)-k of Zagoruyko and Komodakis 2016 with GroupNorm in
        place of BatchNorm, per-image standardization of the input, and the noise level
        entering every residual block through Gaussian Fourier features of log sigma.
    "mlp_classifier"  a small MLP for toy data, conditioned the same way.
  """

  def __init__(self, num_channels: int, num_classes: int, *, blocks_per_group: int = 4,
               channel_multiplier: int = 10, embedding_size: int = 128,
               fourier_scale: float = 16.0,
               input_mean: Sequence[float] | None = None,
               input_std: Sequence[float] | None = None, rngs: nnx.Rngs):
    if blocks_per_group < 1 or channel_multiplier < 1:
      raise UserError(f"wideresnet_noise_conditional needs blocks_per_group >= 1 and "
                      f"channel_multiplier >= 1, got {blocks_per_group} and "
                      f"{channel_multiplier}")
    for name, v in (("input_mean", input_mean), ("input_std", input_std)):
      if v is not None and len(v) != num_channels:
        raise UserError(f"config.classifier.model.{name} has {len(v)} entries; the data "
                        f"have {num_channels} channels")
    self.input_mean = None if input_mean is None else tuple(float(v) for v in input_mean)
    self.input_std = None if input_std is None else tuple(float(v) for v in input_std)
    temb_dim = 4 * embedding_size
    self.fourier = GaussianFourierProjection(embedding_size, fourier_scale, rngs=rngs)
    self.temb0 = nnx.Linear(2 * embedding_size, temb_dim, rngs=rngs)
    self.temb1 = nnx.Linear(temb_dim, temb_dim, rngs=rngs)
    self.init_conv = nnx.Conv(num_channels, 16, (3, 3), padding="SAME", use_bias=False,
                              kernel_init=_conv_init,
                              conv_general_dilated=conv_lib.conv_general_dilated, rngs=rngs)
    blocks = []
    in_ch = 16
    for g, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      out_ch = width * channel_multiplier
      for i in range(blocks_per_group):
        blocks.append(WideResnetBlock(
            in_ch, out_ch, temb_dim, stride if i == 0 else 1,
            activate_before_residual=(g == 0 and i == 0), rngs=rngs))
        in_ch = out_ch
    self.blocks = nnx.List(blocks)
    self.final_norm = _group_norm(in_ch, rngs)
    self.out = nnx.Linear(in_ch, num_classes, kernel_init=_dense_out_init, rngs=rngs)

  def __call__(self, x: jax.Array, labels: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    del train, key  # no dropout; GroupNorm behaves the same in training and evaluation
    x = x.astype(jnp.float32)
    if self.input_mean is not None:
      x = x - jnp.asarray(self.input_mean, x.dtype)
    if self.input_std is not None:
      x = x / jnp.asarray(self.input_std, x.dtype)
    n = np.prod(x.shape[1:])
    x = ((x - jnp.mean(x, axis=(1, 2, 3), keepdims=True))
         / jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(n)))
    temb = self.temb0(self.fourier(jnp.log(labels)))
    temb = self.temb1(nnx.silu(temb))
    h = self.init_conv(x)
    for block in self.blocks:
      h = block(h, temb)
    h = nnx.relu(self.final_norm(h))
    h = jnp.mean(h, axis=(1, 2))
    return self.out(h).astype(jnp.float32)


class MLPClassifier(nnx.Module):
  """A noise-conditional MLP classifier for low-dimensional data.

  x: (B, D), labels: (B,) noise levels sigma > 0 -> logits (B, num_classes). The noise
  level enters as Gaussian Fourier features of log sigma (embedding_type "fourier", as
  the Wide-ResNet) or DDPM's sinusoidal features of sigma ("positional"), projected and
  added to every hidden layer's pre-activation (as models/mlp.py). The input is scaled by
  1 / sqrt(1 + sigma^2) (EDM's c_in with sigma_data = 1, Karras et al. 2022, Table 1), so
  that VE inputs, of scale sigma_max, stay O(1); for VP, sub-VP and rectified flow
  (sigma <= 1) this is a factor in [0.7, 1].
  """

  def __init__(self, dim: int, num_classes: int, *, hidden: int = 128,
               num_layers: int = 3, embedding_type: str = "fourier",
               embedding_dim: int = 64, fourier_scale: float = 16.0, rngs: nnx.Rngs):
    check_choice(embedding_type, ("fourier", "positional"),
                 "embedding_type (config.classifier.model.embedding_type)")
    self.embedding_type = embedding_type
    self.embedding_dim = embedding_dim
    if embedding_type == "fourier":
      self.fourier = GaussianFourierProjection(embedding_dim // 2, fourier_scale, rngs=rngs)
    self.temb = nnx.Linear(embedding_dim, hidden, rngs=rngs)
    self.inp = nnx.Linear(dim, hidden, rngs=rngs)
    self.hidden = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs)
                            for _ in range(num_layers)])
    self.temb_proj = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs)
                               for _ in range(num_layers)])
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, labels: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    del train, key
    if self.embedding_type == "fourier":
      emb = self.fourier(jnp.log(labels))
    else:
      emb = sinusoidal_embedding(labels, self.embedding_dim)
    emb = nnx.silu(self.temb(emb))
    c_in = jax.lax.rsqrt(1.0 + labels.astype(jnp.float32) ** 2)[:, None]
    h = self.inp(c_in * x.astype(jnp.float32))
    for layer, proj in zip(self.hidden, self.temb_proj):
      h = layer(nnx.silu(h + proj(emb)))
    return self.out(nnx.silu(h)).astype(jnp.float32)


def _num_classes(config) -> int:
  n = int(config.model.get("num_classes", 0) or 0)
  if n < 2:
    raise UserError(f"a classifier needs config.classifier.model.num_classes >= 2, "
                    f"got {n}")
  return n


@register_model("wideresnet_noise_conditional")
def build_wideresnet(config, rngs: nnx.Rngs) -> WideResnetNoiseConditional:
  """Reads config.model.{num_classes, blocks_per_group, channel_multiplier,
  embedding_size, fourier_scale, input_mean, input_std} and config.data.num_channels."""
  m = config.model
  mean, std = m.get("input_mean", None), m.get("input_std", None)
  return WideResnetNoiseConditional(
      int(config.data.num_channels), _num_classes(config),
      blocks_per_group=int(m.get("blocks_per_group", 4)),
      channel_multiplier=int(m.get("channel_multiplier", 10)),
      embedding_size=int(m.get("embedding_size", 128)),
      fourier_scale=float(m.get("fourier_scale", 16.0)),
      input_mean=None if mean is None else tuple(mean),
      input_std=None if std is None else tuple(std), rngs=rngs)


@register_model("mlp_classifier", image=False)
def build_mlp_classifier(config, rngs: nnx.Rngs) -> MLPClassifier:
  """Reads config.model.{num_classes, nf, num_layers, embedding_type, embedding_dim,
  fourier_scale} and config.data.dim."""
  m = config.model
  return MLPClassifier(
      int(config.data.dim), _num_classes(config), hidden=int(m.get("nf", 128)),
      num_layers=int(m.get("num_layers", 3)),
      embedding_type=str(m.get("embedding_type", "fourier")),
      embedding_dim=int(m.get("embedding_dim", 64)),
      fourier_scale=float(m.get("fourier_scale", 16.0)), rngs=rngs)


class ClassifierLogits(eqx.Module):
  """`logits(x, t) -> (B, num_classes)`: the classifier at the labels of time t."""

  net: NetworkFn
  sde: AbstractSDE = eqx.field(static=True)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.net(x, classifier_labels(self.sde, t))


class ClassifierLogProb(eqx.Module):
  """`log_prob(x, t) -> (B,)`: log p_t(y | x) in nats for the bound labels y (B,), the
  `log_prob_fn` of `models.classifier_guidance`. The labels are a traced leaf: new
  labels reuse a compiled sampler."""

  logits: ClassifierLogits
  class_labels: jax.Array

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(self.logits(x, t), axis=-1)
    y = jnp.broadcast_to(self.class_labels, (x.shape[0],))
    return jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def get_logit_fn(sde: AbstractSDE, classifier: nnx.Module) -> ClassifierLogits:
  """The classifier network (e.g. `models.get_model` of a classifier config, trained by
  training/classifier.py) as a function of (x, t): x (B, ...) in model space, t (B,)
  -> logits (B, num_classes)."""
  return ClassifierLogits(get_model_fn(classifier, train=False), sde)


def get_log_prob_fn(sde: AbstractSDE, classifier: nnx.Module, class_labels: jax.Array
                    ) -> ClassifierLogProb:
  """`log_prob_fn(x, t) -> (B,)` = log p_t(y | x) of a noise-conditional classifier for
  the labels y (B,) or a scalar (broadcast), for `models.classifier_guidance(model_fn,
  log_prob_fn, scale, sde)` (score_sde's `get_classifier_grad_fn` takes the gradient of
  the same sum of log-softmax entries).

  Raises UserError for a label outside [0, num_classes) (checked when the labels are
  concrete, for the classifiers of this module).
  """
  out = getattr(getattr(classifier, "backbone", classifier), "out", None)
  if out is not None and not isinstance(class_labels, jax.core.Tracer):
    n = int(out.out_features)
    bad = np.asarray(class_labels)
    bad = bad[(bad < 0) | (bad >= n)]
    if bad.size:
      raise UserError(f"class label {int(bad[0])} out of range: the classifier has {n} "
                      f"classes, labels must be in [0, {n})")
  return ClassifierLogProb(get_logit_fn(sde, classifier),
                           jnp.asarray(class_labels, jnp.int32))
