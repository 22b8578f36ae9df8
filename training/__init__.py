"""Training: losses, train state with EMA, the compiled step, the loop, checkpoints."""
