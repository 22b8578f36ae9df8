"""NCSN++ (cont.) on FFHQ 1024 px with the VE SDE (sigma_max = 1348, 2000 noise scales).

Run:  python main.py --config configs/ve/ffhq_ncsnpp_continuous.py --workdir runs/ve_ffhq_1024 \
        --config.data.data_dir=/path/to/ffhq_1024
"""
from configs.default_ffhq_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = True
  training.likelihood_weighting = False

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.eps = 1e-5  # score_sde (run_lib.py) samples VE down to 1e-5, VP/sub-VP to 1e-3
  sampling.probability_flow = False

  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.resamp_with_conv = True
  model.conditional = True
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
