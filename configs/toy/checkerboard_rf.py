"""1-rectified flow on the 2-D checkerboard: velocity matching, ODE sampling.

Run:  python main.py --config configs/toy/checkerboard_rf.py --workdir runs/checkerboard_rf
"""
from configs.default_toy import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "rectified_flow"
  config.data.dataset = "checkerboard"
  config.sampling.method = "ode"
  config.sampling.ode_solver = "euler"
  config.sampling.ode_steps = 100
  return config
