"""DDPM++ (cont.) on CIFAR-10 with the VP SDE (Song et al. 2021, table 3): 61.8M parameters.

Run:  python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir runs/vp_cifar10_ddpmpp
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vpsde"
  training.continuous = True
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"

  config.data.centered = True

  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  # DDPM++: BigGAN residual blocks, no FIR, no progressive paths, positional embedding.
  model.fir = False
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  return config
