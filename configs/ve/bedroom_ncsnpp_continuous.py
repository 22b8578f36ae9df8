"""NCSN++ (cont.) on LSUN bedroom 256 px with the VE SDE (sigma_max = 378).

data_dir must hold the bedroom images (an image folder or .npz, see data/images.py).
Run:  python main.py --config configs/ve/bedroom_ncsnpp_continuous.py --workdir runs/ve_bedroom \
        --config.data.data_dir=/path/to/lsun_bedroom
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.eps = 1e-5  # score_sde (run_lib.py) samples VE down to 1e-5, VP/sub-VP to 1e-3

  config.data.dataset = "LSUN"
  # config.data.data_dir: a folder of LSUN bedroom images (score_sde's category
  # "bedroom"; the scene is chosen by the folder, so there is no category field).

  model = config.model
  model.name = "ncsnpp"
  model.sigma_max = 378.0
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  # High resolution: StyleGAN2-style output_skip and input_skip pyramids.
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "output_skip"
  model.progressive_input = "input_skip"
  model.progressive_combine = "sum"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  return config
