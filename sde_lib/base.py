"""The abstract base every process implements, and the reverse-time process.

Conventions (DESIGN.md): t = 0 is data, t = T is the prior; x has shape (B, ...) and t has
shape (B,); per-example quantities have shape (B,). A "model function" `model_fn(x, t)`
returns the process's native quantity (`native` below): the score for the SDEs, the
velocity dx/dt for rectified flow.

Every process here has an affine-Gaussian transition from data,
    x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I),
so `marginal_prob` gives (alpha(t) x_0, sigma(t)), and `sde` gives the drift f(x, t) and the
diffusion g(t) of the forward SDE  dx = f(x, t) dt + g(t) dw  (Song et al. 2021, eq. 5).
"""
from __future__ import annotations

import abc
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def batch_mul(a: jax.Array, x: jax.Array) -> jax.Array:
  """Multiplies a per-example quantity a: (B,) into x: (B, ...)."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _check_t(x: jax.Array, t: jax.Array) -> None:
  if jnp.ndim(t) != 1 or t.shape[0] != x.shape[0]:
    raise ValueError(
        f"t must have shape (B,) = ({x.shape[0]},) matching x of shape {x.shape}; "
        f"got t of shape {jnp.shape(t)}")


class AbstractSDE(abc.ABC):
  """A forward process dx = f(x, t) dt + g(t) dw on t in [0, T], with N discrete steps.

  Subclasses implement `sde`, `marginal_prob`, `prior_sampling` and `prior_logp`; they may
  override `discretize` (the default is Euler-Maruyama with step T/N).
  """

  #: name of the native model quantity: "score" or "velocity".
  native: str = "score"

  def __init__(self, N: int):
    if int(N) < 1:
      raise ValueError(f"N (number of discretization steps) must be >= 1, got {N}")
    self.N = int(N)

  @property
  @abc.abstractmethod
  def T(self) -> float:
    """End time of the forward process."""

  @abc.abstractmethod
  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Drift f(x, t): x.shape and diffusion g(t): (B,)."""

  @abc.abstractmethod
  def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean alpha(t) x0: x0.shape and std sigma(t): (B,) of p_0t(x_t | x_0)."""

  @abc.abstractmethod
  def prior_sampling(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Draws from the prior p_T; shape includes the batch."""

  @abc.abstractmethod
  def prior_logp(self, z: jax.Array) -> jax.Array:
    """log p_T(z) in nats: (B,)."""

  # Hashing by hyper-parameters lets an SDE be a static argument of jit without
  # recompiling for an equal SDE object.
  def _hparams(self) -> tuple:
    return (type(self).__name__, self.N)

  def __eq__(self, other) -> bool:
    return type(self) is type(other) and self._hparams() == other._hparams()

  def __hash__(self) -> int:
    return hash(self._hparams())

  def __repr__(self) -> str:
    return f"{self._hparams()[0]}{self._hparams()[1:]}"

  def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One forward step x_{i+1} = x_i + f_i + G_i z_i, z_i ~ N(0, I).

    Default: Euler-Maruyama with dt = T / N, so f = f(x, t) dt and G = g(t) sqrt(dt).
    Returns f: x.shape and G: (B,).
    """
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * np.sqrt(dt)

  def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """alpha(t), sigma(t): each (B,), from `marginal_prob` with x0 = 1."""
    mean, std = self.marginal_prob(jnp.ones((t.shape[0], 1)), t)
    return mean[:, 0], std

  def log_snr(self, t: jax.Array) -> jax.Array:
    """The half log-SNR lambda(t) = log(alpha(t) / sigma(t)): (B,), decreasing in t.

    DPM-Solver's lambda (Lu et al. 2022, Sec. 3.1). Subclasses give closed forms that
    stay accurate where alpha or sigma is tiny; this default goes through `alpha_sigma`.
    """
    alpha, sigma = self.alpha_sigma(t)
    return jnp.log(alpha) - jnp.log(sigma)

  @abc.abstractmethod
  def t_from_log_snr(self, lam: jax.Array) -> jax.Array:
    """The inverse of `log_snr`: the time t at which log(alpha / sigma) = lam."""

  # Conversions between the native model quantity and the score. For the SDEs the
  # native quantity is the score, so both are the identity.
  def score_from_native(self, native: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    return native

  def native_from_score(self, score: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    return score

  def probability_flow_drift(self, native: jax.Array, x: jax.Array,
                             t: jax.Array) -> jax.Array:
    """dx/dt of the probability-flow ODE: f(x, t) - g(t)^2 / 2 * score (eq. 13)."""
    drift, diffusion = self.sde(x, t)
    score = self.score_from_native(native, x, t)
    return drift - batch_mul(0.5 * diffusion**2, score)

  def reverse(self, model_fn: ModelFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time process driven by `model_fn` (Song et al. 2021, eqs. 6 and 13)."""
    return ReverseSDE(self, model_fn, probability_flow)


class ReverseSDE:
  """Reverse-time SDE  dx = [f - g^2 score] dt + g dw-bar, run from T to 0.

  With probability_flow=True, the ODE dx = [f - g^2 / 2 score] dt (diffusion 0).
  `sde` returns the drift in forward-time units: a step from t to t - dt moves x by
  -drift * dt (+ diffusion noise), as in score_sde.
  """

  def __init__(self, forward: AbstractSDE, model_fn: ModelFn, probability_flow: bool):
    self.forward = forward
    self.model_fn = model_fn
    self.probability_flow = probability_flow
    self.N = forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    _check_t(x, t)
    native = self.model_fn(x, t)
    if self.probability_flow:
      drift = self.forward.probability_flow_drift(native, x, t)
      return drift, jnp.zeros_like(t)
    drift, diffusion = self.forward.sde(x, t)
    score = self.forward.score_from_native(native, x, t)
    return drift - batch_mul(diffusion**2, score), diffusion

  def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reverse of the forward discretization: x_{i-1} = x_i - rev_f + rev_G z.

    rev_f = f - G^2 score (times 1/2 for the probability flow), rev_G = G (0 for the flow).
    """
    _check_t(x, t)
    f, G = self.forward.discretize(x, t)
    score = self.forward.score_from_native(self.model_fn(x, t), x, t)
    scale = 0.5 if self.probability_flow else 1.0
    rev_f = f - batch_mul(scale * G**2, score)
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


def standard_normal_logp(z: jax.Array, scale: float = 1.0) -> jax.Array:
  """log N(z; 0, scale^2 I) summed over all but the batch axis: (B,), nats."""
  d = np.prod(z.shape[1:])
  sq = jnp.sum((z / scale).reshape(z.shape[0], -1) ** 2, axis=1)
  return -0.5 * d * np.log(2 * np.pi * scale**2) - 0.5 * sq
