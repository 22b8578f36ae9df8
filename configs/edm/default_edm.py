"""Defaults for EDM's image runs (Karras et al. 2022; NVlabs/edm train.py and
training_loop.py): the EDM process, preconditioning and loss, EDM's Adam, EMA half-life and
learning-rate ramp-up in images, and its 18-step Heun sampler. Not a run config itself; the
files beside it set the data and the network, e.g.
  python main.py --config configs/edm/cifar10_ddpmpp_uncond.py --workdir runs/edm_cifar10
"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults

# score_sde's NCSN++ fields that EDM's networks (song_unet, dhariwal_unet) do not read.
_NCSNPP_FIELDS = ("normalization", "nonlinearity", "nf", "ch_mult", "num_res_blocks",
                  "resamp_with_conv", "conditional", "fir", "fir_kernel", "skip_rescale",
                  "resblock_type", "progressive", "progressive_input", "progressive_combine",
                  "init_scale", "fourier_scale", "scale_by_sigma", "beta_min", "beta_max")


def kimg_to_steps(kimg: float, batch_size: int) -> int:
  """EDM trains until cur_nimg >= 1000 kimg: ceil(1000 kimg / batch) updates."""
  return -(-int(round(kimg * 1000)) // batch_size)


def get_default_configs() -> ml_collections.ConfigDict:
  """CIFAR-10 with EDM's train.py defaults: batch 512, 200 Mimg, lr 1e-3 ramped up over
  10 Mimg, EMA half-life 500 kimg (ramp-up ratio 0.05), dropout 0.13, Adam(0.9, 0.999,
  1e-8) without gradient clipping; EDM's augmentation with probability 0.12 (the network
  gets its 9 augment labels: augment_dim = 9); data in [-1, 1]; sampling with EDM's Heun,
  18 steps (35 evaluations) on sigma in [0.002, 80], rho = 7."""
  config = _cifar10_defaults()
  for name in _NCSNPP_FIELDS:
    del config.model[name]

  training = config.training
  training.sde = "edm"
  training.loss = "edm"
  training.P_mean = -1.2
  training.P_std = 1.2
  training.continuous = True
  training.likelihood_weighting = False
  training.reduce_mean = False  # EDM's per-example sum (training/losses.py)
  training.augment_p = 0.12  # EDM's --augment (data/edm_augment.py)
  training.batch_size = 512
  training.n_iters = kimg_to_steps(200_000, 512)  # 200 Mimg
  training.snapshot_freq = 50000
  training.snapshot_sampling = True

  edm_sampling(config.sampling)

  config.eval.quantize = "round"  # EDM's generate.py rounds samples to uint8

  data = config.data
  data.centered = True  # EDM's images / 127.5 - 1
  data.random_flip = False  # EDM's --xflip defaults to False

  model = config.model
  model.precond = "edm"
  model.sigma_data = 0.5
  model.sigma_min = 0.002
  model.sigma_max = 80.0
  model.num_scales = 1000
  model.num_classes = 0
  model.label_dropout = 0.0
  model.augment_dim = 9  # the augment labels of training.augment_p > 0
  # EDM's SongUNet, arch ddpmpp (train.py): positional embedding, standard encoder and
  # decoder, resample filter [1, 1], 128 channels x [2, 2, 2], 4 blocks, attention at 16.
  model.name = "song_unet"
  model.model_channels = 128
  model.channel_mult = (2, 2, 2)
  model.channel_mult_emb = 4
  model.num_blocks = 4
  model.attn_resolutions = (16,)
  model.dropout = 0.13
  model.embedding_type = "positional"
  model.channel_mult_noise = 1
  model.encoder_type = "standard"
  model.decoder_type = "standard"
  model.resample_filter = (1, 1)
  model.ema_rate = 0.9999  # unused: ema_halflife_kimg > 0 replaces it
  model.ema_halflife_kimg = 500.0
  model.ema_rampup_ratio = 0.05

  optim = config.optim
  optim.optimizer = "Adam"
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 0
  optim.lr_rampup_kimg = 10_000.0
  optim.grad_clip = -1.0  # EDM clips nothing (it replaces non-finite gradients instead)
  return config


def edm_sampling(sampling: ml_collections.ConfigDict) -> None:
  """EDM's deterministic sampler in config.sampling: 18 Heun steps (35 evaluations) on
  EDM's schedule, rho 7, sigma from 80 down to 0.002 (sampling.eps, sigma_min)."""
  sampling.method = "fast"
  sampling.eps = 0.002
  fast = sampling.fast
  fast.method = "edm_heun"
  fast.steps = 18
  fast.schedule = "edm"
  fast.rho = 7.0
  fast.sigma_min = 0.002
  fast.sigma_max = 80.0


def ncsnpp(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """EDM's arch ncsnpp (train.py): Fourier embedding, residual encoder, resample filter
  [1, 3, 3, 1], noise channels x 2."""
  m = config.model
  m.embedding_type = "fourier"
  m.encoder_type = "residual"
  m.decoder_type = "standard"
  m.channel_mult_noise = 2
  m.resample_filter = (1, 3, 3, 1)
  return config
