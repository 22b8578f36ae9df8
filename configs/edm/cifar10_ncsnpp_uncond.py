"""EDM's cifar10-32x32-uncond-ve (NVlabs/edm train.py --cond=0 --arch=ncsnpp): NCSN++
(song_unet with Fourier embedding and residual encoder), otherwise the DDPM++ preset.

Run:  python main.py --config configs/edm/cifar10_ncsnpp_uncond.py --workdir runs/edm_cifar10_uncond_ncsnpp \
        --config.data.data_dir=/path/to/cifar-10-batches-py
"""
from configs.edm.default_edm import get_default_configs, ncsnpp


def get_config():
  return ncsnpp(get_default_configs())
