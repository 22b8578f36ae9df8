"""NCSNv2 on CelebA (64 px): SMLD with 500 noise levels in [0.01, 90], score_sde's settings.

Run:  python main.py --config configs/ve/ncsnv2/celeba.py --workdir runs/ncsnv2_celeba
"""
from configs.ve.ncsnv2.base import get_base_config


def get_config():
  config = get_base_config()
  config.sampling.snr = 0.128
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.data.dataset = "CELEBA"
  config.data.image_size = 64
  config.model.sigma_max = 90.0
  config.model.num_scales = 500
  return config
