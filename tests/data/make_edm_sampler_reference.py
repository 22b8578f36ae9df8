"""Writes tests/data/edm_sampler_reference.npz: NVlabs/edm's own `edm_sampler` (generate.py,
Karras et al. 2022, Algorithm 2) run on exact Gaussian data, for tests/test_edm_samplers.py.

Run with the reference environment (torch, numpy), giving the path of an EDM checkout; the
authors' code is read from there and never copied here:

  /tmp/refvenv/bin/python tests/data/make_edm_sampler_reference.py --edm /tmp/edm

Only the `edm_sampler` function is executed, taken from generate.py's syntax tree (the
file's other imports, click, PIL, tqdm and dnnlib, are not needed). The network is a tiny
torch module implementing the exact denoiser of data N(m, s^2 I),
D(x; sigma) = m + s^2 / (s^2 + sigma^2) (x - m), evaluated in float32 as EDM's EDMPrecond
does (it casts x and sigma to float32), with sigma_min = 0 and sigma_max = inf so that
edm_sampler keeps its own 0.002 and 80. Deterministic settings (S_churn = 0): 18 steps,
rho = 7, i.e. 35 network evaluations. The file holds the latents (float32 N(0, I), from
numpy's generator with a fixed seed), the data's m and s, and the output (float64, as
edm_sampler returns it).
"""
from __future__ import annotations

import argparse
import ast
import os

import numpy as np
import torch

MEAN = np.array([0.3, -0.2, 0.0, 0.5])
STD = 0.5
SHAPE = (16, 4)
SEED = 0


def load_edm_sampler(edm_dir: str):
  """edm_sampler from <edm_dir>/generate.py, executed alone with numpy and torch."""
  path = os.path.join(edm_dir, "generate.py")
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  node = next(n for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == "edm_sampler")
  namespace = {"np": np, "torch": torch}
  exec(compile(ast.Module([node], []), path, "exec"), namespace)
  return namespace["edm_sampler"]


class ExactDenoiser(torch.nn.Module):
  """D(x; sigma) for data N(mean, std^2 I), float32 like EDM's preconditioned networks;
  counts its evaluations."""

  sigma_min = 0.0
  sigma_max = float("inf")

  def __init__(self, mean, std):
    super().__init__()
    self.mean = torch.as_tensor(mean, dtype=torch.float32)
    self.std = float(std)
    self.calls = 0

  def round_sigma(self, sigma):
    return torch.as_tensor(sigma)

  def forward(self, x, sigma, class_labels=None):
    self.calls += 1
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1)
    return self.mean + self.std**2 / (self.std**2 + sigma**2) * (x - self.mean)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--edm", required=True, help="path of an NVlabs/edm checkout")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                    "edm_sampler_reference.npz"))
  args = parser.parse_args()
  edm_sampler = load_edm_sampler(args.edm)
  latents = np.random.default_rng(SEED).standard_normal(SHAPE).astype(np.float32)
  net = ExactDenoiser(MEAN, STD)
  with torch.no_grad():
    out = edm_sampler(net, torch.from_numpy(latents), num_steps=18, sigma_min=0.002,
                      sigma_max=80, rho=7)
  np.savez(args.out, latents=latents, mean=MEAN, std=np.float64(STD),
           output=out.numpy().astype(np.float64), nfe=np.int64(net.calls),
           num_steps=np.int64(18), sigma_min=np.float64(0.002), sigma_max=np.float64(80.0),
           rho=np.float64(7.0))
  print(f"wrote {args.out}: {net.calls} network evaluations")


if __name__ == "__main__":
  main()
