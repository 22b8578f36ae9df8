"""Writes tests/data/edm_augment_reference.npz: NVlabs/edm's own `AugmentPipe`
(training/augment.py, Karras et al. 2022, App. F.2) with the settings of its train.py
(xflip 1e8, yflip, scale, rotate_frac, aniso, translate_frac), for tests/test_edm_augment.py.

Run with the reference environment (torch, numpy), giving the path of an EDM checkout; the
authors' code is imported from there and never copied here:

  /tmp/refvenv/bin/python tests/data/make_edm_augment_reference.py --edm /tmp/edm

Every random draw the pipe makes (torch.rand, randn, randint) is recorded in order, so the
test can feed the same draws to data/edm_augment.py. Cases: p = 1 (every transform on
every image) and p = 0.12 (EDM's CIFAR-10 setting), 8 RGB images of 16 x 16 in [-1, 1]
(smooth plus noise, float32). Stored NHWC. `requests` (imported by EDM's dnnlib for
downloads only) is replaced by an empty module if absent.
"""
from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np
import torch

SETTINGS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
CASES = {"p1": 1.0, "p012": 0.12}
SHAPE = (8, 3, 16, 16)


def images() -> np.ndarray:
  rng = np.random.default_rng(0)
  yy, xx = np.meshgrid(np.linspace(-1, 1, SHAPE[2]), np.linspace(-1, 1, SHAPE[3]),
                       indexing="ij")
  smooth = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)])
  x = 0.7 * smooth[None] + 0.3 * rng.uniform(-1, 1, SHAPE)
  return x.astype(np.float32)


def run(pipe_cls, p: float, x: np.ndarray, seed: int):
  """(augmented images, labels, draws) of one call of the pipe."""
  draws = []
  originals = {name: getattr(torch, name) for name in ("rand", "randn", "randint")}

  def recorder(name):
    def fn(*args, **kwargs):
      out = originals[name](*args, **kwargs)
      draws.append(out.numpy().astype(np.float32))
      return out
    return fn

  torch.manual_seed(seed)
  for name in originals:
    setattr(torch, name, recorder(name))
  try:
    pipe = pipe_cls(p=p, **SETTINGS)
    out, labels = pipe(torch.from_numpy(x))
  finally:
    for name, fn in originals.items():
      setattr(torch, name, fn)
  return out.numpy(), labels.numpy(), draws


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--edm", required=True, help="path of an NVlabs/edm checkout")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                    "edm_augment_reference.npz"))
  args = parser.parse_args()
  sys.path.insert(0, args.edm)
  try:
    import requests  # noqa: F401
  except ImportError:
    sys.modules["requests"] = types.ModuleType("requests")
  from training.augment import AugmentPipe

  x = images()
  arrays = {"images": x.transpose(0, 2, 3, 1)}
  for i, (name, p) in enumerate(CASES.items()):
    out, labels, draws = run(AugmentPipe, p, x, seed=i)
    arrays[f"{name}_p"] = np.float64(p)
    arrays[f"{name}_out"] = out.transpose(0, 2, 3, 1)
    arrays[f"{name}_labels"] = labels
    arrays[f"{name}_ndraws"] = np.int64(len(draws))
    for j, d in enumerate(draws):
      arrays[f"{name}_draw{j}"] = d
  np.savez(args.out, **arrays)
  print(f"wrote {args.out}: " + ", ".join(
      f"{n}: {int(arrays[n + '_ndraws'])} draws" for n in CASES))


if __name__ == "__main__":
  main()
