"""Writes tests/data/fast_sampler_reference.npz: the authors' samplers run in float64 on
exact Gaussian data, for tests/test_fast_sampler_options.py.

The authors' code is read from paths given on the command line and never copied here:
LuChengTHU/dpm-solver `dpm_solver_pytorch.py` (DPM_Solver), wl-zhao/UniPC `uni_pc.py` (UniPC),
and NVlabs/edm `generate.py` (only its `edm_sampler` function is executed, taken from the
file's syntax tree, so that the file's other imports are not needed). It needs torch (CPU)
besides this project's environment, e.g. in a separate venv whose site-packages is passed:

  python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch numpy
  .venv/bin/python tests/data/make_fast_sampler_reference.py \
      --torch_site /tmp/refvenv/lib/python3.11/site-packages \
      --dpm_solver dpm_solver_pytorch.py --unipc uni_pc.py --edm generate.py

Data N(0.5, 0.3^2 I) in 2-D, 8 samples; the model is the exact noise prediction
eps(x, t) = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2). Each process gives the solvers
its alpha, sigma, lambda and lambda's inverse, written here in float64 (VP: the authors'
NoiseScheduleVP('linear')). Rectified flow (alpha(T) = 0, lambda(T) = -inf) is outside the
authors' solvers; there the project takes one exact first-order step from T (x = alpha
x0_hat + sigma eps_hat, here alpha_1 m + sigma_1 x_T) and the reference solver runs from that
step's end with one step fewer. The `edm` schedule, which the DPM-Solver and UniPC codes do
not have, is given to them by replacing `get_time_steps` with EDM's eq. 5 in
sigma~ = sigma / alpha; the project's last step to t = 0 is their `denoise_to_zero`.
EDM's churn draws z with the project's key derivation (x_T given, key 1:
fold_in(fold_in(split(key)[1], 1), i) at step i, fold_in(split(key)[1], 2) on the step
to t = 0), so that the two samplers see the same noise.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import sys

import numpy as np

MEAN, STD, EPS = 0.5, 0.3, 1e-3
SHAPE = (8, 2)
PROCESSES = {
    "vp": dict(beta_min=0.1, beta_max=20.0),
    "subvp": dict(beta_min=0.1, beta_max=20.0),
    "ve": dict(sigma_min=0.01, sigma_max=40.0),
    "rf": {},
}


def cases() -> list[dict]:
  """The option matrix: every method, order, single- and multistep, solver type,
  schedule, lower_order_final, denoise_to_zero, churn setting and UniPC variant, spread
  over the processes (each value on every process where the reference is defined)."""
  out = []
  scheds = ["time_uniform", "logSNR", "time_quadratic", "edm"]
  for p in PROCESSES:
    # DPM-Solver and DPM-Solver++, multistep: orders x solver types x schedules; steps 6
    # (< 10: lower_order_final acts) and 12 (it does not), denoise_to_zero on some.
    for mi, method in enumerate(["dpm_solver", "dpm_solver++"]):
      for order in (1, 2, 3):
        for si, st in enumerate(["dpmsolver", "taylor"] if order > 1 else ["dpmsolver"]):
          sched = scheds[(order + si + mi) % 4]
          for steps, lof in ((6, True), (6, False), (10 if p == "rf" else 12, True)):
            dtz = sched != "edm" and (steps + order + mi) % 2 == 0
            out.append(dict(process=p, method=method, steps=steps, order=order,
                            multistep=True, solver_type=st, schedule=sched,
                            lower_order_final=lof, denoise_to_zero=dtz))
      # Singlestep (DPM-Solver-fast): undefined at alpha(T) = 0.
      if p != "rf":
        for order in (1, 2, 3):
          for st in (["dpmsolver", "taylor"] if order > 1 else ["dpmsolver"]):
            for steps in ((6, 7, 8) if order == 3 else (7,)):
              sched = scheds[(steps + order + mi) % 4]
              out.append(dict(process=p, method=method, steps=steps, order=order,
                              multistep=False, solver_type=st, schedule=sched,
                              lower_order_final=True,
                              denoise_to_zero=steps == 7 and sched != "edm"))
    # UniPC: both variants, orders 1-3, lower_order_final both ways, every schedule.
    for vi, variant in enumerate(["bh1", "bh2"]):
      for order in (1, 2, 3):
        for lof in (True, False):
          sched = scheds[(order + vi + 2 * lof) % 4]
          out.append(dict(process=p, method="unipc", steps=7, order=order, variant=variant,
                          schedule=sched, lower_order_final=lof,
                          denoise_to_zero=sched != "edm" and order == 2))
    # DDIM (eta = 0) is DPM-Solver-1.
    for sched in scheds:
      out.append(dict(process=p, method="ddim", steps=5, schedule=sched,
                      denoise_to_zero=sched == "logSNR"))
    # EDM's sampler: deterministic; rho; EDM's ImageNet churn (40, 0.05, 50: grid points
    # on both sides of [s_min, s_max]); churn everywhere including the step to 0
    # (s_min <= sigma_min); a sigma_min above the process's.
    for kw in (dict(), dict(rho=3.0),
               dict(s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003),
               dict(s_churn=10.0, s_min=0.0, s_max=float("inf"), s_noise=1.0),
               dict(s_churn=30.0, s_min=0.05, s_max=1.0, s_noise=0.0),
               dict(sigma_min=0.05)):
      for steps in (6, 9):
        out.append(dict(process=p, method="edm_heun", steps=steps, schedule="edm", **kw))
  return out


# --- the processes' (alpha, sigma, lambda) in float64 torch --------------------------
class _Schedule:
  """The duck type of NoiseScheduleVP that DPM_Solver and UniPC call."""
  T = 1.0
  total_N = 1000

  def marginal_alpha(self, t):
    return self.torch.exp(self.marginal_log_mean_coeff(t))

  def marginal_lambda(self, t):
    return self.marginal_log_mean_coeff(t) - self.torch.log(self.marginal_std(t))

  def inverse_lambda(self, lamb):
    """Bisection in float64 on the decreasing lambda(t), to 1e-15."""
    torch = self.torch
    lo = torch.full_like(lamb, 1e-12)
    hi = torch.full_like(lamb, self.T)
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      above = self.marginal_lambda(mid) > lamb
      lo = torch.where(above, mid, lo)
      hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def make_schedule(torch, dpm, process):
  if process == "vp":
    return dpm.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0,
                               dtype=torch.float64)

  class S(_Schedule):
    pass

  S.torch = torch
  if process == "subvp":
    S.marginal_log_mean_coeff = lambda self, t: -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    S.marginal_std = lambda self, t: -torch.expm1(2.0 * self.marginal_log_mean_coeff(t))
  elif process == "ve":
    S.marginal_log_mean_coeff = lambda self, t: torch.zeros_like(t)
    S.marginal_std = lambda self, t: 0.01 * (40.0 / 0.01) ** t
  else:  # rf
    S.marginal_log_mean_coeff = lambda self, t: torch.log1p(-t)
    S.marginal_std = lambda self, t: t
  return S()


def sigma_tilde(torch, ns, t):
  t = torch.as_tensor([t], dtype=torch.float64)
  return float(torch.exp(-ns.marginal_lambda(t))[0])


def t_of_sigma_tilde(torch, ns, s):
  return float(ns.inverse_lambda(torch.as_tensor([-math.log(s)], dtype=torch.float64))[0])


def edm_grid(torch, ns, t_T, t_0, n, rho):
  """EDM's eq. 5 from sigma~(t_T) to sigma~(t_0), n intervals, as times."""
  s_T, s_0 = sigma_tilde(torch, ns, t_T), sigma_tilde(torch, ns, t_0)
  i = torch.arange(n + 1, dtype=torch.float64) / n
  sig = (s_T ** (1 / rho) + i * (s_0 ** (1 / rho) - s_T ** (1 / rho))) ** rho
  ts = ns.inverse_lambda(-torch.log(sig))
  ts[0], ts[-1] = t_T, t_0
  return ts


