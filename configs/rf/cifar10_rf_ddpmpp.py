"""Rectified flow (Liu et al. 2023, "Flow straight and fast") on CIFAR-10 with the DDPM++
(cont.) backbone: the network predicts the velocity x_1 - x_0 at labels 999 t.

Run:  python main.py --config configs/rf/cifar10_rf_ddpmpp.py --workdir runs/rf_cifar10_ddpmpp
"""
from configs.vp.cifar10_ddpmpp_continuous import get_config as _ddpmpp_continuous


def get_config():
  config = _ddpmpp_continuous()
  config.training.sde = "rectified_flow"
  config.training.continuous = True
  config.training.reduce_mean = True
  # Rectified flow is an ODE: sample it with an adaptive solver.
  config.sampling.method = "ode"
  config.sampling.predictor = "none"
  config.sampling.corrector = "none"
  config.sampling.ode_solver = "tsit5"
  config.model.scale_by_sigma = False
  config.model.embedding_type = "positional"
  return config
