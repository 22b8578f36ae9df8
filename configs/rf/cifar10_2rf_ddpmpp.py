"""2-rectified flow on CIFAR-10, DDPM++ (cont.) backbone (Liu, Gong and Liu, ICLR 2023,
sec. 3.2): velocity matching on the coupling (z, Phi_1(z)) of a trained 1-rectified flow
(the pipeline of run commands: `get_config`)."""
import ml_collections

from configs.rf.cifar10_rf_ddpmpp import get_config as _rf_config


def get_config():
  """Pipeline (the 1-RF's workdir holds the pairs):

    python main.py --config configs/rf/cifar10_rf_ddpmpp.py --workdir runs/rf_cifar10
    python main.py --config configs/rf/cifar10_2rf_ddpmpp.py --workdir runs/rf_cifar10 \\
        --mode reflow_data
    python main.py --config configs/rf/cifar10_2rf_ddpmpp.py --workdir runs/2rf_cifar10 \\
        --config.training.pairs_dir=runs/rf_cifar10
    python main.py --config configs/rf/cifar10_2rf_ddpmpp.py --workdir runs/2rf_cifar10 \\
        --mode eval --config.training.pairs_dir=runs/rf_cifar10

  Liu et al. draw 4M pairs and fine-tune the 1-RF's weights; the pairs are held in host
  memory (training/reflow.py load_pairs: 2 x 3072 float32 per pair, 24.6 kB), so the
  default here is 1M pairs (~25 GB). The 2-RF is trained from a fresh initialisation.
  """
  config = _rf_config()
  training = config.training
  training.pairs_dir = ""  # the 1-RF's workdir, on the command line
  training.rf_distill_steps = 0
  training.n_iters = 300_000

  # main.py --mode reflow_data (run on the 1-RF's workdir): solve its ODE from noise.
  config.reflow = reflow = ml_collections.ConfigDict()
  reflow.num_pairs = 1_000_000
  reflow.shard_size = 10_000
  reflow.solver = "dopri5"  # RK45, as Liu et al.'s scipy solve
  reflow.rtol = 1e-5
  reflow.atol = 1e-5
  reflow.num_steps = 0
  reflow.seed = 0

  # A straighter flow: few fixed Euler steps are the point (1 here; raise for quality).
  config.sampling.ode_solver = "euler"
  config.sampling.ode_steps = 1
  # One evaluation: Euler from t = 1 to eps = 1e-5, no final step (that would be a second
  # evaluation); x_eps differs from the t = 0 end by eps v.
  config.sampling.noise_removal = False
  config.sampling.eps = 1e-5
  return config
