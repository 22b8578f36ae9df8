"""Defaults for CIFAR-10 (32 px) runs, score_sde's configs/default_cifar10_configs.py, with
every field of the shared schema set (what is left out: `get_default_configs`). Not a run
config itself; e.g.
  python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir runs/vp_cifar10_ddpmpp"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  """The files in configs/{vp,subvp,ve,rf}/cifar10_*.py override a few fields of it; every
  field of the shared schema is set here, so overrides only name what differs.
  score_sde's model.attention_type and model.conv_size are left out: its networks never
  read them (tests/test_configs.py checks that every field here is read).
  """
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
  # > 1: parameters, optimizer state and EMA split over this many devices (a 2-D
  # mesh data x fsdp; README "Scaling out"); 1: replicated on every device.
  training.fsdp = 1
  training.reduce_mean = False

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.eps = 1e-3
  # --mode sample with config.sampling.task other than "sample": controllable generation
  # (evaluation/controlled_sample_run.py).
  sampling.task = "sample"  # sample | inpaint | colorize | class
  sampling.inputs = "eval"  # inpaint/colorize: "eval" (the test split) or an .npz path
  sampling.mask = "center"  # the region generated: center | left_half | random
  sampling.mask_path = ""  # .npz ('mask', 0/1) or .png (white = known); overrides mask
  sampling.mask_fraction = 0.5  # mask = "random": the fraction of pixels generated
  # PC inpainting/colorization: "ours" (default) or "score_sde" (its rule as written;
  # solvers/controllable.py, README "Controllable generation").
  sampling.replacement = "ours"
  sampling.class_labels = ""  # class: "" = 0..K-1 in turn, "3", "1,7"
  sampling.guidance_weight = 0.0  # classifier-free guidance w (class-conditional models)
  sampling.classifier_scale = 0.0  # > 0: classifier guidance, s grad log p_t(y | x)
  sampling.classifier_workdir = ""  # whose classifier/ (--mode train_classifier); "" = --workdir
  # sampling.method = "fast": solvers.get_fast_sampler's knobs (solvers/fast/).
  sampling.fast = fast = ml_collections.ConfigDict()
  fast.method = "dpm_solver++"  # ddim | dpm_solver | dpm_solver++ | unipc | ipndm | edm_heun
  fast.steps = 10
  fast.order = 2
  fast.multistep = True
  fast.schedule = "logSNR"  # time_uniform | logSNR | time_quadratic | edm
  fast.lower_order_final = True
  fast.denoise_to_zero = False
  fast.solver_type = "dpmsolver"
  fast.variant = "bh1"  # unipc only
  fast.eta = 0.0  # ddim only
  fast.rho = 7.0
  sampling.ode_solver = "tsit5"
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_steps = 0  # > 0: fixed-step ODE solve with this many steps

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.trace = "rademacher"  # Hutchinson-Skilling, as score_sde's bits/dim
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  # The likelihood's adaptive ODE solver (diffrax): tsit5, or dopri5 as score_sde's RK45.
  evaluate.likelihood_solver = "tsit5"
  # score_sde's bits/dim protocol (evaluation/eval_run.py): the 8-bit test data
  # dequantized once, (k + u) / 256, whatever data.uniform_dequantization (training only)
  # says; None repeats: 5 passes over the test split, 1 over train, fresh noise each.
  evaluate.bpd_dequantize = True
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
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.1
  model.embedding_type = "fourier"
  model.ema_rate = 0.9999
  model.ema_warmup = False  # True: min(ema_rate, (1 + n) / (10 + n)) (RectifiedFlow's EMA)
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
  model.init_scale = 0.0
  model.fourier_scale = 16.0
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
