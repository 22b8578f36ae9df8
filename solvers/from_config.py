"""The one place that turns `config.sampling` into a sampler.

config.sampling.method: 'pc' (predictor-corrector, score_sde's fields predictor,
corrector, snr, n_steps_each, probability_flow, noise_removal), 'ode' (probability-flow
ODE: ode_solver, rtol, atol, or ode_steps > 0 for fixed steps; noise_removal ends with
score_sde's reverse-diffusion step at eps, or with ode_denoise_step = 'tweedie' the step
to t = 0 along E[x_0 | x_eps], for rectified flow x_eps - eps v: Euler's last step), or 'sde' (diffrax reverse-time SDE:
sde_solver, sde_steps, noise_removal).
"""
from __future__ import annotations

from typing import Callable

from sde_lib.base import AbstractSDE
from common.errors import UserError

SAMPLING_METHODS = ("pc", "ode", "sde", "fast")

# config.sampling.fast fields passed to solvers.get_fast_sampler when present.
FAST_KNOBS = ("order", "multistep", "schedule", "lower_order_final", "denoise_to_zero",
              "variant", "rho", "solver_type", "eta", "s_churn", "s_min", "s_max",
              "s_noise", "sigma_max")


def fast_sampler_kwargs(config) -> dict:
  """`method`, `steps`, `eps` and the knobs of config.sampling.fast, as the keyword
  arguments of solvers.get_fast_sampler (and of the fast inpainter and colorizer)."""
  s = config.sampling
  f = s.get("fast", None)
  if f is None:
    raise UserError("sampling.method is 'fast' but config.sampling.fast is missing")
  knobs = {k: f[k] for k in FAST_KNOBS if k in f and f[k] is not None}
  return dict(method=f.method, steps=int(f.steps), eps=float(s.get("eps", 1e-3)), **knobs)


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
    # score_sde's ODE sampler removes the noise at eps with one reverse-diffusion step
    # when sampling.noise_removal is set (its get_ode_sampler's denoise_update_fn).
    return get_ode_sampler(
        sde, shape, solver=s.ode_solver, rtol=s.rtol, atol=s.atol, eps=eps,
        denoise=bool(s.noise_removal),
        denoise_step=str(s.get("ode_denoise_step", "reverse_diffusion")),
        num_steps=steps if steps > 0 else None, trajectory_times=trajectory_times)
  if method == "sde":
    return get_sde_sampler(
        sde, shape, solver=s.get("sde_solver", "euler"),
        num_steps=int(s.get("sde_steps", sde.N)), eps=eps, denoise=s.noise_removal,
        trajectory_times=trajectory_times)
  if method == "fast":
    # 'fast': config.sampling.fast.{method, steps, order, schedule, ...}.
    from solvers.fast import get_fast_sampler
    if trajectory_times is not None:
      raise UserError("sampling.method 'fast' does not record trajectories; "
                      "use 'pc' or 'ode' for trajectory_times")
    return get_fast_sampler(sde, shape, **fast_sampler_kwargs(config))
  raise UserError(f"unknown sampling method {s.method!r} (config.sampling.method); "
                   f"choices: {', '.join(SAMPLING_METHODS)}")
