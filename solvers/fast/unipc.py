"""UniPC (Zhao et al. 2023), data prediction, B(h) variants bh1 and bh2, orders 1-3, as
`multistep_uni_pc_bh_update` and `sample` in wl-zhao/UniPC's uni_pc.py.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from common.choices import check_choice
from solvers.fast.base import (AbstractFastSolver, bmul, multistep_scan, no_replace,
                               point_coeffs, warmup_orders)

VARIANTS = ("bh1", "bh2")


@dataclasses.dataclass(frozen=True)
class UniPC(AbstractFastSolver):
  """UniPC-p with the UniC corrector; NFE = steps.

  With hh = -h (data prediction), h = lambda_t - lambda_s, the step from s (history
  m_0 = x0_hat at s, m_i at earlier times with r_i = (lambda_i - lambda_s) / h,
  D_i = (m_i - m_0) / r_i) is

      x_t' = (sigma_t / sigma_s) x_s - alpha_t (e^hh - 1) m_0
      UniP:  x_t = x_t' - alpha_t B(h) sum_i rho^p_i D_i
      UniC:  x_t^c = x_t' - alpha_t B(h) (sum_i rho^c_i D_i + rho^c_K (m_t - m_0)),

  B(h) = hh (bh1) or e^hh - 1 (bh2); rho^p solves R[:-1, :-1] rho = b[:-1] (0.5 for order
  2), rho^c solves R rho = b (0.5 for order 1), R_ki = r_i^(k-1), b_k = k! phi_{k+1}(hh) / B(h)
  in the reference's recursion. The corrector uses m_t = x0_hat(x_t, t), the model output
  the next step needs anyway, so NFE = steps; the last step has no corrector. The orders
  warm up as 1, 2, ... and, with lower_order_final (applied always in UniPC, unlike
  DPM-Solver's steps < 10 rule), end as min(order, steps + 1 - k). A UniPC of order p with
  its corrector is of order p + 1 away from the final steps.
  """
  variant: str = "bh1"

  name: ClassVar[str] = "unipc"
  order_range: ClassVar[tuple[int, int]] = (1, 3)

  def check(self) -> None:
    check_choice(self.variant, VARIANTS, "unipc variant")

  def interval_nfe(self, n: int, last: bool) -> int:
    return n

  def _system(self, order, hist, hl, s, t):
    """(x_t' pieces) rks, D1s, R, b, B(h), h_phi_1 for a step of `order`."""
    l_s, l_t = s[2], t[2]
    h = l_t - l_s
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if self.variant == "bh1" else jnp.expm1(hh)
    rks = [(hl[i] - l_s) / h for i in range(1, order)]
    d1s = [bmul(1.0 / rk, hist[i] - hist[0]) for i, rk in zip(range(1, order), rks)]
    rk_all = jnp.stack(rks + [jnp.ones_like(h)])
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
      rows.append(rk_all ** (i - 1))
      b.append(h_phi_k * factorial / b_h)
      factorial *= i + 1
      h_phi_k = h_phi_k / hh - 1.0 / factorial
    return d1s, jnp.stack(rows), jnp.stack(b), b_h, h_phi_1

  def _base(self, x, m0, s, t, h_phi_1):
    return bmul(t[1] / s[1], x) - bmul(t[0] * h_phi_1, m0)

  def _predictor(self, order):
    def update(x, hist, hl, s, t):
      d1s, r, b, b_h, h_phi_1 = self._system(order, hist, hl, s, t)
      x_t = self._base(x, hist[0], s, t, h_phi_1)
      if order == 1:
        return x_t
      rhos = (jnp.asarray([0.5], x.dtype) if order == 2
              else jnp.linalg.solve(r[:-1, :-1], b[:-1]))
      res = sum(bmul(rhos[i], d) for i, d in enumerate(d1s))
      return x_t - bmul(t[0] * b_h, res)
    return update

  def _corrector(self, order):
    def correct(x, hist, hl, s, t, m_t):
      d1s, r, b, b_h, h_phi_1 = self._system(order, hist, hl, s, t)
      x_t = self._base(x, hist[0], s, t, h_phi_1)
      rhos = jnp.asarray([0.5], x.dtype) if order == 1 else jnp.linalg.solve(r, b)
      res = bmul(rhos[-1], m_t - hist[0])
      for i, d in enumerate(d1s):
        res = res + bmul(rhos[i], d)
      return x_t - bmul(t[0] * b_h, res)
    return correct

  def solve(self, key, sde, predict, x, ts, last, replace=no_replace):
    n = ts.shape[0] - 1
    orders = warmup_orders(n, self.order, self.lower_order_final)
    ks = range(1, self.order + 1)
    return multistep_scan(predict, lambda p: p[0], x, ts, point_coeffs(sde, ts), orders,
                          [self._predictor(k) for k in ks],
                          [self._corrector(k) for k in ks], replace=replace)
