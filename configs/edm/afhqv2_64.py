"""EDM's afhqv2-64x64-uncond presets (dropout 0.25; otherwise configs/edm/ffhq_64.py), on
an image folder of AFHQv2 at 64 px.

Run:  python main.py --config configs/edm/afhqv2_64.py --workdir runs/edm_afhqv2_ddpmpp \
        --config.data.data_dir=/path/to/afhqv2_64
      python main.py --config configs/edm/afhqv2_64.py:ncsnpp --workdir runs/edm_afhqv2_ncsnpp ...
"""
from configs.edm.ffhq_64 import edm_64


def get_config(arch: str = "ddpmpp"):
  return edm_64("IMAGE_FOLDER", 0.25, arch)
