"""main.py run in this process (absl flags re-parsed each time): exit code and stderr."""
import contextlib
import io
import sys

import main

TINY_TOY = ("--config.model.nf=16", "--config.model.num_layers=2",
            "--config.model.embedding_dim=16", "--config.training.batch_size=32",
            "--config.training.n_jitted_steps=10", "--config.training.log_freq=10",
            "--config.training.eval_freq=0", "--compilation_cache_dir=")


def run_cli(*args: str) -> tuple[int, str]:
  """(exit code, stderr) of `python main.py *args`, in this process. config_flags reads
  sys.argv for the --config.<field> overrides and defines one flag per override, so
  sys.argv is set and the previous run's override flags removed first."""
  for name in [n for n in main.FLAGS if n.startswith("config.")]:
    delattr(main.FLAGS, name)
  main.FLAGS.unparse_flags()
  argv = ["main.py", *args]
  old_argv, sys.argv = sys.argv, argv
  err, code = io.StringIO(), 0
  try:
    with contextlib.redirect_stderr(err):
      try:
        main.main(main.parse_flags(argv))
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = old_argv
  return code, err.getvalue()
