"""Shared settings of the NCSNv2 configs (Song & Ermon 2020) in score_sde's layout.

NCSNv2 is trained as SMLD: the discrete VE process (config.training.sde = 'vesde',
continuous = False) with num_scales geometric noise levels between sigma_min and
sigma_max, and sampled by annealed Langevin dynamics (predictor 'none', corrector 'ald').
The values are score_sde's configs/default_cifar10_configs.py with the overrides of its
configs/ve/ncsnv2/cifar10.py; celeba.py and bedroom.py change a few fields.
Not a run config itself: use cifar10.py, celeba.py or bedroom.py.
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vesde"
  training.continuous = False
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
  training.n_jitted_steps = 5
  # > 1: parameters, optimizer state and EMA split over this many devices (a 2-D
  # mesh data x fsdp; README "Scaling out"); 1: replicated on every device.
  training.fsdp = 1
  training.reduce_mean = False

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 5
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.176
  sampling.eps = 1e-5  # score_sde (run_lib.py) samples VE down to 1e-5, VP/sub-VP to 1e-3
  sampling.ode_solver = "tsit5"
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_steps = 0

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  evaluate.bpd_dequantize = True  # score_sde's bits/dim protocol (configs/default_cifar10)
  evaluate.bpd_num_repeats = ml_collections.FieldReference(None, field_type=int)
  # A network trained with the discrete losses (training.continuous = False) is evaluated
  # by the ODE sampler and the likelihood through the continuous parameterization, as
  # score_sde does (training/restore.py); False: its discrete labels everywhere.
  evaluate.discrete_as_continuous = True
  # --mode stats / sample_quality (evaluation/sample_quality_run.py, README "Sample quality")
  evaluate.inception_path = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .npz)
  evaluate.ref_stats_path = ""  # "" = this workdir's --mode stats output; or pytorch-fid's
  #                               .npz (mu, sigma) or score_sde's cifar10_stats.npz (pool_3)
  evaluate.stats_split = "train"  # the split --mode stats summarizes (score_sde: train)
  evaluate.quantize = "truncate"  # samples -> uint8: score_sde's truncation, or "round" (EDM)
  # --mode import: a released score_sde checkpoint_N or score_sde_pytorch / RectifiedFlow
  # checkpoint_N.pth (evaluation/import_run.py; README "Reproducing the papers")
  evaluate.import_path = ""

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CIFAR10"
  data.image_size = 32
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  data.data_dir = ""
  # "memory": decode the split into host memory; "grain": read it per batch (ArrayRecord
  # shards from --mode convert, or the data's own files) in worker processes
  data.source = "memory"
  data.num_workers = 2
  data.prefetch = 2

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnv2_64"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 232
  # unused by the VE process; kept so every config has score_sde's fields
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.0
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  model.interpolation = "bilinear"
  model.dtype = "float32"

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.0
  optim.optimizer = "Adam"
  optim.lr = 1e-4
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.0  # < 0: no clipping, as NCSNv2 trained

  config.seed = 42
  return config
