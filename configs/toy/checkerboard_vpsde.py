"""VP SDE on the 2-D checkerboard, continuous DSM, small MLP.

Run:  python main.py --config configs/toy/checkerboard_vpsde.py --workdir runs/checkerboard_vpsde
"""
from configs.default_toy import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "vpsde"
  config.data.dataset = "checkerboard"
  return config
