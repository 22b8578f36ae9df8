"""NCSN++ (cont.) on CelebA-HQ 256 px with the VE SDE (sigma_max = 348).

Run:  python main.py --config configs/ve/celebahq_256_ncsnpp_continuous.py --workdir runs/ve_celebahq_256 \
        --config.data.data_dir=/path/to/celebahq_256
"""
from configs.ve.bedroom_ncsnpp_continuous import get_config as _lsun_ncsnpp


def get_config():
  config = _lsun_ncsnpp()
  config.data.dataset = "CelebAHQ"
  config.data.image_size = 256
  config.model.sigma_max = 348.0
  return config
