"""DDPM++ cont. (deep) on CIFAR-10 with the VP SDE: 8 residual blocks per resolution.

Run:  python main.py --config configs/vp/cifar10_ddpmpp_deep_continuous.py --workdir runs/vp_cifar10_ddpmpp_deep
"""
from configs.vp.cifar10_ddpmpp_continuous import get_config as _ddpmpp_continuous


def get_config():
  config = _ddpmpp_continuous()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
