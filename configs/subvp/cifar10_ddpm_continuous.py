"""DDPM's U-Net on CIFAR-10 with the sub-VP SDE.

Run:  python main.py --config configs/subvp/cifar10_ddpm_continuous.py --workdir runs/subvp_cifar10_ddpm
"""
from configs.vp.ddpm.cifar10_continuous import get_config as _vp_ddpm_continuous


def get_config():
  config = _vp_ddpm_continuous()
  config.training.sde = "subvpsde"
  return config
