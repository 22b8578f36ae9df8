"""The one place that turns `config.sampling` into a sampler.

config.sampling.method: 'pc' (predictor-corrector, score_sde's fields predictor,
corrector, snr, n_steps_each, probability_flow, noise_removal), 'ode' (diffrax
probability-flow ODE: ode_solver, rtol, atol, or ode_steps > 0 for fixed steps), or 'sde'
(diffrax reverse-time SDE: sde_solver, sde_steps).
"""
from __future__ import annotations

from typing import Callable

from sde_lib.base import AbstractSDE

SAMPLING_METHODS = ("pc", "ode", "sde")


def get_sampling_fn(config, sde: AbstractSDE, shape: tuple[int, ...],
                    method: str | None = None, trajectory_times=None) -> Callable:
  """`sampler(key, model_fn) -> (x, nfe)` as configured; shape includes the batch."""
  from solvers.ode_sampler import get_ode_sampler
  from solvers.pc_sampler import get_pc_sampler
  from solvers.sde_sampler import get_sde_sampler

  s = config.sampling
  method = (method or s.method).lower()
  eps = float(s.get("eps", 1e-3))
  if method == "pc":
    return get_pc_sampler(
        sde, shape, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
        n_steps=s.n_steps_each, probability_flow=s.probability_flow,
        denoise=s.noise_removal, eps=eps, trajectory_times=trajectory_times)
  if method == "ode":
    steps = int(s.get("ode_steps", 0))
    return get_ode_sampler(
        sde, shape, solver=s.ode_solver, rtol=s.rtol, atol=s.atol, eps=eps,
        denoise=False, num_steps=steps if steps > 0 else None,
        trajectory_times=trajectory_times)
  if method == "sde":
    return get_sde_sampler(
        sde, shape, solver=s.get("sde_solver", "euler"),
        num_steps=int(s.get("sde_steps", sde.N)), eps=eps, denoise=s.noise_removal,
        trajectory_times=trajectory_times)
  raise ValueError(f"unknown sampling method {s.method!r} (config.sampling.method); "
                   f"choices: {', '.join(SAMPLING_METHODS)}")
