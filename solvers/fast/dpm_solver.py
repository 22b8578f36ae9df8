"""DPM-Solver (Lu et al. 2022; noise prediction) and DPM-Solver++ (Lu et al. 2022b; data
prediction), multistep and singlestep, as `dpm_solver_pytorch.py` defines them.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from common.choices import check_choice
from common.errors import UserError
from solvers.fast import schedules as schedules_lib
from solvers.fast.base import (AbstractFastSolver, alpha_sigma_at, bmul, multistep_scan,
                               no_replace, point_coeffs, warmup_orders)

SOLVER_TYPES = ("dpmsolver", "taylor")


def singlestep_orders(steps: int, order: int) -> list[int]:
  """The orders of DPM-Solver-fast's steps for a budget of `steps` evaluations."""
  if order == 3:
    k = steps // 3 + 1
    if steps % 3 == 0:
      return [3] * (k - 2) + [2, 1]
    if steps % 3 == 1:
      return [3] * (k - 1) + [1]
    return [3] * (k - 1) + [2]
  if order == 2:
    if steps % 2 == 0:
      return [2] * (steps // 2)
    return [2] * (steps // 2) + [1]
  return [1] * steps


@dataclasses.dataclass(frozen=True)
class _DPMSolverBase(AbstractFastSolver):
  """The steps of DPM-Solver and DPM-Solver++.

  With h = lambda_t - lambda_s, the first-order steps are
      noise (DPM-Solver-1):   x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_hat_s,
      data (DPM-Solver++-1):  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0_hat_s,
  both equal to DDIM. Orders 2 and 3 add finite-difference terms in lambda (the reference's
  `multistep_dpm_solver_{second,third}_update` and `singlestep_dpm_solver_{second,third}_update`,
  solver_type 'dpmsolver' (default) or 'taylor'; order 3 has one form).

  multistep=True: NFE = steps; the first order - 1 steps warm up with orders 1, 2; with
  lower_order_final the reference lowers the final steps' orders (min(order, steps + 1 - k)
  at step k) only when the multistep run has fewer than 10 steps (the "lower_order_final and
  steps < 10" of its `sample`).
  multistep=False: "DPM-Solver-fast", `steps` model evaluations split into singlestep
  steps of orders 3, ..., 3, 2, 1 as `get_orders_and_timesteps_for_singlestep_solver`; the
  outer times are the schedule's grid at the cumulative orders (for logSNR, its own uniform
  grid of K steps), and each step's intermediate points are the schedule's points between
  its ends, r1, r2 their fractions of h in lambda (the reference's `sample(method=
  'singlestep')`). lower_order_final does not apply to it.
  """
  multistep: bool = True
  solver_type: str = "dpmsolver"

  order_range: ClassVar[tuple[int, int]] = (1, 3)
  #: True: data prediction (DPM-Solver++), False: noise prediction (DPM-Solver).
  data_prediction: ClassVar[bool] = False

  def check(self) -> None:
    check_choice(self.solver_type, SOLVER_TYPES, f"{self.name} solver_type")
    if not self.multistep and self.singular:
      raise UserError(
          f"{self.name} with multistep=False is undefined for a process with alpha(T) = 0 "
          f"(rectified flow): its intermediate points are placed by lambda, and "
          f"lambda(T) = -inf; use multistep=True")

  def interval_nfe(self, n: int, last: bool) -> int:
    return n

  # --- one-step formulas (the reference's, on (alpha, sigma, lambda)) -----------------
  def _first(self, x, m, s, t):
    a_s, sg_s, l_s = s
    a_t, sg_t, l_t = t
    h = l_t - l_s
    if self.data_prediction:
      return bmul(sg_t / sg_s, x) - bmul(a_t * jnp.expm1(-h), m)
    return bmul(a_t / a_s, x) - bmul(sg_t * jnp.expm1(h), m)

  # --- multistep ------------------------------------------------------------------------
  def _ms1(self, x, hist, hl, s, t):
    return self._first(x, hist[0], s, t)

  def _ms2(self, x, hist, hl, s, t):
    a_t, sg_t, l_t = t
    h = l_t - s[2]
    r0 = (s[2] - hl[1]) / h
    d1 = bmul(1.0 / r0, hist[0] - hist[1])
    base = self._first(x, hist[0], s, t)
    if self.data_prediction:
      phi1 = jnp.expm1(-h)
      if self.solver_type == "dpmsolver":
        return base - bmul(0.5 * a_t * phi1, d1)
      return base + bmul(a_t * (phi1 / h + 1.0), d1)
    phi1 = jnp.expm1(h)
    if self.solver_type == "dpmsolver":
      return base - bmul(0.5 * sg_t * phi1, d1)
    return base - bmul(sg_t * (phi1 / h - 1.0), d1)

  def _ms3(self, x, hist, hl, s, t):
    a_t, sg_t, l_t = t
    h = l_t - s[2]
    h0, h1 = s[2] - hl[1], hl[1] - hl[2]
    r0, r1 = h0 / h, h1 / h
    d1_0 = bmul(1.0 / r0, hist[0] - hist[1])
    d1_1 = bmul(1.0 / r1, hist[1] - hist[2])
    d1 = d1_0 + bmul(r0 / (r0 + r1), d1_0 - d1_1)
    d2 = bmul(1.0 / (r0 + r1), d1_0 - d1_1)
    base = self._first(x, hist[0], s, t)
    if self.data_prediction:
      phi1 = jnp.expm1(-h)
      phi2 = phi1 / h + 1.0
      phi3 = phi2 / h - 0.5
      return base + bmul(a_t * phi2, d1) - bmul(a_t * phi3, d2)
    phi1 = jnp.expm1(h)
    phi2 = phi1 / h - 1.0
    phi3 = phi2 / h - 0.5
    return base - bmul(sg_t * phi2, d1) - bmul(sg_t * phi3, d2)

  # --- singlestep -----------------------------------------------------------------------
  def _pick(self, pred):
    return pred[0] if self.data_prediction else pred[1]

  def _ss(self, order, sde, predict, x, s, t, r1, r2):
    """One singlestep step of `order` from s to t; s, t = (time, alpha, sigma, lambda)."""
    ts_, a_s, sg_s, l_s = s
    _, a_t, sg_t, l_t = t
    h = l_t - l_s
    m_s = self._pick(predict(x, ts_))
    if order == 1:
      return self._first(x, m_s, s[1:], t[1:])

    def point(r):
      lam = l_s + r * h
      tt = sde.t_from_log_snr(lam)
      a, sg = alpha_sigma_at(sde, tt)
      return tt, a, sg, lam

    dp = self.data_prediction
    # A step from s to an intermediate point, first order: the same formula as _first.
    def first_to(pt, m):
      return self._first(x, m, (a_s, sg_s, l_s), pt[1:])

    p1 = point(r1)
    m_s1 = self._pick(predict(first_to(p1, m_s), p1[0]))
    base = self._first(x, m_s, (a_s, sg_s, l_s), (a_t, sg_t, l_t))
    if dp:
      phi1 = jnp.expm1(-h)
    else:
      phi1 = jnp.expm1(h)
    if order == 2:
      if dp:
        if self.solver_type == "dpmsolver":
          return base - bmul((0.5 / r1) * a_t * phi1, m_s1 - m_s)
        return base + bmul((1.0 / r1) * a_t * (phi1 / h + 1.0), m_s1 - m_s)
      if self.solver_type == "dpmsolver":
        return base - bmul((0.5 / r1) * sg_t * phi1, m_s1 - m_s)
      return base - bmul((1.0 / r1) * sg_t * (phi1 / h - 1.0), m_s1 - m_s)
    # order 3
    p2 = point(r2)
    _, a_s2, sg_s2, _ = p2
    if dp:
      phi22 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
      x_s2 = first_to(p2, m_s) + bmul(r2 / r1 * a_s2 * phi22, m_s1 - m_s)
      phi2 = phi1 / h + 1.0
    else:
      phi22 = jnp.expm1(r2 * h) / (r2 * h) - 1.0
      x_s2 = first_to(p2, m_s) - bmul(r2 / r1 * sg_s2 * phi22, m_s1 - m_s)
      phi2 = phi1 / h - 1.0
    m_s2 = self._pick(predict(x_s2, p2[0]))
    phi3 = phi2 / h - 0.5
    # singlestep_dpm_solver_third_update: data  + alpha_t phi_2 D1 - alpha_t phi_3 D2,
    #                                     noise - sigma_t phi_2 D1 - sigma_t phi_3 D2.
    c2, c3 = (a_t, a_t) if dp else (-sg_t, sg_t)
    if self.solver_type == "dpmsolver":
      return base + bmul((1.0 / r2) * c2 * phi2, m_s2 - m_s)
    d1_0 = bmul(1.0 / r1, m_s1 - m_s)
    d1_1 = bmul(1.0 / r2, m_s2 - m_s)
    d1 = bmul(1.0 / (r2 - r1), bmul(r2, d1_0) - bmul(r1, d1_1))
    d2 = bmul(2.0 / (r2 - r1), d1_1 - d1_0)
    return base + bmul(c2 * phi2, d1) - bmul(c3 * phi3, d2)

  def _singlestep(self, sde, predict, x, ts, replace=no_replace):
    n = ts.shape[0] - 1
    orders = singlestep_orders(n, self.order)
    sched = schedules_lib.SCHEDULES[self.schedule]
    if self.schedule == "logSNR":
      outer = sched(sde, ts[0], ts[-1], len(orders), rho=self.rho, dtype=x.dtype)
    else:
      outer = ts[np.cumsum([0] + orders)]
    # Each step's intermediate points: the schedule between its ends, r = lambda fraction.
    r1s, r2s = [], []
    for k, o in enumerate(orders):
      inner = sched(sde, outer[k], outer[k + 1], o, rho=self.rho, dtype=x.dtype)
      lam_in = sde.log_snr(inner)
      hh = lam_in[-1] - lam_in[0]
      r1s.append((lam_in[1] - lam_in[0]) / hh if o >= 2 else jnp.asarray(0.5, x.dtype))
      r2s.append((lam_in[2] - lam_in[0]) / hh if o >= 3 else jnp.asarray(1.0, x.dtype))
    alpha, sigma, lam = point_coeffs(sde, outer)
    branches = [
        (lambda o: lambda x, s, t, r1, r2: self._ss(o, sde, predict, x, s, t, r1, r2))(o)  # noqa: B023
        for o in (1, 2, 3)]

    def body(x, inp):
      k, o, r1, r2 = inp
      s = (outer[k], alpha[k], sigma[k], lam[k])
      t = (outer[k + 1], alpha[k + 1], sigma[k + 1], lam[k + 1])
      x = jax.lax.switch(o - 1, branches[:self.order], x, s, t, r1, r2)
      return replace(x, outer[k + 1]), None

    x, _ = jax.lax.scan(body, x, (jnp.arange(len(orders)), jnp.asarray(orders, jnp.int32),
                                  jnp.stack(r1s), jnp.stack(r2s)))
    return x

  def solve(self, key, sde, predict, x, ts, last, replace=no_replace):
    if not self.multistep:
      return self._singlestep(sde, predict, x, ts, replace)
    n = ts.shape[0] - 1
    # The reference's "lower_order_final and steps < 10", on the steps of this multistep
    # run (one fewer after the first step from alpha(T) = 0, or with the edm schedule).
    lower = self.lower_order_final and n < 10
    orders = warmup_orders(n, self.order, lower)
    updates = [self._ms1, self._ms2, self._ms3][:self.order]
    return multistep_scan(predict, self._pick, x, ts, point_coeffs(sde, ts), orders,
                          updates, replace=replace)


@dataclasses.dataclass(frozen=True)
class DPMSolver(_DPMSolverBase):
  """DPM-Solver (noise prediction), orders 1-3, multistep or singlestep."""
  name: ClassVar[str] = "dpm_solver"
  data_prediction: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class DPMSolverPP(_DPMSolverBase):
  """DPM-Solver++ (data prediction): 2M, 3M (multistep), 2S, 3S (singlestep)."""
  name: ClassVar[str] = "dpm_solver++"
  data_prediction: ClassVar[bool] = True
