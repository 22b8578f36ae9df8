"""DDPM's U-Net (Ho et al. 2020) trained with the continuous VP SDE on CIFAR-10: 35.7M
parameters (35,218,947 trainable).

Run:  python main.py --config configs/vp/ddpm/cifar10_continuous.py --workdir runs/vp_cifar10_ddpm_cont
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
  model.name = "ddpm"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.embedding_type = "positional"
  return config
