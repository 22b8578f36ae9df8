"""One short driver per `main.py --mode`: each module's `run(config, workdir)` reads the
config, calls library code and writes its results; nothing below this package imports it."""
