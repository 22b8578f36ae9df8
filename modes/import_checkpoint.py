"""`main.py --mode import`: a released score_sde / score_sde_pytorch / RectifiedFlow
checkpoint written as this library's own checkpoint, so that every other mode (sample,
eval, sample_quality, train to fine-tune) works on it unchanged."""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
from flax import nnx

import models
from models import edm_import
from models.score_sde_import import _is_pth
from common.errors import UserError
from common.io import file_sha256, write_json
from training import checkpoint
from training.state import abstract_train_state, state_from_params

IMPORT_FILE = "import.json"


def import_step(path: str, config) -> int:
  """The training step of score_sde's `checkpoint_<k>` / `checkpoint_<k>.pth`: k times
  config.training.snapshot_freq (0 for any other file name)."""
  match = re.fullmatch(r"checkpoint_(\d+)(\.pth)?", os.path.basename(path))
  if not match:
    return 0
  return int(match.group(1)) * max(int(config.training.get("snapshot_freq", 0)), 0)


def import_checkpoint(config, workdir: str) -> str:
  """Imports config.eval.import_path into `workdir` (below); returns the
  checkpoint directory. Raises UserError (nothing written) for an empty import_path, a
  workdir that already holds checkpoints, and any file that does not load
  (models.load_score_sde_checkpoint: missing, truncated, disallowed pickle class, other
  architecture).

      python main.py --config configs/ve/cifar10_ncsnpp_deep_continuous.py \\
          --workdir runs/ve_deep --mode import \\
          --config.eval.import_path=exp/ve/cifar10_ncsnpp_deep_continuous/checkpoint_26

  config.eval.import_path names the file: score_sde's `checkpoint_N` (flax msgpack),
  score_sde_pytorch's / RectifiedFlow's `checkpoint_N.pth` (read without torch and without
  running pickle code; models/pth.py), or an EDM network pickle (NVlabs/edm's
  `network-snapshot-*.pkl`, an EDMPrecond around SongUNet / DhariwalUNet, for
  config.model.precond = 'edm'; models/edm_import.py, step 0). The config must describe
  the network the checkpoint was trained with (its own config under configs/): the
  file's EMA weights are loaded into `models.get_model(config)` by
  `models.load_score_sde_checkpoint` (or `edm_import.load_edm_checkpoint`), which checks
  that every parameter is filled exactly once with the right shape.

  What is written, in --workdir (which must hold no checkpoint yet):
    checkpoints/<step>/   a TrainState whose params and ema_params both hold the file's EMA
                          weights, a fresh optimizer state and the config's seed key;
                          <step> = k * config.training.snapshot_freq for a file named
                          checkpoint_<k>[.pth] (score_sde saves training step s as
                          checkpoint_<s // snapshot_freq>), so score_sde's begin_ckpt /
                          end_ckpt select it as they would in score_sde; 0 for other names.
    import.json           the source path, its format, size and sha256, and the step.

  Every check (file present and readable, format, architecture, finite values) runs before
  anything is written: a failed import leaves the workdir as it was.
  """
  path = os.path.expanduser(str(config.eval.get("import_path", "") or ""))
  if not path:
    raise UserError("--mode import needs the checkpoint file: set "
                    "--config.eval.import_path=<score_sde checkpoint_N or "
                    "score_sde_pytorch / RectifiedFlow checkpoint_N.pth>")
  existing = checkpoint.all_steps(workdir)
  if existing:
    raise UserError(f"{checkpoint.checkpoint_dir(workdir)} already holds checkpoints "
                    f"(steps {', '.join(map(str, existing))}); import into an empty "
                    "--workdir")
  # Everything that can fail on the file happens here, before the workdir is touched.
  # An EDM network pickle (NVlabs/edm's network-snapshot-*.pkl) goes through
  # models.edm_import (read without torch or running its code), everything else through
  # the score_sde importer.
  is_edm = edm_import.is_edm_pickle(path)
  if is_edm:
    net = edm_import.load_edm_checkpoint(path, config)
  else:
    net = models.load_score_sde_checkpoint(path, config)
  is_pth = not is_edm and _is_pth(path)
  fmt = "edm_pkl" if is_edm else "pth" if is_pth else "msgpack"
  graphdef, params, model_state = nnx.split(net, nnx.Param, ...)
  # Shapes only: the imported network replaces the initialisation.
  fresh = abstract_train_state(config)
  shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
  if (jax.tree.structure(fresh.params) != jax.tree.structure(params)
      or shapes(fresh.params) != shapes(params)):
    # E.g. score_sde_pytorch's ncsnv2_64 makes its third RefineBlock nf wide where
    # score_sde's JAX net and ours make it 2 nf: models.load_score_sde_checkpoint loads
    # it (into PyTorch's widths), but config.model cannot build that network, so the
    # checkpoint would not restore; refuse rather than write it.
    raise UserError(f"{path}: the imported network's parameter shapes differ from the "
                    f"network config.model builds ({config.model.name}), so the "
                    "checkpoint could not be restored by the other modes; use "
                    "models.load_score_sde_checkpoint directly for this file")
  step = import_step(path, config)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  # Training on from an import starts from the EMA weights with a fresh optimizer.
  state = state_from_params(config, fresh.graphdef, params, model_state, step=step)
  manager = checkpoint.make_manager(config, workdir)
  try:
    checkpoint.save(manager, state)
  finally:
    manager.close()
  write_json(os.path.join(workdir, IMPORT_FILE), {
      "source": os.path.abspath(path), "format": fmt,
      "size": os.path.getsize(path), "sha256": file_sha256(path), "step": step,
      "sde": str(config.training.sde), "model": str(config.model.name)})
  directory = checkpoint.checkpoint_dir(workdir)
  print(f"imported {path} ({fmt}, EMA weights) as step {step} "
        f"-> {directory}")
  return directory


run = import_checkpoint
