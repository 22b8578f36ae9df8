"""Colorization from the command line on RGB data: `--mode sample` with
config.sampling.task = "colorize" (modes/controlled_sample.py, score_sde's PC
colorizer `solvers.get_colorizer`) on a CIFAR-10 written by the test in the data set's own
binary format and read by the real loader (data/cifar10.py via config.data.data_dir).

The data: cifar-10-batches-bin/ with data_batch_1..5.bin (4 images each) and
test_batch.bin (8 images), each record 1 label byte + the 32x32x3 image in CHW order.
The images are structured (a colour gradient plus a square of another colour, colours
drawn with a fixed seed), so gray level and colour are not tied.

The model: configs/vp/cifar10_ddpmpp_continuous.py with configs/tiny.py's network fields
(nf 8, ch_mult (1,), one residual block, no attention) at 32x32 (the CIFAR-10 loader
reads its native size only), trained 50 steps (batch 8, Adam 2e-3, no warmup) by the
train mode. Sampling: Euler-Maruyama, no corrector, 20 steps, the 8 test images. Such a
network does not give good samples yet (loss 0.42; the plain sampler's outputs reach
|x| ~ 100 in [0, 1] units, and the colorizer's colour parts ~ 20), which does not matter:
the property below holds for any score function.

The property checked (score_sde's colorizer works in the orthonormal colour basis whose
first vector is (1, 1, 1) / sqrt(3) and keeps that coordinate, the gray level, known):
for every output pixel, sum(rgb) / sqrt(3) (sqrt(3) times the channel mean) equals that of
the input to float32 round-off. The round-off scales with the values the basis change
mixes, so the bound is per pixel and relative: |diff| <= 8 eps max(1, max_c |sample_c|),
eps = 2^-23 float32's machine epsilon (measured: at most 0.71 eps; 5.0e-6 in absolute
terms where |sample| reaches 115; a colorizer that lost the gray level would be off by
O(0.1) or more). The colour part (rgb minus its channel mean, the orthogonal complement
of the gray direction) is generated: it differs from the input's by a mean of 0.05 or
more and is not the gray input's zero (mean 0.05 or more; measured ~ 17 for both, the
inputs' own colour parts average 0.16).

Colorizing one-channel data (digits) is one UserError: tested in
tests/test_controlled_sampling.py (test_bad_inputs_are_one_user_error, "colorize_gray").
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from configs import tiny
from configs.vp.cifar10_ddpmpp_continuous import get_config
from data import cifar10

N_TEST, N_PER_TRAIN_FILE = 8, 4


def _main_mode(mode: str):
  """The function main.py runs for --mode `mode` (its MODES table)."""
  import main
  return main.MODES[mode]


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
  """n structured RGB images uint8 (n, 32, 32, 3): a linear colour gradient between two
  random colours, along a random direction, with a square of a third colour."""
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  out = np.empty((n, 32, 32, 3), np.uint8)
  for i in range(n):
    a, b, c = rng.uniform(0, 255, (3, 3))
    angle = rng.uniform(0, 2 * np.pi)
    s = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)
    img = (1 - s)[..., None] * a + s[..., None] * b
    top, left = rng.integers(2, 18, 2)
    img[top:top + 12, left:left + 12] = c
    out[i] = np.round(img).astype(np.uint8)
  return out


def write_cifar10(root: str) -> dict[str, np.ndarray]:
  """A tiny CIFAR-10 in its binary format under root/cifar-10-batches-bin/; returns the
  images (HWC uint8) of each split in record order."""
  rng = np.random.default_rng(0)
  folder = os.path.join(root, cifar10.FOLDER)
  os.makedirs(folder)
  written: dict[str, list[np.ndarray]] = {"train": [], "test": []}
  for split, names in cifar10.SPLIT_FILES.items():
    for name in names:
      n = N_TEST if split == "test" else N_PER_TRAIN_FILE
      images = _images(n, rng)
      labels = rng.integers(0, 10, n).astype(np.uint8)
      # One record: the label byte, then red, green, blue planes, each row by row.
      chw = images.transpose(0, 3, 1, 2).reshape(n, -1)
      with open(os.path.join(folder, name), "wb") as f:
        f.write(np.concatenate([labels[:, None], chw], axis=1).tobytes())
      written[split].append(images)
  return {split: np.concatenate(v) for split, v in written.items()}


def _config(data_dir: str):
  c = get_config()
  for field, value in tiny.TINY_IMAGE.items():
    if field != "data.image_size":  # CIFAR-10 is read at its native 32x32 only
      tiny.set_field(c, field, value)
  c.data.data_dir = data_dir
  c.training.batch_size = 8
  c.training.n_iters = 50
  c.training.n_jitted_steps = 25
  c.training.log_freq = 25
  c.training.eval_freq = 0
  c.training.snapshot_sampling = False
  c.training.snapshot_freq = 50
  c.training.snapshot_freq_for_preemption = 50
  # CIFAR-10's 5000-step warmup and 0.9999 EMA would leave the 50 steps' network at its
  # initialization (a zero score: the reverse SDE then only expands the noise).
  c.optim.warmup = 0
  c.optim.lr = 2e-3
  c.model.ema_rate = 0.9
  c.model.num_scales = 20  # sampler steps
  c.sampling.corrector = "none"
  c.eval.num_samples = N_TEST
  c.eval.batch_size = N_TEST
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir, written images) after 50 training steps of the tiny network."""
  root = str(tmp_path_factory.mktemp("cifar_colorize"))
  written = write_cifar10(os.path.join(root, "data"))
  config = _config(os.path.join(root, "data"))
  workdir = os.path.join(root, "work")
  _main_mode("train")(config, workdir)
  return config, workdir, written


