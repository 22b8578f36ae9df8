"""EDM on scikit-learn's bundled 8x8 digits (no download): a small song_unet (EDM's
DDPM++ architecture) with EDM's preconditioning, loss, EMA and ramp-up, sampled with
EDM's 18-step Heun. Small enough to train on a CPU.

Run:  python main.py --config configs/edm/digits.py --workdir runs/edm_digits
Then: --mode sample (image grid).
"""
from configs.edm.default_edm import get_default_configs


def get_config():
  config = get_default_configs()
  training = config.training
  training.batch_size = 64
  training.n_iters = 2000
  training.snapshot_freq = 1000
  training.snapshot_freq_for_preemption = 500
  training.log_freq = 100
  training.eval_freq = 500
  training.n_jitted_steps = 10
  training.snapshot_sampling = False
  training.augment_p = 0.0  # a short CPU run: no augmentation

  evaluate = config.eval
  evaluate.batch_size = 64
  evaluate.num_samples = 64
  evaluate.enable_bpd = False
  evaluate.begin_ckpt = 0
  evaluate.end_ckpt = 0

  data = config.data
  data.dataset = "DIGITS"
  data.image_size = 8
  data.num_channels = 1

  model = config.model
  model.model_channels = 16
  model.channel_mult = (1, 2)
  model.num_blocks = 1
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.augment_dim = 0
  # 2000 steps of 64 = 128 kimg: half-life 5 kimg (about 80 steps), lr ramp-up 6.4 kimg
  # (100 steps).
  model.ema_halflife_kimg = 5.0
  config.optim.lr = 1e-3
  config.optim.lr_rampup_kimg = 6.4
  return config
