"""A vector field and its divergence from one linearization: the exact trace and
Hutchinson's estimator (the estimators and their variances: `value_and_divergence`)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from common.choices import check_choice


TRACE_ESTIMATORS = ("exact", "rademacher", "gaussian")


def check_trace(trace: str) -> str:
  """Canonical (lower-case) name of a trace estimator; raises UserError (a ValueError)
  if unknown."""
  name = str(trace).lower()
  check_choice(name, TRACE_ESTIMATORS, "trace estimator")
  return name


def sample_probes(key: jax.Array, trace: str, n_probes: int, shape: tuple[int, ...],
                  dtype=jnp.float32) -> jax.Array | None:
  """Hutchinson probes v of shape (n_probes, *shape) with E[v v^T] = I; None for "exact".

  rademacher: entries +-1 with probability 1/2; gaussian: entries N(0, 1).
  """
  trace = check_trace(trace)
  if trace == "exact":
    return None
  if int(n_probes) < 1:
    raise ValueError(f"n_probes must be >= 1, got {n_probes}")
  full = (int(n_probes),) + tuple(shape)
  if trace == "rademacher":
    return jax.random.rademacher(key, full, dtype=dtype)
  return jax.random.normal(key, full, dtype=dtype)


def value_and_exact_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array
                               ) -> tuple[jax.Array, jax.Array]:
  """(fn(x): x.shape, tr(J_b) for each example: (B,)), with D vmapped jvps."""
  batch = x.shape[0]
  dim = int(np.prod(x.shape[1:]))
  y, jvp_fn = jax.linearize(fn, x)
  # Tangent i is the i-th basis vector in every example at once: since J is
  # block-diagonal over the batch, (J e_i)_b is column i of J_b.
  basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
  columns = jax.vmap(jvp_fn)(jnp.broadcast_to(basis, (dim,) + x.shape))
  columns = columns.reshape(dim, batch, dim)
  return y, jnp.einsum("ibi->b", columns)


def value_and_hutchinson_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                                    probes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(fn(x): x.shape, mean_k v_k^T J_b v_k: (B,)) for probes v of shape (K, *x.shape)."""
  if probes.shape[1:] != x.shape:
    raise ValueError(f"probes must have shape (K, *{x.shape}), got {probes.shape}")
  y, jvp_fn = jax.linearize(fn, x)
  jv = jax.vmap(jvp_fn)(probes)
  per_probe = jnp.sum((probes * jv).reshape(probes.shape[0], x.shape[0], -1), axis=-1)
  return y, jnp.mean(per_probe, axis=0)


def value_and_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                         probes: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """The exact divergence if probes is None, else Hutchinson's estimate with `probes`.

  For a batched map f: (B, ...) -> (B, ...) that acts on each example separately (its
  Jacobian is block-diagonal over the batch), the divergence of example b is

      div f(x)_b = tr(J_b),   J_b = d f(x)_b / d x_b,   a (D, D) matrix, D = prod(x.shape[1:]).

  * exact:       tr(J_b) = sum_i e_i^T J_b e_i, from D Jacobian-vector products (one per basis
                 vector e_i, the same e_i for every example), vmapped. Cost: D jvps per call,
                 so meant for low-dimensional data.
  * Hutchinson:  tr(J_b) = E_v[v^T J_b v] for any probe with E[v v^T] = I (Hutchinson 1989;
                 FFJORD, Grathwohl et al. 2019, eq. 7). Rademacher probes (+-1) have the
                 smaller variance, sum_{i != j} (J_ij + J_ji)^2 / 2 (zero for a diagonal
                 Jacobian); Gaussian probes add 2 sum_i J_ii^2. With K probes the estimate
                 is the mean of K terms v_k^T J_b v_k, and its variance is 1/K of that.

  Both evaluate f once: `jax.linearize` gives f(x) and the linear map v -> J v (forward
  mode; no activations are stored as a reverse-mode vjp would), which is then vmapped over
  the tangents. So the drift and its divergence cost one model evaluation plus one jvp per
  probe (D jvps for the exact trace).

  Caveat: if f mixes examples (e.g. batch statistics), J has off-block entries; the exact
  trace (value_and_exact_divergence), which shares each basis vector across the batch,
  would then add sum_{b' != b} (J_{b b'})_ii to example b. Hutchinson's probes are independent across
  examples, so its estimate stays unbiased.
  """
  if probes is None:
    return value_and_exact_divergence(fn, x)
  return value_and_hutchinson_divergence(fn, x, probes)
