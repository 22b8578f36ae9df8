"""The tiny toy run of tests/test_fault_injection.py (MLP nf=16, one hidden layer, 20
steps of batch 64, a checkpoint every 5 steps), also a config file for main.py:

    python main.py --config tests/fault_config.py --workdir /tmp/w
"""
from configs.default_toy import get_default_configs


def get_config(n_iters=20, **training):
  config = get_default_configs()
  config.model.nf = 16
  config.model.num_layers = 1
  config.model.embedding_dim = 16
  config.model.ema_rate = 0.9
  config.training.update(dict(batch_size=64, n_iters=n_iters, n_jitted_steps=5,
                              log_freq=5, snapshot_freq_for_preemption=5,
                              snapshot_freq=0, keep_checkpoints=10, eval_freq=0))
  config.training.update(training)
  config.optim.warmup = 2
  config.eval.update(dict(batch_size=16, num_samples=16, num_eval_points=16,
                          rtol=1e-3, atol=1e-3, enable_loss=False))
  config.sampling.method = "ode"
  config.sampling.rtol = config.sampling.atol = 1e-3
  return config
