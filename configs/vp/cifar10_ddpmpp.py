"""DDPM++ on CIFAR-10 with the discrete VP process (DDPM's 1000 steps), sampled ancestrally.

Run:  python main.py --config configs/vp/cifar10_ddpmpp.py --workdir runs/vp_cifar10_ddpmpp_discrete
"""
from configs.vp.cifar10_ddpmpp_continuous import get_config as _ddpmpp_continuous


def get_config():
  config = _ddpmpp_continuous()
  config.training.continuous = False
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  return config
