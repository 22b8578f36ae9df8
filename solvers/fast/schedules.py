"""Time grids for the fast samplers: each schedule maps (sde, t_T, t_0, n) to n + 1 times,
decreasing from t = t_T (usually T) to t = t_0 (eps), placed as DPM-Solver's
`get_time_steps` (dpm_solver_pytorch.py) and EDM's `edm_sampler` (generate.py) place them,
computed with jnp in the dtype of the sample, at trace time.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_lib.base import AbstractSDE

Schedule = Callable[..., jax.Array]


def _scalar_lam(sde: AbstractSDE, t: jax.Array) -> jax.Array:
  return sde.log_snr(jnp.reshape(t, (1,)))[0]


def _t_of_lam(sde: AbstractSDE, lam: jax.Array) -> jax.Array:
  return sde.t_from_log_snr(lam)


def time_uniform(sde, t_T, t_0, n, *, rho=7.0, dtype=jnp.float32):
  """linspace(t_T, t_0, n + 1): (n + 1,) times, decreasing."""
  del sde, rho
  return jnp.linspace(jnp.asarray(t_T, dtype), jnp.asarray(t_0, dtype), n + 1)


def time_quadratic(sde, t_T, t_0, n, *, rho=7.0, dtype=jnp.float32):
  """linspace(sqrt t_T, sqrt t_0, n + 1)^2 (DDIM's "quad" for CIFAR-10): (n + 1,) times,
  decreasing.
  """
  del sde, rho
  t_T, t_0 = jnp.asarray(t_T, dtype), jnp.asarray(t_0, dtype)
  return jnp.linspace(jnp.sqrt(t_T), jnp.sqrt(t_0), n + 1) ** 2


def log_snr(sde, t_T, t_0, n, *, rho=7.0, dtype=jnp.float32):
  """The "logSNR" grid: uniform in lambda = log(alpha / sigma), mapped back to times by
  `sde.t_from_log_snr`: (n + 1,) times, decreasing.
  """
  del rho
  lam_T = _scalar_lam(sde, jnp.asarray(t_T, dtype))
  lam_0 = _scalar_lam(sde, jnp.asarray(t_0, dtype))
  ts = _t_of_lam(sde, jnp.linspace(lam_T, lam_0, n + 1))
  # Pin the ends: the inverse's round-off must not move the first or last time.
  return ts.at[0].set(t_T).at[-1].set(t_0)


def edm(sde, t_T, t_0, n, *, rho=7.0, dtype=jnp.float32):
  """EDM's grid: sigma~ = sigma / alpha = exp(-lambda) spaced as EDM's eq. 5,
  sigma~_i = (sigma~_T^(1/rho) + i / n (sigma~_0^(1/rho) - sigma~_T^(1/rho)))^rho, mapped
  back to times: (n + 1,) times, decreasing.
  """
  s_T = jnp.exp(-_scalar_lam(sde, jnp.asarray(t_T, dtype)))
  s_0 = jnp.exp(-_scalar_lam(sde, jnp.asarray(t_0, dtype)))
  frac = jnp.arange(n + 1, dtype=dtype) / n
  sig = (s_T ** (1.0 / rho) + frac * (s_0 ** (1.0 / rho) - s_T ** (1.0 / rho))) ** rho
  ts = _t_of_lam(sde, -jnp.log(sig))
  return ts.at[0].set(t_T).at[-1].set(t_0)


SCHEDULES: dict[str, Schedule] = {
    "time_uniform": time_uniform,
    "time_quadratic": time_quadratic,
    "logSNR": log_snr,
    "edm": edm,
}

#: Schedules that are spaced in lambda or sigma~ and so need a finite lambda(t_T).
LAMBDA_SCHEDULES = ("logSNR", "edm")
