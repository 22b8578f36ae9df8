"""NCSN++ (cont.) on LSUN church_outdoor 256 px with the VE SDE (sigma_max = 380).

Run:  python main.py --config configs/ve/church_ncsnpp_continuous.py --workdir runs/ve_church \
        --config.data.data_dir=/path/to/lsun_church_outdoor
"""
from configs.ve.bedroom_ncsnpp_continuous import get_config as _bedroom


def get_config():
  config = _bedroom()
  # config.data.data_dir: a folder of LSUN church_outdoor images (score_sde's category).
  config.model.sigma_max = 380.0
  return config
