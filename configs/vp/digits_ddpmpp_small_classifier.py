"""configs/vp/digits_ddpmpp_small.py with a noise-conditional Wide-ResNet classifier of
the digit (score_sde's architecture at WRN-10-2: one block per group, widths 32, 64,
128) for classifier guidance on the 8x8 digits; small enough to train on a CPU.

Run:  python main.py --config configs/vp/digits_ddpmpp_small_classifier.py \\
        --workdir runs/digits_vp                          # the score model
      python main.py --config configs/vp/digits_ddpmpp_small_classifier.py \\
        --workdir runs/digits_vp --mode train_classifier  # -> runs/digits_vp/classifier
"""
from configs.classifier import wideresnet_classifier, with_classifier
from configs.vp.digits_ddpmpp_small import get_config as get_base_config


def get_config():
  section = wideresnet_classifier(num_classes=10, blocks_per_group=1,
                                  channel_multiplier=2, batch_size=64, n_iters=2000)
  section.eps = 1e-3
  # A ~100-step EMA horizon: the run is 2000 steps, and a longer one would keep much of
  # the random initial weights.
  section.ema_rate = 0.99
  section.training.snapshot_freq = 1000
  section.training.snapshot_freq_for_preemption = 500
  section.training.log_freq = 100
  section.optim.lr = 1e-3
  section.optim.warmup = 100
  return with_classifier(get_base_config(), section)
