"""The `config.classifier` section: a noise-conditional classifier for classifier guidance,
trained by `--mode train_classifier` for the process of the config it is added to; two
presets, `toy_classifier` and `wideresnet_classifier` (usage: `with_classifier`)."""
from __future__ import annotations

import ml_collections

# CIFAR-10's per-channel mean and std of pixels in [0, 1], as score_sde's `get_logit_fn`
# normalizes the classifier's input.
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)


def _training(batch_size: int, n_iters: int, n_jitted_steps: int, log_freq: int,
              snapshot_freq: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size, n_iters=n_iters, n_jitted_steps=n_jitted_steps,
      log_freq=log_freq, snapshot_freq=snapshot_freq,
      snapshot_freq_for_preemption=snapshot_freq, keep_checkpoints=2))


def _optim(lr: float, warmup: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      optimizer="Adam", lr=lr, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=warmup,
      grad_clip=1.0))


def toy_classifier(num_classes: int, *, nf: int = 128, num_layers: int = 3,
                   n_iters: int = 3000) -> ml_collections.ConfigDict:
  """An MLP classifier on 2-D toy data: Fourier features of log sigma (scale 16)."""
  section = ml_collections.ConfigDict()
  section.model = ml_collections.ConfigDict(dict(
      name="mlp_classifier", num_classes=num_classes, nf=nf, num_layers=num_layers,
      embedding_type="fourier", embedding_dim=64, fourier_scale=16.0))
  section.ema_rate = 0.99
  section.eps = 1e-3
  section.training = _training(batch_size=512, n_iters=n_iters, n_jitted_steps=50,
                               log_freq=500, snapshot_freq=1000)
  section.optim = _optim(lr=2e-3, warmup=100)
  return section


def wideresnet_classifier(num_classes: int = 10, *, blocks_per_group: int = 4,
                          channel_multiplier: int = 10, cifar10_stats: bool = False,
                          batch_size: int = 128, n_iters: int = 100000
                          ) -> ml_collections.ConfigDict:
  """score_sde's noise-conditional Wide-ResNet (default WRN-28-10, its CIFAR-10
  classifier; depth 6 blocks_per_group + 4)."""
  section = ml_collections.ConfigDict()
  section.model = ml_collections.ConfigDict(dict(
      name="wideresnet_noise_conditional", num_classes=num_classes,
      blocks_per_group=blocks_per_group, channel_multiplier=channel_multiplier,
      embedding_size=128, fourier_scale=16.0,
      input_mean=CIFAR10_MEAN if cifar10_stats else None,
      input_std=CIFAR10_STD if cifar10_stats else None))
  section.ema_rate = 0.999
  section.eps = 1e-5
  section.training = _training(batch_size=batch_size, n_iters=n_iters, n_jitted_steps=10,
                               log_freq=500, snapshot_freq=10000)
  section.optim = _optim(lr=2e-4, warmup=1000)
  return section


def with_classifier(config: ml_collections.ConfigDict,
                    section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config with `config.classifier = section` (in place; returns config).

  From a config file:

      from configs.classifier import toy_classifier, with_classifier
      config = with_classifier(get_default_configs(), toy_classifier(num_classes=2))

  Two presets: `toy_classifier` (the "mlp_classifier" for 2-D toy mixtures) and
  `wideresnet_classifier` (score_sde's noise-conditional Wide-ResNet; the defaults are its
  CIFAR-10 demo's WRN-28-10, `cifar10_stats=True` adds that demo's channel normalization).
  """
  config.classifier = section
  return config
