"""NCSNv2 on LSUN bedroom (128 px, ncsnv2_128): SMLD with 1086 noise levels in [0.01, 190],
score_sde's settings but with training.continuous = False actually set (score_sde's file
misspells it 'continuouse', which leaves the continuous default on).
Run: python main.py --config configs/ve/ncsnv2/bedroom.py --workdir runs/ncsnv2_bedroom"""
from configs.ve.ncsnv2.base import get_base_config


def get_config():
  config = get_base_config()
  training = config.training
  training.batch_size = 128
  training.n_iters = 2400001
  training.snapshot_freq_for_preemption = 5000

  sampling = config.sampling
  sampling.n_steps_each = 3
  sampling.snr = 0.095

  evaluate = config.eval
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 512
  evaluate.enable_sampling = True

  data = config.data
  data.dataset = "LSUN"
  # data.data_dir: a folder of LSUN bedroom images (score_sde's category "bedroom").
  data.image_size = 128

  model = config.model
  model.name = "ncsnv2_128"
  model.sigma_max = 190.0
  model.num_scales = 1086
  model.ema_rate = 0.9999
  return config
