"""Defaults for 1024 px FFHQ / CelebA-HQ runs: score_sde's configs/ve/ffhq_ncsnpp_continuous.py,
which stands alone there (its 1024 px settings differ from every other default).

Not a run config itself: configs/ve/ffhq_ncsnpp_continuous.py uses it:
  python main.py --config configs/ve/ffhq_ncsnpp_continuous.py --workdir runs/ve_ffhq_1024
"""
import ml_collections

from configs.default_lsun_configs import get_default_configs as _lsun_defaults


def get_default_configs() -> ml_collections.ConfigDict:
  config = _lsun_defaults()

  training = config.training
  training.batch_size = 8
  training.n_iters = 2400001
  training.snapshot_freq_for_preemption = 5000
  training.reduce_mean = True

  sampling = config.sampling
  sampling.snr = 0.15

  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 96

  data = config.data
  data.dataset = "FFHQ"
  data.image_size = 1024
  data.centered = False

  model = config.model
  model.sigma_min = 0.01
  model.sigma_max = 1348.0
  model.num_scales = 2000
  model.ema_rate = 0.9999
  model.dropout = 0.0
  model.embedding_type = "fourier"
  # 1024 px: a narrow, 8-level NCSN++ (nf = 16 doubling to 512 channels).
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)

  return config
