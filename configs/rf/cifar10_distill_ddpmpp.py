"""One-step distillation of a (2-)rectified flow on CIFAR-10, DDPM++ (cont.) backbone (Liu,
Gong and Liu, ICLR 2023, sec. 2.3): the velocity loss on the flow's pairs at t = 1 only
(the loss and the run commands: `get_config`)."""
from configs.rf.cifar10_2rf_ddpmpp import get_config as _2rf_config


def get_config():
  """One-step distillation of a (2-)rectified flow on CIFAR-10, DDPM++ (cont.) backbone (Liu,
  Gong and Liu, ICLR 2023, sec. 2.3): the velocity loss on the flow's pairs (z, x) at t = 1
  only, || v(z, 1) - (z - x) ||^2, so that x_hat = z - v(z, 1) is the sample.
  (Liu et al.'s best one-step numbers use an LPIPS loss instead of this L2 one.)

    python main.py --config configs/rf/cifar10_2rf_ddpmpp.py --workdir runs/2rf_cifar10 \\
        --mode reflow_data --config.training.pairs_dir=runs/rf_cifar10
    python main.py --config configs/rf/cifar10_distill_ddpmpp.py \\
        --workdir runs/2rf_distill_cifar10 --config.training.pairs_dir=runs/2rf_cifar10

  --config.training.rf_distill_steps=k distils into a k-step Euler generator instead.
  """
  config = _2rf_config()
  config.training.rf_distill_steps = 1
  config.training.n_iters = 100_000
  config.sampling.ode_solver = "euler"
  config.sampling.ode_steps = 1
  # One evaluation: Euler from t = 1 to eps = 1e-5, no final step (that would be a second
  # evaluation); x_eps differs from the t = 0 end by eps v.
  config.sampling.noise_removal = False
  config.sampling.eps = 1e-5
  return config
