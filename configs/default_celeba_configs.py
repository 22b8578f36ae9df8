"""Defaults for CelebA (64 px) runs: score_sde's configs/default_celeba_configs.py.

Not a run config itself: configs/ve/celeba_ncsnpp.py overrides a few fields of it:
  python main.py --config configs/ve/celeba_ncsnpp.py --workdir runs/ve_celeba_ncsnpp
Every field of the shared schema is set here, so overrides only name what differs.
"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  # extra checkpoints so a preempted run loses little work
  training.snapshot_freq_for_preemption = 10000
  training.keep_checkpoints = 3
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5
  training.reduce_mean = False

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.17
  sampling.eps = 1e-3
  sampling.ode_solver = "tsit5"
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_steps = 0  # > 0: fixed-step ODE solve with this many steps

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = True
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.trace = "rademacher"  # Hutchinson-Skilling, as score_sde's bits/dim
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CELEBA"
  data.image_size = 64
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  data.data_dir = ""

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 90.0
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.1
  model.embedding_type = "fourier"
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.fourier_scale = 16.0
  model.conv_size = 3
  model.scale_by_sigma = False
  model.dtype = "float32"  # compute dtype; parameters are always float32

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.0
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.seed = 42
  return config
