"""configs/edm: EDM's train.py presets as configs (loaded, never built at full size: each
network is checked abstractly by models.config_check, no parameter computed), and the
toy config's train -> sample run through main.py."""
import glob
import os

import pytest

from configs import tiny
from inprocess_cli import TINY_TOY, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDM_CONFIGS = sorted(os.path.relpath(p, REPO)
                     for p in glob.glob(os.path.join(REPO, "configs", "edm", "*.py"))
                     if not p.endswith("default_edm.py"))


def _load(rel, arg=None):
  config = tiny.load(os.path.join(REPO, rel)) if arg is None else None
  if arg is not None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("_edm_cfg", os.path.join(REPO, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
  return config


def test_presets_are_edms_train_py():
  """The numbers of NVlabs/edm train.py / training_loop.py / README for each preset."""
  c = _load("configs/edm/cifar10_ddpmpp_uncond.py")
  assert (c.training.sde, c.training.loss, c.model.precond) == ("edm", "edm", "edm")
  assert c.training.batch_size == 512 and c.training.n_iters * 512 == 200_000_000
  assert (c.training.P_mean, c.training.P_std, c.model.sigma_data) == (-1.2, 1.2, 0.5)
  assert c.optim.lr == 1e-3 and c.optim.lr_rampup_kimg == 10_000 and c.optim.warmup == 0
  assert c.model.ema_halflife_kimg == 500 and c.model.ema_rampup_ratio == 0.05
  assert c.model.dropout == 0.13 and c.optim.grad_clip < 0 and c.data.centered
  assert (c.model.name, c.model.embedding_type, c.model.encoder_type,
          c.model.channel_mult_noise, tuple(c.model.resample_filter),
          c.model.model_channels, tuple(c.model.channel_mult)) == (
              "song_unet", "positional", "standard", 1, (1, 1), 128, (2, 2, 2))
  assert c.model.num_classes == 0
  assert c.training.augment_p == 0.12 and c.model.augment_dim == 9
  assert (c.sampling.fast.method, c.sampling.fast.steps, c.sampling.fast.schedule,
          c.sampling.eps) == ("edm_heun", 18, "edm", 0.002)
  c = _load("configs/edm/cifar10_ncsnpp_cond.py")
  assert c.model.num_classes == 10 and (c.model.embedding_type, c.model.encoder_type,
                                        c.model.channel_mult_noise) == ("fourier",
                                                                        "residual", 2)
  assert tuple(c.model.resample_filter) == (1, 3, 3, 1)
  for rel, dataset, dropout in [("configs/edm/ffhq_64.py", "FFHQ", 0.05),
                                ("configs/edm/afhqv2_64.py", "IMAGE_FOLDER", 0.25)]:
    c = _load(rel, "ncsnpp")
    assert c.data.dataset == dataset and c.model.dropout == dropout
    assert c.training.batch_size == 256 and c.training.n_iters * 256 == 200_000_000
    assert c.optim.lr == 2e-4 and tuple(c.model.channel_mult) == (1, 2, 2, 2)
    assert c.training.augment_p == 0.15
    assert c.model.embedding_type == "fourier" and c.sampling.fast.steps == 40
  c = _load("configs/edm/imagenet_64_adm.py")
  assert (c.model.name, c.model.model_channels, tuple(c.model.channel_mult),
          c.model.num_blocks, tuple(c.model.attn_resolutions)) == (
              "dhariwal_unet", 192, (1, 2, 3, 4), 3, (32, 16, 8))
  assert c.model.num_classes == 1000 and c.optim.lr == 1e-4
  assert c.training.augment_p == 0 and c.model.augment_dim == 0
  assert c.training.batch_size == 4096 and c.training.n_iters == 610352  # ceil(2.5e9/4096)
  assert c.model.ema_halflife_kimg == 50_000 and c.model.dropout == 0.10
  assert (c.sampling.fast.s_churn, c.sampling.fast.s_min, c.sampling.fast.s_max,
          c.sampling.fast.s_noise, c.sampling.fast.steps) == (40, 0.05, 50, 1.003, 256)


@pytest.mark.parametrize("rel", EDM_CONFIGS)
def test_every_edm_config_passes_check_mode(rel, tmp_path):
  """--mode check validates each config as every mode does (the network's fields by its
  constructor run abstractly: nothing is computed at full size)."""
  code, err = run_cli("--config", rel, "--workdir", str(tmp_path), "--mode", "check")
  assert code == 0, err


@pytest.mark.slow
def test_toy_config_trains_and_samples(tmp_path):
  """main.py --mode train (20 steps) then --mode sample (EDM's Heun, 35 NFE) on
  configs/edm/toy.py."""
  flags = ["--config", "configs/edm/toy.py", "--workdir", str(tmp_path), *TINY_TOY,
           "--config.training.n_iters=20", "--config.training.n_jitted_steps=10",
           "--config.training.log_freq=10", "--config.training.snapshot_freq=20",
           "--config.training.eval_freq=20", "--config.eval.num_samples=16",
           "--config.eval.num_eval_points=16", "--config.eval.batch_size=16"]
  code, err = run_cli(*flags, "--mode", "train")
  assert code == 0, err
  code, err = run_cli(*flags, "--mode", "sample")
  assert code == 0, err
  assert glob.glob(os.path.join(str(tmp_path), "samples", "*", "samples.npz"))
