"""Defaults for 2-D toy data: a small MLP trained on an exactly-sampled distribution.

Run:  python main.py --config configs/default_toy.py --workdir runs/toy
Overrides come on the command line, e.g. --config.training.n_iters=500.
Files in configs/toy/ override a few fields of this one.
"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"
  training.batch_size = 512
  training.n_iters = 3000
  training.snapshot_freq = 1000
  training.snapshot_freq_for_preemption = 500
  training.keep_checkpoints = 3
  training.log_freq = 200
  training.eval_freq = 1000
  training.snapshot_sampling = False
  training.likelihood_weighting = False
  training.continuous = True
  training.reduce_mean = True
  training.n_jitted_steps = 50
  # > 1: parameters, optimizer state and EMA split over this many devices (a 2-D
  # mesh data x fsdp; README "Scaling out"); 1: replicated on every device.
  training.fsdp = 1
  # rectified flow: where training pairs come from ('independent' for 1-RF, or a
  # directory of reflow pairs for k-RF); see training/losses.py.
  training.pairs_dir = ""

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.ode_solver = "tsit5"
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_steps = 0  # > 0: fixed-step ODE solve with this many steps
  sampling.eps = 1e-3
  # --mode sample with config.sampling.task other than "sample": controllable generation
  # (evaluation/controlled_sample_run.py).
  sampling.task = "sample"  # sample | inpaint | colorize | class
  sampling.inputs = "eval"  # inpaint: "eval" (fresh draws of the data) or an .npz path
  sampling.mask = "left_half"  # the region generated: center | left_half | random
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
  # time_uniform | logSNR | time_quadratic | edm. time_quadratic: on the demo model at 10
  # NFE it put DPM-Solver++(2M) 0.0085 above the adaptive ODE against logSNR's 0.0317
  # (sliced Wasserstein, paired over 5 x 10,000 samples; BENCHMARKS.md, fast samplers).
  fast.schedule = "time_quadratic"
  fast.lower_order_final = True
  fast.denoise_to_zero = False
  fast.solver_type = "dpmsolver"
  fast.variant = "bh1"  # unipc only
  fast.eta = 0.0  # ddim only
  fast.rho = 7.0

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 0
  evaluate.end_ckpt = 0
  evaluate.batch_size = 1000
  evaluate.enable_sampling = True
  evaluate.num_samples = 2000
  evaluate.enable_loss = True
  evaluate.enable_bpd = True
  evaluate.bpd_dataset = "test"
  evaluate.num_eval_points = 2000
  evaluate.trace = "exact"
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  # The likelihood's adaptive ODE solver (diffrax): tsit5, or dopri5 as score_sde's RK45.
  evaluate.likelihood_solver = "tsit5"
  # Continuous data: the evaluation reports the NLL in nats and nats/dim (no bins to
  # dequantize, no 8-bit offset); one pass over the num_eval_points points.
  evaluate.bpd_dequantize = False
  evaluate.bpd_num_repeats = ml_collections.FieldReference(None, field_type=int)
  # A network trained with the discrete losses (training.continuous = False) is evaluated
  # by the ODE sampler and the likelihood through the continuous parameterization, as
  # score_sde does (training/restore.py); False: its discrete labels everywhere.
  evaluate.discrete_as_continuous = True

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "eight_gaussians"
  data.dim = 2
  data.centered = False
  data.uniform_dequantization = False
  data.data_dir = ""

  config.model = model = ml_collections.ConfigDict()
  model.name = "mlp"
  model.nf = 128
  model.num_layers = 3
  model.embedding_type = "positional"
  model.embedding_dim = 64
  model.fourier_scale = 16.0
  model.scale_by_sigma = False
  model.dropout = 0.0
  model.dtype = "float32"
  # EMA horizon ~200 steps: toy runs are a few thousand steps long, and a longer horizon
  # would keep a sizeable share of the random initial weights in the EMA.
  model.ema_rate = 0.995
  model.ema_warmup = False  # True: min(ema_rate, (1 + n) / (10 + n)) (RectifiedFlow's EMA)
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.sigma_min = 0.01
  model.sigma_max = 10.0
  model.num_scales = 1000

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 2e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 200
  optim.grad_clip = 1.0

  config.seed = 42
  return config


def get_config() -> ml_collections.ConfigDict:
  return get_default_configs()
