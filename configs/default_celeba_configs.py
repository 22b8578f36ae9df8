"""Defaults for CelebA (64 px) runs, score_sde's configs/default_celeba_configs.py: the
CIFAR-10 defaults with the fields score_sde sets differently for CelebA. Not a run config
itself; configs/ve/celeba_ncsnpp.py overrides a few fields of it:
  python main.py --config configs/ve/celeba_ncsnpp.py --workdir runs/ve_celeba_ncsnpp"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
  config = _cifar10_defaults()
  config.sampling.snr = 0.17
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.data.dataset = "CELEBA"
  config.data.image_size = 64
  config.model.sigma_max = 90.0
  return config
