"""NCSN++ on CIFAR-10 trained as SMLD: the discrete VE process with num_scales noise levels,
positional embedding of the noise-level index, output divided by sigma_i.

Run:  python main.py --config configs/ve/cifar10_ncsnpp.py --workdir runs/ve_cifar10_ncsnpp_discrete
"""
from configs.ve.cifar10_ncsnpp_continuous import get_config as _ncsnpp_continuous


def get_config():
  config = _ncsnpp_continuous()
  config.training.continuous = False
  config.model.embedding_type = "positional"
  return config
