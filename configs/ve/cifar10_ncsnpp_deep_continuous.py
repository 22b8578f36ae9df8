"""NCSN++ cont. (deep) on CIFAR-10 with the VE SDE: the paper's best FID (2.20) and
Inception score (9.89), 8 residual blocks per resolution.

Run:  python main.py --config configs/ve/cifar10_ncsnpp_deep_continuous.py --workdir runs/ve_cifar10_ncsnpp_deep
"""
from configs.ve.cifar10_ncsnpp_continuous import get_config as _ncsnpp_continuous


def get_config():
  config = _ncsnpp_continuous()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
