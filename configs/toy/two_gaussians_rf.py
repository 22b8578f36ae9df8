"""1-rectified flow from N(0, I) to a two-mode mixture in 2-D (data/toy.py 'two_gaussians':
modes at (+-2, 0), std 0.3), the first stage of reflow (Liu, Gong and Liu, ICLR 2023).

Run:  python main.py --config configs/toy/two_gaussians_rf.py --workdir runs/tg_1rf
Then: python main.py --config configs/toy/two_gaussians_rf.py --workdir runs/tg_1rf \\
        --mode rf_eval     # straightness and the NFE-versus-sliced-Wasserstein table
The next stages are configs/toy/two_gaussians_2rf.py and two_gaussians_distill.py.
"""
import ml_collections

from configs.default_toy import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "rectified_flow"
  config.training.n_iters = 5000
  config.training.rf_distill_steps = 0  # > 0: distil into a k-step generator (pairs only)
  config.data.dataset = "two_gaussians"
  config.sampling.method = "ode"
  config.sampling.ode_solver = "euler"
  config.sampling.ode_steps = 100

  # main.py --mode reflow_data: the coupling (z, x) of this flow (training/reflow.py).
  config.reflow = reflow = ml_collections.ConfigDict()
  reflow.num_pairs = 50000
  reflow.shard_size = 10000
  reflow.solver = "dopri5"
  reflow.rtol = 1e-5
  reflow.atol = 1e-5
  reflow.num_steps = 0  # > 0: fixed Euler-grid steps of `solver` instead of adaptive
  reflow.seed = 0
  # main.py --mode rf_eval (evaluation/rf_eval.py).
  config.eval.batch_size = 2000
  config.eval.num_samples = 4000
  config.eval.rf_nfe = (1, 2, 4, 8, 16)
  config.eval.rf_adaptive_solver = "dopri5"
  config.eval.straightness_steps = 100
  return config
