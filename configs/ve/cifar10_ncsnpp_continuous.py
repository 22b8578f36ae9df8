"""NCSN++ (cont.) on CIFAR-10 with the VE SDE (Song et al. 2021, table 3), PC sampling
with reverse diffusion + Langevin: 62.8M parameters.

Run:  python main.py --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve_cifar10_ncsnpp
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = True
  training.reduce_mean = False

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.eps = 1e-5  # score_sde (run_lib.py) samples VE down to 1e-5, VP/sub-VP to 1e-3

  config.data.centered = False

  model = config.model
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  # NCSN++: FIR resampling, a residual input pyramid, Fourier features of log sigma.
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual"
  model.progressive_combine = "sum"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  return config
