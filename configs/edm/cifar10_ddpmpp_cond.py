"""EDM's cifar10-32x32-cond-vp (NVlabs/edm train.py --cond=1 --arch=ddpmpp): the
unconditional preset with the 10 class labels.

Run:  python main.py --config configs/edm/cifar10_ddpmpp_cond.py --workdir runs/edm_cifar10_cond_ddpmpp \
        --config.data.data_dir=/path/to/cifar-10-batches-py
"""
from configs.edm.default_edm import get_default_configs


def get_config():
  config = get_default_configs()
  config.model.num_classes = 10
  return config
