"""NCSN++ cont. (deep) architecture on CIFAR-10 with the sub-VP SDE.

Run:  python main.py --config configs/subvp/cifar10_ncsnpp_deep_continuous.py --workdir runs/subvp_cifar10_ncsnpp_deep
"""
from configs.subvp.cifar10_ncsnpp_continuous import get_config as _subvp_ncsnpp


def get_config():
  config = _subvp_ncsnpp()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
