"""`main.py --mode convert`: the config's data set (config.data.dataset read from
config.data.data_dir) written as ArrayRecord shards in --workdir, resumable; then train
with --config.data.data_dir=<workdir> --config.data.source=grain (README 'Data larger
than memory')."""
from __future__ import annotations

from absl import logging

from data import convert


def run(config, workdir: str) -> dict:
  metas = convert.convert(config, workdir)  # one worker process per core
  for split, meta in metas.items():
    logging.info("%s: %d images, %d shards, source fingerprint %s", split, meta.count,
                 len(meta.shards), meta.source.get("fingerprint"))
  return metas