def run_case(c, torch, dpm, unipc, edm_sampler, x_T, churn_noise):
  ns = make_schedule(torch, dpm, c["process"])
  # NCHW, as uni_pc.py's einsum expects images.
  x = torch.as_tensor(x_T, dtype=torch.float64).reshape(SHAPE[0], 1, 1, SHAPE[1])

  def noise(x, t):
    t = t.reshape(-1, 1, 1, 1).to(torch.float64)
    a = torch.exp(ns.marginal_log_mean_coeff(t))
    s = ns.marginal_std(t)
    return s * (x - a * MEAN) / (a**2 * STD**2 + s**2)

  singular = c["process"] == "rf"
  sched = c.get("schedule", "time_uniform")
  rho = c.get("rho", 7.0)
  s_max, s_min = c.get("sigma_max", 80.0), c.get("sigma_min", 0.002)
  steps = c["steps"]
  t_T, t_0 = 1.0, EPS
  if sched == "edm":
    intervals = steps - 1
    t_0 = t_of_sigma_tilde(torch, ns, s_min) if sigma_tilde(torch, ns, EPS) < s_min else EPS
  else:
    intervals = steps
  if singular:
    # The exact first-order step from T: x0_hat = m, eps_hat = x_T.
    if sched in ("logSNR", "edm"):
      t1 = t_of_sigma_tilde(torch, ns, s_max)
    elif sched == "time_uniform":
      t1 = 1.0 + (t_0 - 1.0) / intervals
    else:
      t1 = (1.0 + (math.sqrt(t_0) - 1.0) / intervals) ** 2
    a1 = 1.0 - t1
    x = a1 * MEAN + t1 * x
    t_T, intervals = t1, intervals - 1
  elif sched == "edm" and sigma_tilde(torch, ns, 1.0) > s_max:
    t_T = t_of_sigma_tilde(torch, ns, s_max)
    x = x * float(ns.marginal_std(torch.as_tensor([t_T], dtype=torch.float64))[0]) / float(
        ns.marginal_std(torch.as_tensor([1.0], dtype=torch.float64))[0])

  if c["method"] == "edm_heun":
    class Net:
      sigma_min, sigma_max = 0.0, float("inf")

      def round_sigma(self, s):
        return torch.as_tensor(s, dtype=torch.float64)

      def __call__(self, xt, sig, labels=None):  # D(x~; sigma~) = E[x0 | x~]
        return MEAN + STD**2 * (xt - MEAN) / (STD**2 + sig**2)

    a_T = float(ns.marginal_alpha(torch.as_tensor([t_T], dtype=torch.float64))[0])
    s_hi, s_lo = sigma_tilde(torch, ns, t_T), sigma_tilde(torch, ns, t_0)
    noises = list(churn_noise)
    out = edm_sampler(Net(), (x / a_T) / s_hi, num_steps=intervals + 1, sigma_min=s_lo,
                      sigma_max=s_hi, rho=rho, S_churn=c.get("s_churn", 0.0),
                      S_min=c.get("s_min", 0.0), S_max=c.get("s_max", float("inf")),
                      S_noise=c.get("s_noise", 1.0),
                      randn_like=lambda v: torch.tensor(noises.pop(0)).reshape(v.shape))
    return out.numpy().reshape(SHAPE)

  if c["method"] == "unipc":
    solver = unipc.UniPC(noise, ns, algorithm_type="data_prediction", variant=c["variant"])
    kw = {}
  else:
    algo = "dpmsolver++" if c["method"] == "dpm_solver++" else "dpmsolver"
    solver = dpm.DPM_Solver(noise, ns, algorithm_type=algo)
    kw = dict(method="multistep" if c.get("multistep", True) else "singlestep",
              solver_type=c.get("solver_type", "dpmsolver"))
  if sched == "edm":
    solver.get_time_steps = lambda skip_type, t_T, t_0, N, device: edm_grid(
        torch, ns, float(t_T), float(t_0), N, rho)
  dtz = c.get("denoise_to_zero", False) or sched == "edm"
  order = c.get("order", 1)
  if intervals == 0:  # the singular first step was the whole run
    out = x if not dtz else solver.denoise_to_zero_fn(
        x, torch.full((1,), t_0, dtype=torch.float64))
    return out.numpy().reshape(SHAPE)
  out = solver.sample(x, steps=intervals, t_start=t_T, t_end=t_0, order=min(order, intervals),
                      skip_type=sched, lower_order_final=c.get("lower_order_final", True),
                      denoise_to_zero=dtz, **kw)
  return out.numpy().reshape(SHAPE)


