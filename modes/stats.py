"""`main.py --mode stats`: FID reference statistics of a data set split (Inception)."""
from __future__ import annotations

from modes.sample_quality import compute_stats


def run(config, workdir: str) -> str:
  return compute_stats(config, workdir)
