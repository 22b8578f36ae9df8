"""Distillation of a rectified flow's coupling into a one-step generator (Liu, Gong and Liu,
ICLR 2023, sec. 2.3) on the 2-D two-mode mixture (the loss and the pipeline of run
commands: `get_config`)."""
from configs.toy.two_gaussians_rf import get_config as _rf_config


def get_config():
  """The velocity loss on the reflow pairs (z, x) with t = 1 only:
  || v(z, 1) - (z - x) ||^2, so that x_hat = z - v(z, 1) is a one-step sampler
  (config.training.rf_distill_steps = k trains a k-step Euler generator, t in
  {1, (k-1)/k, ..., 1/k}). Distilling the 2-rectified flow's pairs works best: they are
  nearly a straight coupling already.

    python main.py --config configs/toy/two_gaussians_rf.py --workdir runs/tg_1rf
    python main.py --config configs/toy/two_gaussians_rf.py --workdir runs/tg_1rf \\
        --mode reflow_data
    python main.py --config configs/toy/two_gaussians_2rf.py --workdir runs/tg_2rf \\
        --config.training.pairs_dir=runs/tg_1rf
    python main.py --config configs/toy/two_gaussians_2rf.py --workdir runs/tg_2rf \\
        --mode reflow_data --config.training.pairs_dir=runs/tg_1rf
    python main.py --config configs/toy/two_gaussians_distill.py --workdir runs/tg_2rf_distill \\
        --config.training.pairs_dir=runs/tg_2rf
    python main.py --config configs/toy/two_gaussians_distill.py --workdir runs/tg_2rf_distill \\
        --mode rf_eval --config.training.pairs_dir=runs/tg_2rf
  """
  config = _rf_config()
  config.training.pairs_dir = ""  # set on the command line
  config.training.rf_distill_steps = 1
  config.sampling.ode_steps = 1
  return config
