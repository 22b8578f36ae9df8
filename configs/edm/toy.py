"""EDM (Karras et al. 2022) on the 2-D checkerboard: the EDM process, preconditioning and
loss around the toy MLP, EDM's EMA half-life and learning-rate ramp-up in images, sampled
with EDM's 18-step Heun (35 evaluations). Trains on a CPU in minutes.

Run:  python main.py --config configs/edm/toy.py --workdir runs/edm_toy
Then: python main.py --config configs/edm/toy.py --workdir runs/edm_toy --mode sample
"""
from configs.default_toy import get_default_configs
from configs.edm.default_edm import edm_sampling


def get_config():
  config = get_default_configs()
  training = config.training
  training.sde = "edm"
  training.loss = "edm"
  training.P_mean = -1.2
  training.P_std = 1.2

  config.data.dataset = "checkerboard"

  model = config.model
  model.precond = "edm"
  # The checkerboard's std per coordinate is about 1.15 (uniform on [-2, 2]).
  model.sigma_data = 1.0
  model.sigma_min = 0.002
  model.sigma_max = 80.0
  # The network sees c_noise = ln(sigma) / 4, in about [-1.6, 1.1]: sinusoidal features
  # (Fourier features would take its log).
  model.embedding_type = "positional"
  # A half-life of 50 kimg (about 100 steps of 512) with EDM's ramp-up ratio, in place of
  # the toy defaults' ema_rate = 0.995 (a similar horizon once ramped up).
  model.ema_halflife_kimg = 50.0
  model.ema_rampup_ratio = 0.05

  config.optim.warmup = 0
  config.optim.lr_rampup_kimg = 100.0  # about the toy defaults' 200 warm-up steps

  edm_sampling(config.sampling)
  return config
