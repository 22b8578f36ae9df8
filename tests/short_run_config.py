"""The 20-step tiny toy VP run of tests/test_restore.py and tests/test_monitor.py (EMA 0.9,
batch 32, checkpoints every 10 steps, held-out loss every 10), also a config file for
main.py: `python main.py --config tests/short_run_config.py --workdir /tmp/w`."""
from configs import tiny
from configs.default_toy import get_default_configs


def get_config(**training):
  config = tiny.shrink(get_default_configs())
  config.model.ema_rate = 0.9
  config.training.update(dict(batch_size=32, n_iters=20, n_jitted_steps=10, log_freq=10,
                              snapshot_freq=20, snapshot_freq_for_preemption=10,
                              eval_freq=10))
  config.training.update(training)
  return config