def load(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load_edm_sampler(path, torch):
  tree = ast.parse(open(path).read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "edm_sampler")
  ns = {"torch": torch, "np": np}
  exec(compile(ast.Module([fn], []), path, "exec"), ns)  # noqa: S102
  return ns["edm_sampler"]


def churn_noises(c):
  """The z's the project's EDMHeun draws for key 1 (see the module docstring): one per
  Heun step of its loop (from t_1 on rectified flow), then the step to t = 0."""
  import jax
  loops = c["steps"] - 1 - (c["process"] == "rf")
  with jax.enable_x64(True):
    _, loop_key = jax.random.split(jax.random.PRNGKey(1))
    k = jax.random.fold_in(loop_key, 1)
    zs = [np.asarray(jax.random.normal(jax.random.fold_in(k, i), SHAPE, np.float64))
          for i in range(loops)]
    zs.append(np.asarray(jax.random.normal(jax.random.fold_in(loop_key, 2), SHAPE,
                                           np.float64)))
  return zs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--torch_site", default=None)
  ap.add_argument("--dpm_solver", required=True)
  ap.add_argument("--unipc", required=True)
  ap.add_argument("--edm", required=True)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                 "fast_sampler_reference.npz"))
  args = ap.parse_args()
  if args.torch_site:
    sys.path.append(args.torch_site)
  import torch
  torch.set_default_dtype(torch.float64)
  dpm = load(args.dpm_solver, "dpm_solver_pytorch")
  unipc = load(args.unipc, "uni_pc")
  edm_sampler = load_edm_sampler(args.edm, torch)
  x_T = np.random.default_rng(0).standard_normal(SHAPE)
  all_cases = cases()
  outs = []
  for c in all_cases:
    zs = churn_noises(c) if c["method"] == "edm_heun" else []
    outs.append(run_case(c, torch, dpm, unipc, edm_sampler, x_T, zs))
  np.savez_compressed(args.out, x_T=x_T, outputs=np.stack(outs),
                      cases=json.dumps(all_cases))
  print(f"{len(all_cases)} cases -> {args.out}")


if __name__ == "__main__":
  main()