def test_colorize_keeps_the_gray_level_and_generates_the_colour(trained):
  """Shapes, the picture, the inputs (the test split's first 8 images in [0, 1]), and
  the colorizer's property (module docstring: gray level kept to float32 round-off,
  colour generated)."""
  config, workdir, written = trained
  config = config.copy_and_resolve_references()
  config.sampling.task = "colorize"
  config.sampling.inputs = "eval"
  path = _main_mode("sample")(config, workdir)
  assert os.path.basename(os.path.dirname(os.path.dirname(path))) == "colorize"
  with np.load(path) as d:
    samples, inputs = d["samples"], d["inputs"]
    assert float(d["nfe"]) == 20  # Euler-Maruyama, no corrector: one call per step
  assert samples.shape == inputs.shape == (N_TEST, 32, 32, 3)
  assert np.array_equal(inputs, written["test"].astype(np.float32) / 255.0)
  assert np.all(np.isfinite(samples))

  gray = lambda x: x.astype(np.float64).sum(-1) / np.sqrt(3.0)
  colour = lambda x: x.astype(np.float64) - x.astype(np.float64).mean(-1, keepdims=True)
  # Per pixel, in units of eps max(1, max_c |sample_c|) (module docstring).
  scale = np.finfo(np.float32).eps * np.maximum(1.0, np.max(np.abs(samples), -1))
  gray_err = np.max(np.abs(gray(samples) - gray(inputs)) / scale)
  colour_diff = np.mean(np.abs(colour(samples) - colour(inputs)))
  colour_size = np.mean(np.abs(colour(samples)))
  print(f"gray max |diff| {gray_err:.2f} eps, colour mean |diff| {colour_diff:.3f}, "
        f"colour mean |c| {colour_size:.3f}")
  assert gray_err <= 8.0, gray_err
  assert colour_diff > 0.05, colour_diff
  assert colour_size > 0.05, colour_size

  from PIL import Image
  with Image.open(path.replace(".npz", ".png")) as im:
    width, height = im.size
  # Three rows (original, gray, samples) of eight 32-pixel images.
  assert width > height > 3 * 32, (width, height)
