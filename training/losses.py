"""Training objectives: denoising score matching (continuous, DDPM, SMLD) and rectified
flow velocity matching.

Two layers:
  * `get_sde_loss_fn`, `get_ddpm_loss_fn`, `get_smld_loss_fn`, `get_rf_loss_fn` return
    `loss(model_fn, batch, key) -> scalar`, where `model_fn(x, t)` is any function giving
    the native quantity (score, or velocity for rectified flow): a network wrapped by
    `models.get_score_fn`, or an exact oracle such as `sde_lib.gaussian_model_fn`, which is
    how the tests check the objectives against closed forms.
  * `get_loss_fn(sde, config, train)` chooses one from the config and returns
    `loss(model, batch, key) -> scalar` for an nnx network; it wraps the network with
    `models.get_score_fn`, passing a dropout key split from `key`.

All denoising losses share one form. With x_t = mean(x_0, t) + std z, z ~ N(0, I), the
score of p_0t(x_t | x_0) is -z / std, and (Song et al. 2021, eq. 7 with lambda = std^2)

    l(x_0, t, z) = || s(x_t, t) std + z ||^2,

which for a noise-predicting network s = -eps_theta / std is DDPM's || eps_theta - z ||^2.
With likelihood weighting (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training
of score-based diffusion models", lambda = g(t)^2) it is || s + z / std ||^2 g(t)^2.
`||.||^2` is the mean over the dimensions with reduce_mean, else half the sum (as in
score_sde); the loss is its mean over the batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from sde_lib import VESDE, AbstractSDE, RectifiedFlow, SubVPSDE, VPSDE
from sde_lib.base import batch_mul

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
# loss(model_fn, batch, key) -> scalar
NativeLossFn = Callable[[ModelFn, Any, jax.Array], jax.Array]
# loss(model, batch, key) -> scalar
LossFn = Callable[[nnx.Module, Any, jax.Array], jax.Array]

# Smallest time drawn in the continuous losses: the score's scale 1/std blows up at t = 0.
DEFAULT_EPS = 1e-5


def _reduce(reduce_mean: bool) -> Callable[[jax.Array], jax.Array]:
  """Per-example reduction over all but the batch axis: (B, ...) -> (B,)."""
  if reduce_mean:
    return lambda sq: jnp.mean(sq.reshape(sq.shape[0], -1), axis=1)
  return lambda sq: 0.5 * jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)


def _denoising_loss(model_fn: ModelFn, x0: jax.Array, z: jax.Array, t: jax.Array,
                    mean: jax.Array, std: jax.Array, reduce_mean: bool) -> jax.Array:
  """mean_b || model_fn(mean + std z, t) std + z ||^2: the std^2-weighted DSM loss."""
  score = model_fn(mean + batch_mul(std, z), t)
  return jnp.mean(_reduce(reduce_mean)(jnp.square(batch_mul(std, score) + z)))


def get_sde_loss_fn(sde: AbstractSDE, *, reduce_mean: bool = True,
                    likelihood_weighting: bool = False, eps: float = DEFAULT_EPS
                    ) -> NativeLossFn:
  """Continuous-time denoising score matching for an SDE (score_sde's `get_sde_loss_fn`).

  t ~ U(eps, T), z ~ N(0, I), x_t = mean(x_0, t) + std(t) z;
    without likelihood weighting:  || s(x_t, t) std + z ||^2
    with likelihood weighting:     || s(x_t, t) + z / std ||^2 g(t)^2
  batch: x_0 of shape (B, ...). `model_fn` returns the score.
  """
  if sde.native != "score":
    raise ValueError(f"{type(sde).__name__} has native quantity {sde.native!r}; "
                     "use get_rf_loss_fn for rectified flow")
  reduce = _reduce(reduce_mean)

  def loss_fn(model_fn: ModelFn, batch: jax.Array, key: jax.Array) -> jax.Array:
    x0 = batch
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_key, x0.shape)
    mean, std = sde.marginal_prob(x0, t)
    if not likelihood_weighting:
      return _denoising_loss(model_fn, x0, z, t, mean, std, reduce_mean)
    score = model_fn(mean + batch_mul(std, z), t)
    g2 = sde.sde(jnp.zeros_like(x0), t)[1] ** 2
    return jnp.mean(reduce(jnp.square(score + batch_mul(1.0 / std, z))) * g2)

  return loss_fn


def get_ddpm_loss_fn(vpsde: VPSDE, *, reduce_mean: bool = True) -> NativeLossFn:
  """DDPM's noise-prediction loss (Ho et al. 2020, eq. 14) at a uniform discrete index.

  i ~ U{0, ..., N-1}, x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z, and the loss is
  || s(x_i, t_i) sqrt(1 - abar_i) + z ||^2 with t_i = i / (N - 1), i.e. || eps_theta - z ||^2
  for the network wrapped by `models.get_score_fn(..., continuous=False)`, which feeds it
  the label i.
  """
  if type(vpsde) is not VPSDE:
    raise ValueError(f"the discrete DDPM loss needs a VPSDE, got {type(vpsde).__name__}")
  sqrt_abar = jnp.asarray(np.sqrt(vpsde.alphas_cumprod), jnp.float32)
  sqrt_1m_abar = jnp.asarray(vpsde.sqrt_1m_alphas_cumprod, jnp.float32)
  n = vpsde.N

  def loss_fn(model_fn: ModelFn, batch: jax.Array, key: jax.Array) -> jax.Array:
    x0 = batch
    i_key, z_key = jax.random.split(key)
    i = jax.random.randint(i_key, (x0.shape[0],), 0, n)
    z = jax.random.normal(z_key, x0.shape)
    t = i.astype(jnp.float32) / max(n - 1, 1)
    return _denoising_loss(model_fn, x0, z, t, batch_mul(sqrt_abar[i], x0),
                           sqrt_1m_abar[i], reduce_mean)

  return loss_fn


def get_smld_loss_fn(vesde: VESDE, *, reduce_mean: bool = True) -> NativeLossFn:
  """SMLD/NCSN's loss (Song & Ermon 2019, eq. 5) at a uniform discrete noise level.

  i ~ U{0, ..., N-1}, sigma_i = vesde.discrete_sigmas[i] (ascending), x = x_0 + sigma_i z,
  loss = || s(x, t_i) sigma_i + z ||^2 = sigma_i^2 || s - (-z / sigma_i) ||^2 with
  t_i = i / (N - 1), which `models.get_score_fn(..., continuous=False)` maps to NCSN's
  label N - 1 - i (label 0 is sigma_max).
  """
  if not isinstance(vesde, VESDE):
    raise ValueError(f"the discrete SMLD loss needs a VESDE, got {type(vesde).__name__}")
  sigmas = jnp.asarray(vesde.discrete_sigmas, jnp.float32)
  n = vesde.N

  def loss_fn(model_fn: ModelFn, batch: jax.Array, key: jax.Array) -> jax.Array:
    x0 = batch
    i_key, z_key = jax.random.split(key)
    i = jax.random.randint(i_key, (x0.shape[0],), 0, n)
    z = jax.random.normal(z_key, x0.shape)
    t = i.astype(jnp.float32) / max(n - 1, 1)
    return _denoising_loss(model_fn, x0, z, t, x0, sigmas[i], reduce_mean)

  return loss_fn


def get_rf_loss_fn(sde: RectifiedFlow, *, reduce_mean: bool = True,
                   eps: float = DEFAULT_EPS, distill_steps: int = 0) -> NativeLossFn:
  """Rectified-flow velocity matching (Liu, Gong & Liu 2023, eq. 1), t = 0 data, t = 1 noise.

  t ~ U(eps, 1 - eps), x_t = (1 - t) x_0 + t z, loss = || v(x_t, t) - (z - x_0) ||^2.
  batch: x_0 of shape (B, ...), with z ~ N(0, I) drawn from `key` independently of x_0
  (1-rectified flow); or a coupled pair {"x0": x_0, "z": z} (k-rectified flow, reflow),
  used as given. The ends are kept eps away so labels such as log(t) stay finite.

  distill_steps = k > 0 distils the coupling into a k-step Euler generator (Liu et al.
  2023, sec. 2.3): the same loss with t drawn uniformly from the k grid points an Euler
  solve from t = 1 visits, t in {1, (k-1)/k, ..., 1/k}, instead of U(0, 1). For k = 1
  only t = 1 remains, x_t = z, and the loss is

      || v(z, 1) - (z - x_0) ||^2,   the one-step generator x_hat = z - v(z, 1),

  i.e. regression of x_0 on z over the pairs. It needs coupled pairs (a dict batch): with
  independent z the regression target would be the data mean.
  """
  if not isinstance(sde, RectifiedFlow):
    raise ValueError(f"the rectified-flow loss needs RectifiedFlow, got {type(sde).__name__}")
  distill_steps = int(distill_steps)
  if distill_steps < 0:
    raise ValueError(f"distill_steps must be >= 0 (0: off), got {distill_steps}")
  reduce = _reduce(reduce_mean)

  def loss_fn(model_fn: ModelFn, batch, key: jax.Array) -> jax.Array:
    t_key, z_key = jax.random.split(key)
    if isinstance(batch, dict):
      x0, z = batch["x0"], batch["z"]
    elif distill_steps:
      raise ValueError("distillation (distill_steps > 0) needs coupled pairs "
                       "{'x0', 'z'} from a trained flow (config.training.pairs_dir)")
    else:
      x0 = batch
      z = jax.random.normal(z_key, x0.shape)
    b = x0.shape[0]
    if distill_steps:
      # Euler grid points t_j = j / k, j = 1..k: where a k-step sampler queries v.
      j = jax.random.randint(t_key, (b,), 1, distill_steps + 1)
      t = sde.T * j.astype(x0.dtype) / distill_steps
    else:
      t = jax.random.uniform(t_key, (b,), minval=eps, maxval=sde.T - eps)
    x_t = batch_mul(1.0 - t, x0) + batch_mul(t, z)
    return jnp.mean(reduce(jnp.square(model_fn(x_t, t) - (z - x0))))

  return loss_fn


def get_native_loss_fn(sde: AbstractSDE, *, continuous: bool = True,
                       reduce_mean: bool = True, likelihood_weighting: bool = False,
                       rf_distill_steps: int = 0) -> NativeLossFn:
  """Chooses the objective for `sde`: velocity matching for rectified flow (distillation
  to a k-step generator if rf_distill_steps = k > 0); continuous DSM if `continuous`;
  else DDPM for VPSDE and SMLD for VESDE (score_sde's choice)."""
  if isinstance(sde, RectifiedFlow):
    if likelihood_weighting:
      raise ValueError("likelihood_weighting applies to the SDE losses, not to "
                       "rectified flow")
    return get_rf_loss_fn(sde, reduce_mean=reduce_mean, distill_steps=rf_distill_steps)
  if rf_distill_steps:
    raise ValueError("config.training.rf_distill_steps applies to rectified flow only")
  if continuous:
    return get_sde_loss_fn(sde, reduce_mean=reduce_mean,
                           likelihood_weighting=likelihood_weighting)
  if likelihood_weighting:
    raise ValueError("likelihood_weighting needs continuous training "
                     "(config.training.continuous = True)")
  if isinstance(sde, SubVPSDE):
    raise ValueError("sub-VP SDE has no discrete training objective; set "
                     "config.training.continuous = True")
  if isinstance(sde, VPSDE):
    return get_ddpm_loss_fn(sde, reduce_mean=reduce_mean)
  if isinstance(sde, VESDE):
    return get_smld_loss_fn(sde, reduce_mean=reduce_mean)
  raise ValueError(f"no discrete training objective for {type(sde).__name__}")


def get_loss_fn(sde: AbstractSDE, config, train: bool = True) -> LossFn:
  """`loss(model, batch, key) -> scalar` for an nnx network, from config.training's
  continuous, reduce_mean, likelihood_weighting and rf_distill_steps (rectified flow).

  `key` is split into the objective's key (times, noise) and the network's dropout key;
  train=False evaluates without dropout.
  """
  tc = config.training
  continuous = bool(tc.continuous)
  native_loss = get_native_loss_fn(sde, continuous=continuous,
                                   reduce_mean=bool(tc.reduce_mean),
                                   likelihood_weighting=bool(tc.likelihood_weighting),
                                   rf_distill_steps=int(tc.get("rf_distill_steps", 0)))

  def loss_fn(model: nnx.Module, batch, key: jax.Array) -> jax.Array:
    loss_key, dropout_key = jax.random.split(key)
    model_fn = models.get_score_fn(sde, model, train=train, continuous=continuous,
                                   key=dropout_key if train else None)
    return native_loss(model_fn, batch, loss_key)

  return loss_fn
