"""VE SDE on the 2-D checkerboard: Fourier embedding of sigma, output scaled by 1/sigma.

Run:  python main.py --config configs/toy/checkerboard_vesde.py --workdir runs/checkerboard_vesde
"""
from configs.default_toy import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "vesde"
  config.data.dataset = "checkerboard"
  config.model.sigma_min = 0.01
  config.model.sigma_max = 10.0
  config.model.embedding_type = "fourier"
  config.model.scale_by_sigma = True
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  return config
