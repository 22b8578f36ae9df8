"""NCSNv2 on CIFAR-10 (32 px): SMLD, 232 noise levels in [0.01, 50]; score_sde's settings.

Run:  python main.py --config configs/ve/ncsnv2/cifar10.py --workdir runs/ncsnv2_cifar10
"""
from configs.ve.ncsnv2.base import get_base_config


def get_config():
  return get_base_config()
