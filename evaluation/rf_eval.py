"""How straight a rectified flow is and how few steps it needs (Liu, Gong and Liu, ICLR
2023): the straightness S(v) (eq. 4, evaluation/straightness.py) and the NFE-versus-
quality table, n Euler steps (solvers.fixed_step_flow, uniform grid) for n in
config.eval.rf_nfe and one adaptive diffrax solve, each scored by the sliced
2-Wasserstein distance to as many exact data samples, beside the data-versus-data noise
floor; every row starts from the same prior draws, so the rows differ by their solver
alone. Needs exact samples of the data: toy data only (modes/rf_eval.py writes it).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from evaluation import plots
from evaluation.metrics import sliced_wasserstein
from evaluation.straightness import straightness
from solvers.fixed_step import fixed_step_flow, uniform_grid
from solvers.ode_sampler import get_ode_sampler

RF_EVAL_SUBDIR = "rf_eval"
DEFAULT_NFE = (1, 2, 4, 8, 16)


def eval_settings(config) -> dict[str, Any]:
  e = config.eval
  return {"batch_size": int(e.batch_size), "num_samples": int(e.num_samples),
          "nfe": tuple(int(n) for n in e.get("rf_nfe", DEFAULT_NFE)),
          "adaptive_solver": str(e.get("rf_adaptive_solver", "dopri5")),
          "straightness_steps": int(e.get("straightness_steps", 100)),
          "sw_projections": int(e.get("sw_projections", 512)),
          "rtol": float(config.sampling.get("rtol", 1e-5)),
          "atol": float(config.sampling.get("atol", 1e-5)),
          "eps": float(config.sampling.get("eps", 1e-3))}


def _batched(draw: Callable[[jax.Array], tuple[jax.Array, float]], key: jax.Array,
             num_samples: int, batch: int) -> tuple[np.ndarray, float]:
  """Concatenates draw(fold_in(key, i)) over batches: (num_samples, ...) and mean NFE."""
  out, nfes = [], []
  for i in range(-(-num_samples // batch)):
    x, nfe = draw(jax.random.fold_in(key, i))
    out.append(np.asarray(x))
    nfes.append(float(nfe))
  return np.concatenate(out)[:num_samples], float(np.mean(nfes))


def nfe_table(key: jax.Array, sde, model_fn: Callable, data: np.ndarray,
              event_shape: tuple[int, ...], *, nfe=DEFAULT_NFE,
              adaptive_solver: str | None = "dopri5", rtol: float = 1e-5,
              atol: float = 1e-5, eps: float = 1e-3, batch_size: int = 1000,
              sw_projections: int = 512, inverse_scaler: Callable = lambda x: x
              ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """Sliced Wasserstein distance to `data` (n, ...) of len(data) samples per solver.

  Rows: {"method": "euler", "steps": n, "nfe": n, "sw": float} for n in `nfe`, then
  {"method": adaptive_solver, "steps": None, "nfe": mean model evaluations per batch,
  "sw": float} (left out if adaptive_solver is None). Returns the rows and the samples
  by row name (data space).
  """
  num_samples = int(data.shape[0])
  batch = min(int(batch_size), num_samples)
  shape = (batch,) + tuple(event_shape)
  noise_key, sw_key = jax.random.split(key)
  # One projection key for every row: the rows differ by their samples only.
  score = lambda x: float(sliced_wasserstein(sw_key, x, data, sw_projections))
  rows, samples = [], {}
  for n in nfe:
    grid = uniform_grid(sde.T, 0.0, int(n))

    def draw(k, grid=grid):
      x, nfe = fixed_step_flow(sde, model_fn, sde.prior_sampling(k, shape), grid, "euler")
      return inverse_scaler(x), nfe
    x, _ = _batched(draw, noise_key, num_samples, batch)
    rows.append({"method": "euler", "steps": int(n), "nfe": int(n), "sw": score(x)})
    samples[f"euler {n}"] = x
  if adaptive_solver:
    # Same keys, so the adaptive solve starts from the Euler rows' prior draws.
    sampler = get_ode_sampler(sde, shape, solver=adaptive_solver, rtol=rtol, atol=atol,
                              eps=eps)

    def draw(k):
      x, n = sampler(k, model_fn)
      return inverse_scaler(x), n

    x, mean_nfe = _batched(draw, noise_key, num_samples, batch)
    rows.append({"method": adaptive_solver, "steps": None, "nfe": mean_nfe,
                 "sw": score(x)})
    samples[adaptive_solver] = x
  return rows, samples


def plot_nfe_vs_sw(rows: list[dict[str, Any]], floor: float, path: str,
                   title: str = "") -> str:
  """SW against NFE: the Euler rows as a line, the adaptive row as a star, the noise
  floor dashed."""
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  euler = [r for r in rows if r["method"] == "euler"]
  ax.plot([r["nfe"] for r in euler], [r["sw"] for r in euler], marker="o", label="Euler")
  for r in rows:
    if r["method"] != "euler":
      ax.plot([r["nfe"]], [r["sw"]], marker="*", markersize=12, linestyle="none",
              label=f"{r['method']} (adaptive)")
  ax.axhline(floor, color="gray", linestyle="--", label="data vs data")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("NFE")
  ax.set_ylabel("sliced Wasserstein-2")
  if title:
    ax.set_title(title)
  ax.legend()
  return plots._save(fig, path)


def flow_report(key: jax.Array, sde, model_fn: Callable,
                sample_data: Callable[[jax.Array, int], np.ndarray],
                event_shape: tuple[int, ...], settings: dict[str, Any],
                inverse_scaler: Callable = lambda x: x) -> dict[str, Any]:
  """Straightness (eq. 4), the NFE-versus-SW table and its noise floor of the flow
  `model_fn` (module docstring), with `settings` from eval_settings and exact data from
  sample_data(key, n). key is split 5 ways: straightness, table, data, floor data, and
  one unused (kept so the draws stay those of earlier versions).

  Returns {"straightness", "rows", "sw_noise_floor", "data", "samples"} (the last two:
  the exact data and the samples by row name, data space).
  """
  s = settings
  k_straight, k_table, k_data, k_floor, _ = jax.random.split(key, 5)
  straight = float(straightness(k_straight, sde, model_fn,
                                (s["batch_size"],) + tuple(event_shape),
                                s["straightness_steps"]))
  data = np.asarray(sample_data(k_data, s["num_samples"]))
  rows, samples = nfe_table(
      k_table, sde, model_fn, data, event_shape, nfe=s["nfe"],
      adaptive_solver=s["adaptive_solver"], rtol=s["rtol"], atol=s["atol"], eps=s["eps"],
      batch_size=s["batch_size"], sw_projections=s["sw_projections"],
      inverse_scaler=inverse_scaler)
  # The table's projection key (split inside nfe_table) scores the floor too.
  floor_data = np.asarray(sample_data(k_floor, s["num_samples"]))
  _, sw_key = jax.random.split(k_table)
  floor = float(sliced_wasserstein(sw_key, floor_data, data, s["sw_projections"]))
  return {"straightness": straight, "rows": rows, "sw_noise_floor": floor, "data": data,
          "samples": samples}


def print_table(step: int, report: dict[str, Any], straightness_steps: int) -> None:
  """The report as text: straightness, then NFE and SW per solver and the noise floor."""
  print(f"rectified flow at step {step}: straightness {report['straightness']:.4g} "
        f"({straightness_steps} Euler steps)")
  print(f"{'solver':>10} {'NFE':>7} {'SW2':>9}")
  for r in report["rows"]:
    label = f"euler {r['steps']}" if r["method"] == "euler" else r["method"]
    print(f"{label:>10} {r['nfe']:7.1f} {r['sw']:9.4f}")
  print(f"{'data':>10} {'':>7} {report['sw_noise_floor']:9.4f}  (noise floor)")
