"""The one place that turns the config into solvers: `get_sampling_fn` for
config.sampling.method (pc, ode, sde, fast) and `likelihood_solver` for the likelihood."""
from __future__ import annotations

import math
from typing import Callable

from sde_lib.base import AbstractSDE
from common.choices import check_choice
from common.errors import UserError

SAMPLING_METHODS = ("pc", "ode", "sde", "fast")

# config.sampling.fast fields passed to solvers.get_fast_sampler when present.
FAST_KNOBS = ("order", "multistep", "schedule", "lower_order_final", "denoise_to_zero",
              "variant", "rho", "solver_type", "eta", "s_churn", "s_min", "s_max",
              "s_noise", "sigma_max", "sigma_min")


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
  check_choice(method, SAMPLING_METHODS, "sampling method (config.sampling.method)")
  check_sampling_numbers(config, method)
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
  check_choice(method, SAMPLING_METHODS, "sampling method (config.sampling.method)")
  raise AssertionError(method)


def _number(config, name: str, *, low: float, open_low: bool, integer: bool = False
            ) -> None:
  value = config.sampling.get(name)
  if value is None:
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok and integer:
    ok = float(value).is_integer()
  if ok:
    value = float(value)
    ok = math.isfinite(value) and (value > low if open_low else value >= low)
  if not ok:
    raise UserError(f"config.sampling.{name} = {config.sampling.get(name)!r} must be "
                    f"{'an integer' if integer else 'a finite number'} "
                    f"{'>' if open_low else '>='} {low:g}")


def check_sampling_numbers(config, method: str) -> None:
  """The numeric config.sampling fields `method` reads, in range (UserError naming the
  field): eps > 0 (the scores of VP, sub-VP and VE diverge at t = 0), snr >= 0,
  n_steps_each >= 0, ode_steps >= 0 (0: adaptive), rtol, atol > 0."""
  _number(config, "eps", low=0.0, open_low=True)
  if method == "pc":
    _number(config, "snr", low=0.0, open_low=False)
    _number(config, "n_steps_each", low=0, open_low=False, integer=True)
  if method == "ode":
    _number(config, "ode_steps", low=0, open_low=False, integer=True)
    if not int(config.sampling.get("ode_steps", 0) or 0):
      _number(config, "rtol", low=0.0, open_low=True)
      _number(config, "atol", low=0.0, open_low=True)


def likelihood_solver(config) -> str:
  """config.eval.likelihood_solver (default tsit5), checked: the likelihood's adaptive
  diffrax solver (dopri5 is score_sde's scipy RK45 counterpart)."""
  from solvers.likelihood import LIKELIHOOD_SOLVERS
  name = str(config.eval.get("likelihood_solver", "tsit5")).lower()
  check_choice(name, LIKELIHOOD_SOLVERS, "likelihood solver (config.eval.likelihood_solver)")
  return name
