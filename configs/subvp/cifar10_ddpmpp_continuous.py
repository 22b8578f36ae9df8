"""DDPM++ (cont.) on CIFAR-10 with the sub-VP SDE (Song et al. 2021, table 2).

Run:  python main.py --config configs/subvp/cifar10_ddpmpp_continuous.py --workdir runs/subvp_cifar10_ddpmpp
"""
from configs.vp.cifar10_ddpmpp_continuous import get_config as _vp_ddpmpp_continuous


def get_config():
  config = _vp_ddpmpp_continuous()
  config.training.sde = "subvpsde"
  return config
