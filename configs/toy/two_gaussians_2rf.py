"""2-rectified flow (reflow, Liu, Gong and Liu, ICLR 2023, Algorithm 1) on the 2-D two-mode
mixture: the velocity loss on the coupling (z, Phi_1(z)) of the 1-rectified flow, which
straightens the paths (the pipeline of run commands: `get_config`)."""
from configs.toy.two_gaussians_rf import get_config as _rf_config


def get_config():
  """The full pipeline (three commands, then the evaluation):

    # 1. the 1-rectified flow on independent pairs
    python main.py --config configs/toy/two_gaussians_rf.py --workdir runs/tg_1rf
    # 2. its coupling: z ~ N(0, I) pushed through its ODE -> runs/tg_1rf/reflow_pairs-<key>/
    python main.py --config configs/toy/two_gaussians_rf.py --workdir runs/tg_1rf \\
        --mode reflow_data
    # 3. the 2-rectified flow trained on those pairs
    python main.py --config configs/toy/two_gaussians_2rf.py --workdir runs/tg_2rf \\
        --config.training.pairs_dir=runs/tg_1rf
    # straightness and NFE-versus-quality, before and after
    python main.py --config configs/toy/two_gaussians_2rf.py --workdir runs/tg_2rf \\
        --mode rf_eval --config.training.pairs_dir=runs/tg_1rf

  Repeating steps 2-3 from runs/tg_2rf gives the 3-rectified flow, and so on.
  configs/toy/two_gaussians_distill.py distils a flow's pairs into a one-step generator.
  """
  config = _rf_config()
  # Set on the command line: the previous flow's workdir (or one of its reflow_pairs-<key>/).
  config.training.pairs_dir = ""
  # A straight flow is solved by few Euler steps; sample it with 1 by default.
  config.sampling.ode_steps = 1
  return config
