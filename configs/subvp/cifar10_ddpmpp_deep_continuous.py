"""DDPM++ cont. (deep) on CIFAR-10 with the sub-VP SDE: the paper's best likelihood
(2.99 bits/dim).

Run:  python main.py --config configs/subvp/cifar10_ddpmpp_deep_continuous.py --workdir runs/subvp_cifar10_ddpmpp_deep
"""
from configs.vp.cifar10_ddpmpp_deep_continuous import get_config as _vp_ddpmpp_deep


def get_config():
  config = _vp_ddpmpp_deep()
  config.training.sde = "subvpsde"
  return config
