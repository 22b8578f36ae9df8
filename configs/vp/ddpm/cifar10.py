"""DDPM (Ho et al. 2020) on CIFAR-10: the discrete VP process, ancestral sampling.

Run:  python main.py --config configs/vp/ddpm/cifar10.py --workdir runs/vp_cifar10_ddpm
"""
from configs.vp.ddpm.cifar10_continuous import get_config as _ddpm_continuous


def get_config():
  config = _ddpm_continuous()
  config.training.continuous = False
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  return config
