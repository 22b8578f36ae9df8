"""NCSN++ (cont.) on FFHQ 256 px with the VE SDE (sigma_max = 348).

Run:  python main.py --config configs/ve/ffhq_256_ncsnpp_continuous.py --workdir runs/ve_ffhq_256 \
        --config.data.data_dir=/path/to/ffhq_256
"""
from configs.ve.celebahq_256_ncsnpp_continuous import get_config as _celebahq_256


def get_config():
  config = _celebahq_256()
  config.data.dataset = "FFHQ"
  return config
