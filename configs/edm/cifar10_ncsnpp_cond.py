"""EDM's cifar10-32x32-cond-ve (NVlabs/edm train.py --cond=1 --arch=ncsnpp).

Run:  python main.py --config configs/edm/cifar10_ncsnpp_cond.py --workdir runs/edm_cifar10_cond_ncsnpp \
        --config.data.data_dir=/path/to/cifar-10-batches-py
"""
from configs.edm.default_edm import get_default_configs, ncsnpp


def get_config():
  config = ncsnpp(get_default_configs())
  config.model.num_classes = 10
  return config
