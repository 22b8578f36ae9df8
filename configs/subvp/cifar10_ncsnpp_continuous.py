"""NCSN++ (cont.) architecture on CIFAR-10 with the sub-VP SDE: FIR resampling and a
residual input pyramid, positional embedding, no scaling by sigma.

Run:  python main.py --config configs/subvp/cifar10_ncsnpp_continuous.py --workdir runs/subvp_cifar10_ncsnpp
"""
from configs.subvp.cifar10_ddpmpp_continuous import get_config as _subvp_ddpmpp


def get_config():
  config = _subvp_ddpmpp()
  model = config.model
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.progressive_input = "residual"
  return config
