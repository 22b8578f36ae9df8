"""Few-step samplers of the probability-flow ODE for every process: DDIM, DPM-Solver,
DPM-Solver++, UniPC, iPNDM and EDM's Heun, each one compiled `lax.scan` with exact NFE;
one module per method family, members of `base.AbstractFastSolver`, and
`get_fast_sampler` is the one place that turns a method name and its knobs into a sampler.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax

from sde_lib.base import AbstractSDE, ModelFn
from common.errors import UserError
from common.choices import check_choice, lookup
from solvers.fast.base import AbstractFastSolver, fast_sample, start_is_singular
from solvers.fast.ddim import DDIM
from solvers.fast.dpm_solver import DPMSolver, DPMSolverPP
from solvers.fast.edm_heun import EDMHeun
from solvers.fast.ipndm import IPNDM
from solvers.fast.schedules import SCHEDULES
from solvers.fast.unipc import UniPC
from solvers.nonfinite import check_finite_result

METHODS: dict[str, type[AbstractFastSolver]] = {
    cls.name: cls for cls in (DDIM, DPMSolver, DPMSolverPP, UniPC, IPNDM, EDMHeun)}
#: the order used when none is given: the reference codes' defaults.
DEFAULT_ORDERS = {"ddim": 1, "dpm_solver": 3, "dpm_solver++": 2, "unipc": 2, "ipndm": 4,
                  "edm_heun": 2}


def get_fast_sampler(sde: AbstractSDE, shape: Sequence[int], method: str, steps: int,
                     order: int | None = None, multistep: bool = True,
                     schedule: str | None = None, eps: float = 1e-3,
                     lower_order_final: bool = True, denoise_to_zero: bool = False,
                     variant: str | None = None, rho: float = 7.0,
                     solver_type: str = "dpmsolver", eta: float = 0.0,
                     s_churn: float = 0.0, s_min: float = 0.0,
                     s_max: float = float("inf"), s_noise: float = 1.0,
                     sigma_max: float = 80.0, sigma_min: float = 0.002) -> Callable:
  """A few-step sampler of the probability-flow ODE of `sde`, from T down to eps.

  Args:
    sde: the process; the model function returns its native quantity.
    shape: the batch's shape (B, ...).
    method: ddim | dpm_solver | dpm_solver++ | unipc | ipndm | edm_heun.
    steps: the number of steps; NFE = steps for all but edm_heun (2 steps - 1), plus one
      with denoise_to_zero.
    order: the method's order: ddim 1; dpm_solver, dpm_solver++, unipc 1-3; ipndm 1-4;
      edm_heun 2. Default: the reference's (3, 2, 2, 4, 2). Needs steps >= order.
    multistep: dpm_solver / dpm_solver++ only: multistep (True) or singlestep
      "DPM-Solver-fast" (False).
    schedule: time_uniform | logSNR | time_quadratic | edm (default: edm for edm_heun,
      time_uniform otherwise, as the references). `edm` spends the last of `steps` on
      EDM's step to t = 0 (x = x0_hat), so the sample is at t = 0.
    eps: the last time of the grid, 0 < eps < T.
    lower_order_final: lower the final steps' orders: dpm_solver(++) multistep only when
      its multistep run has < 10 steps (dpm_solver_pytorch.py), unipc always (uni_pc.py).
    denoise_to_zero: finish with x = x0_hat(x, eps), one more evaluation (the references'
      `denoise_to_zero`); not with schedule edm, which ends at t = 0 already.
    variant: unipc's B(h): "bh1" (default) or "bh2". Knobs of other methods (variant,
      eta, solver_type, s_churn, ...) are ignored by a method that has none.
    rho: the edm schedule's exponent (EDM's eq. 5).
    solver_type: dpm_solver(++) orders 2-3: "dpmsolver" (default) or "taylor".
    eta: ddim's stochasticity, 0 (deterministic) to 1 (ancestral).
    s_churn, s_min, s_max, s_noise: edm_heun's stochastic churn (EDM, Algorithm 2), also
      on its step to t = 0.
    sigma_max, sigma_min: the edm schedule spans sigma~ = sigma / alpha over
      [sigma_min, sigma_max] clamped to the process's [sigma~(eps), sigma~(T)] (EDM's
      0.002 and 80); starting below T, x_T is rescaled to sigma(t_0) z (EDM's `latents *
      sigma_max`). On a process with alpha(T) = 0 (rectified flow) logSNR and edm grids
      start from sigma~ = sigma_max after a first step from T (solvers/fast/base.py).

  Returns:
    `sampler(key, model_fn, x_T=None) -> (x, nfe)`: x of `shape` at eps (t = 0 with the
    edm schedule or denoise_to_zero), nfe a Python int equal to the model evaluations. x_T
    is drawn from the prior with `key` when not given.

  Raises:
    UserError: for an unknown method, schedule, variant or solver type, an order out of
      the method's range, steps < order, or a pair of process and method that is undefined.
    solvers.NonFiniteError (from the sampler): the model's output was not finite; the
      message names the first such time t.
  """
  cls = lookup(METHODS, method, "fast sampling method")
  schedule = schedule or ("edm" if method == "edm_heun" else "time_uniform")
  check_choice(schedule, SCHEDULES, "schedule")
  order = DEFAULT_ORDERS[method] if order is None else order
  _check_options(sde, cls, steps, order, schedule, eps, denoise_to_zero, rho, sigma_max,
                 sigma_min, multistep)
  knobs = dict(multistep=bool(multistep), solver_type=solver_type, eta=float(eta),
               variant=variant or "bh1", s_churn=float(s_churn), s_min=float(s_min),
               s_max=float(s_max), s_noise=float(s_noise))
  own = {f.name for f in dataclasses.fields(cls)}
  solver = cls(steps=int(steps), order=int(order), schedule=schedule, eps=float(eps),
               lower_order_final=bool(lower_order_final),
               denoise_to_zero=bool(denoise_to_zero), rho=float(rho),
               sigma_max=float(sigma_max), sigma_min=float(sigma_min),
               singular=start_is_singular(sde),
               **{k: v for k, v in knobs.items() if k in own})
  solver.check()
  shape = tuple(int(s) for s in shape)
  nfe = solver.nfe

  def sampler(key: jax.Array, model_fn: ModelFn, x_T: jax.Array | None = None):
    if x_T is not None and tuple(x_T.shape) != shape:
      raise UserError(f"x_T has shape {tuple(x_T.shape)}, the sampler's is {shape}")
    x = fast_sample(key, model_fn, x_T, solver=solver, sde=sde, shape=shape)
    check_finite_result(x, lambda m: fast_sample(key, m, x_T, solver=solver, sde=sde,
                                                 shape=shape), model_fn,
                        f"fast sampler {method}", sde.native)
    return x, nfe

  sampler.solver = solver
  return sampler


def _check_options(sde, cls, steps, order, schedule, eps, denoise_to_zero, rho, sigma_max,
                   sigma_min, multistep) -> None:
  """UserError for options get_fast_sampler does not define (one line each)."""
  lo, hi = cls.order_range
  if int(order) != order or not lo <= order <= hi:
    raise UserError(f"{cls.name}: order must be in {lo}..{hi}, got {order}")
  if int(steps) != steps or steps < max(1, order):
    raise UserError(f"{cls.name}: steps must be an integer >= order = {order}, got {steps}")
  if schedule == "edm" and steps < 2:
    raise UserError("schedule 'edm' needs steps >= 2: its last step goes to t = 0")
  if schedule == "edm" and denoise_to_zero:
    raise UserError("schedule 'edm' already ends with the step to t = 0; "
                    "set denoise_to_zero=False")
  if not 0.0 < eps < sde.T:
    raise UserError(f"eps must be in (0, T = {sde.T}), got eps={eps}")
  if not (rho > 0 and 0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
    raise UserError(f"need rho > 0 and 0 < sigma_min < sigma_max < inf, got rho={rho}, "
                    f"sigma_min={sigma_min}, sigma_max={sigma_max}")
  if not multistep and cls not in (DPMSolver, DPMSolverPP):
    raise UserError(f"multistep=False (singlestep) exists for dpm_solver and dpm_solver++ "
                    f"only, not {cls.name}")


__all__ = ["get_fast_sampler", "METHODS", "SCHEDULES", "AbstractFastSolver"]
