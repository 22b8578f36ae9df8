"""Defaults for 256 px runs (LSUN, and CelebA-HQ / FFHQ at 256 px), score_sde's
configs/default_lsun_configs.py: the CIFAR-10 defaults with the fields score_sde sets
differently for 256 px data. Not a run config itself; e.g.
  python main.py --config configs/ve/church_ncsnpp_continuous.py --workdir runs/ve_church"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
  config = _cifar10_defaults()
  training = config.training
  training.batch_size = 64
  training.n_iters = 2400001
  training.snapshot_freq_for_preemption = 5000
  config.sampling.snr = 0.075
  evaluate = config.eval
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 512
  evaluate.enable_sampling = True
  config.data.dataset = "LSUN"
  config.data.image_size = 256
  model = config.model
  model.sigma_max = 378.0
  model.num_scales = 2000
  model.dropout = 0.0
  return config
