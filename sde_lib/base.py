"""The abstract base every process implements (`AbstractSDE`) and the reverse-time process;
the conventions they follow (time direction, shapes, native quantity) are in
docs/ARCHITECTURE.md."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from common.errors import UserError

# Shapes for readers of the public signatures: a batch x (B, ...) and a per-example
# quantity (B,) (times, noise levels, log-densities).
Batch = Float[Array, "B ..."]
PerExample = Float[Array, "B"]

if TYPE_CHECKING:
  from sde_lib.chains import AbstractChain

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

  Subclasses implement `sde`, `marginal_prob`, `prior_sampling`, `prior_logp`,
  `t_from_log_snr`, `network_labels` and `native_from_network`; they may override
  `discretize` (the default is Euler-Maruyama with step T/N), the native conversions (the
  default native quantity is the score) and `langevin_alpha`.

  Conventions (docs/ARCHITECTURE.md): t = 0 is data, t = T is the prior; x has shape
  (B, ...) and t has shape (B,); per-example quantities have shape (B,). A "model
  function" `model_fn(x, t)` returns the process's native quantity: the score for the
  SDEs, the velocity dx/dt for rectified flow. Code outside sde_lib never asks which one
  it is: it converts with `score_from_native`, `eps_from_native`, `x0_from_native` and
  their inverses, maps network outputs with `network_labels` / `native_from_network`, and
  asks `sde.chain` for the discrete chain (DDPM, SMLD) if the process has one.

  Every process here has an affine-Gaussian transition from data,
      x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I),
  so `marginal_prob` gives (alpha(t) x_0, sigma(t)), and `sde` gives the drift f(x, t) and
  the diffusion g(t) of the forward SDE  dx = f(x, t) dt + g(t) dw  (Song et al. 2021,
  eq. 5).
  """

  #: Name of the native model quantity ("score" or "velocity"), for messages and for
  #: sde_lib's own Gaussian oracles; code outside sde_lib must not branch on it.
  native: str = "score"

  #: The discrete chain (sde_lib.chains: DDPM for VP, SMLD for VE) or None.
  chain: "AbstractChain | None" = None

  #: The process's name in messages to the user.
  process_name: str = "SDE"

  #: True where the original code of this process runs time the other way (data at
  #: t = T): RectifiedFlow's networks take t_RF = T - t and predict -v. The checkpoint
  #: importer folds that into the weights (models/score_sde_import.py).
  reference_time_reversed: bool = False

  def __init__(self, N: int):
    if int(N) < 1:
      raise UserError(f"N (number of discretization steps) must be >= 1, got {N}")
    self.N = int(N)

  @property
  @abc.abstractmethod
  def T(self) -> float:
    """End time of the forward process."""

  @abc.abstractmethod
  def sde(self, x: Batch, t: PerExample) -> tuple[Batch, PerExample]:
    """Drift f(x, t): x.shape and diffusion g(t): (B,)."""

  @abc.abstractmethod
  def marginal_prob(self, x0: Batch, t: PerExample) -> tuple[Batch, PerExample]:
    """Mean alpha(t) x0: x0.shape and std sigma(t): (B,) of p_0t(x_t | x_0)."""

  @abc.abstractmethod
  def prior_sampling(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Draws from the prior p_T; shape includes the batch."""

  @abc.abstractmethod
  def prior_logp(self, z: Batch) -> PerExample:
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

  def alpha_sigma(self, t: PerExample) -> tuple[PerExample, PerExample]:
    """alpha(t), sigma(t): each (B,), from `marginal_prob` with x0 = 1."""
    mean, std = self.marginal_prob(jnp.ones((t.shape[0], 1)), t)
    return mean[:, 0], std

  def log_snr(self, t: PerExample) -> PerExample:
    """The half log-SNR lambda(t) = log(alpha(t) / sigma(t)): (B,), decreasing in t.

    DPM-Solver's lambda (Lu et al. 2022, Sec. 3.1). Subclasses give closed forms that
    stay accurate where alpha or sigma is tiny; this default goes through `alpha_sigma`.
    """
    alpha, sigma = self.alpha_sigma(t)
    return jnp.log(alpha) - jnp.log(sigma)

  @abc.abstractmethod
  def t_from_log_snr(self, lam: PerExample) -> PerExample:
    """The inverse of `log_snr`: the time t at which log(alpha / sigma) = lam."""

  # Conversions between the native model quantity and the score, the noise and the data
  # prediction, each (q, x, t) -> q' with x: (B, ...), t: (B,). With x = alpha x_0 + sigma
  # eps (alpha, sigma = alpha_sigma(t)): score = -eps / sigma, x_0 = (x - sigma eps) / alpha.
  # For a score-native process the first two are the identity; rectified flow overrides
  # all six with closed forms in its velocity.
  def score_from_native(self, native: Batch, x: Batch, t: PerExample) -> Batch:
    """grad_x log p_t(x) from the native quantity: x.shape."""
    return native

  def native_from_score(self, score: Batch, x: Batch, t: PerExample) -> Batch:
    """The native quantity from the score: x.shape."""
    return score

  def eps_from_native(self, native: Batch, x: Batch, t: PerExample) -> Batch:
    """The noise prediction eps = -sigma(t) score: x.shape."""
    _, sigma = self.alpha_sigma(t)
    return -batch_mul(sigma, self.score_from_native(native, x, t))

  def native_from_eps(self, eps: Batch, x: Batch, t: PerExample) -> Batch:
    """The native quantity from a noise prediction (score = -eps / sigma): x.shape."""
    _, sigma = self.alpha_sigma(t)
    return self.native_from_score(-batch_mul(1.0 / sigma, eps), x, t)

  def x0_from_native(self, native: Batch, x: Batch, t: PerExample) -> Batch:
    """The data prediction x_0 = (x - sigma eps) / alpha (Tweedie's E[x_0|x] for the exact
    native quantity): x.shape."""
    alpha, sigma = self.alpha_sigma(t)
    eps = self.eps_from_native(native, x, t)
    return batch_mul(1.0 / alpha, x - batch_mul(sigma, eps))

  def native_from_x0(self, x0: Batch, x: Batch, t: PerExample) -> Batch:
    """The native quantity from a data prediction (eps = (x - alpha x_0) / sigma): x.shape."""
    alpha, sigma = self.alpha_sigma(t)
    return self.native_from_eps(batch_mul(1.0 / sigma, x - batch_mul(alpha, x0)), x, t)

  # A network's parameterization (score_sde's get_score_fn table): what it is fed, and
  # how its output becomes the native quantity. `continuous` is config.training.continuous.
  @abc.abstractmethod
  def network_labels(self, t: PerExample, continuous: bool = True) -> PerExample:
    """The labels a network is fed at time t (its noise conditioning): (B,) float."""

  @abc.abstractmethod
  def native_from_network(self, out: jax.Array, x: jax.Array, t: jax.Array,
                          continuous: bool = True) -> jax.Array:
    """The native quantity from the network output `out` at (x, t): x.shape."""

  # Training objectives (score_sde's losses.py; Song et al. 2021, eq. 7).
  def denoising_residual(self, native: jax.Array, x0: jax.Array, z: jax.Array,
                         t: jax.Array) -> jax.Array:
    """r(x_0, z, t) with ||r||^2 the process's regression loss for the native quantity
    `native` predicted at x_t = alpha x_0 + sigma z: x.shape.

    Denoising score matching with score_sde's weighting lambda(t) = sigma^2:
    r = sigma score + z = sigma (score - grad log p_0t(x_t | x_0)).
    """
    alpha, sigma = self.alpha_sigma(t)
    x = batch_mul(alpha, x0) + batch_mul(sigma, z)
    return batch_mul(sigma, self.score_from_native(native, x, t)) + z

  def likelihood_weight(self, t: jax.Array) -> jax.Array:
    """g(t)^2 / sigma(t)^2: the factor turning ||denoising_residual||^2 into the likelihood
    weighting lambda = g^2 (Song, Durkan, Murray & Ermon 2021): (B,)."""
    _, sigma = self.alpha_sigma(t)
    _, g = self.sde(jnp.zeros((t.shape[0], 1), t.dtype), t)
    return g**2 / sigma**2

  def train_time_range(self, eps: float) -> tuple[float, float]:
    """The interval (lo, hi) of the uniform time of the continuous objective."""
    return eps, self.T

  def langevin_alpha(self, t: jax.Array) -> jax.Array | None:
    """The alpha of score_sde's Langevin step size 2 alpha (r ||z|| / ||score||)^2: (B,).

    DDPM's alpha_i = 1 - beta_i for VP and sub-VP, 1 for VE (Song et al. 2021, Alg. 5).
    None where score_sde defines no annealed Langevin dynamics (rectified flow): the
    Langevin corrector then uses alpha = 1 and the ALD corrector is undefined.
    """
    return None

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
