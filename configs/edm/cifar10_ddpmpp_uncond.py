"""EDM's cifar10-32x32-uncond-vp (Karras et al. 2022; NVlabs/edm train.py --cond=0
--arch=ddpmpp --precond=edm): DDPM++ (song_unet) with EDM's preconditioning and loss,
batch 512, 200 Mimg, lr 1e-3 ramped over 10 Mimg, EMA half-life 500 kimg, dropout 0.13.

Run:  python main.py --config configs/edm/cifar10_ddpmpp_uncond.py --workdir runs/edm_cifar10_uncond_ddpmpp \
        --config.data.data_dir=/path/to/cifar-10-batches-py
"""
from configs.edm.default_edm import get_default_configs


def get_config():
  return get_default_configs()
