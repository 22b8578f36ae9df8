"""Training objectives, denoising score matching (continuous, DDPM, SMLD), rectified-flow
velocity matching and EDM's loss: `get_continuous_loss_fn` and `get_discrete_loss_fn` give
`loss(model_fn, batch, key)` for any model function (an exact oracle included), and
`get_loss_fn` chooses one from the config for an nnx network.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

import models
from common.choices import check_choice
from data import edm_augment
from common.errors import UserError
from sde_lib import AbstractSDE
from sde_lib.base import ModelFn, batch_mul

# loss(model_fn, batch, key) -> scalar
NativeLossFn = Callable[[ModelFn, Any, jax.Array], jax.Array]
# loss(model, batch, key) -> scalar
LossFn = Callable[[nnx.Module, Any, jax.Array], jax.Array]

# Smallest time drawn in the continuous losses: the score's scale 1/std blows up at t = 0.
DEFAULT_EPS = 1e-5


def _reduce(reduce_mean: bool) -> Callable[[jax.Array], jax.Array]:
  """Per-example reduction over all but the batch axis: (B, ...) -> (B,).

  This is the `||.||^2` of every objective here: the mean over the dimensions with
  reduce_mean, else half the sum (as in score_sde); the loss is its mean over the batch.
  """
  if reduce_mean:
    return lambda sq: jnp.mean(sq.reshape(sq.shape[0], -1), axis=1)
  return lambda sq: 0.5 * jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)


def get_continuous_loss_fn(sde: AbstractSDE, *, reduce_mean: bool = True,
                           likelihood_weighting: bool = False, eps: float = DEFAULT_EPS,
                           distill_steps: int = 0,
                           time_range: tuple[float, float] | None = None,
                           distill_grid: str = "euler") -> NativeLossFn:
  """The process's continuous-time objective (score_sde's `get_sde_loss_fn`; rectified
  flow's velocity matching).

  t ~ U(sde.train_time_range(eps)) (U(eps, T) for the SDEs, U(eps, 1 - eps) for rectified
  flow), z ~ N(0, I), x_t = alpha(t) x_0 + sigma(t) z, and the loss is
  || sde.denoising_residual(model_fn(x_t, t), x_0, z, t) ||^2, times
  sde.likelihood_weight(t) with likelihood weighting. time_range = (lo, hi) replaces
  the interval (config.training.time_range; RectifiedFlow's CIFAR-10 runs train on
  t in [0, 0.999] in our time, configs/rf/cifar10_rf_ddpmpp.py).

  batch: x_0 of shape (B, ...), with z ~ N(0, I) drawn from `key` independently of x_0; or
  a coupled pair {"x0": x_0, "z": z} (k-rectified flow, reflow), used as given.

  distill_steps = k > 0 distils the coupling into a k-step Euler generator (Liu et al.
  2023, sec. 2.3): the same loss with t drawn uniformly from the k grid points an Euler
  solve from t = T visits, t in {T, (k-1)/k T, ..., T/k}. For rectified flow and k = 1 only
  t = 1 remains, x_t = z, and the loss is || v(z, 1) - (z - x_0) ||^2, the one-step
  generator x_hat = z - v(z, 1), i.e. regression of x_0 on z over the pairs. It needs
  coupled pairs (a dict batch): with independent z the regression target would be the
  data mean. distill_grid = "rectified_flow" uses RectifiedFlow's grid instead
  (ImageGeneration/losses.py: eps + j (T - eps) / k, j = 0..k-1, in its time, where t = 0
  is noise), in ours t = (T - eps) j / k, j = 1..k: one eps below every Euler point, so
  k = 1 trains at t = T - eps. The default, "euler", trains where this project's Euler
  sampler, which starts at T exactly, queries v.

  Raises:
    UserError: for distill_steps < 0, an unknown distill_grid, and (from the process)
      for likelihood weighting of a process that has none (rectified flow).

  Alias names: `get_sde_loss_fn`, `get_rf_loss_fn` (and, for the discrete objective,
  `get_ddpm_loss_fn`, `get_smld_loss_fn`). The returned `loss(model_fn, batch, key) ->
  scalar` takes any `model_fn(x, t)` giving the native quantity (score, or velocity for
  rectified flow): a network wrapped by `models.get_score_fn`, or an exact oracle such as
  `sde_lib.gaussian_model_fn`, which is how the tests check the objectives against closed
  forms.

  What differs between processes the process answers (sde_lib): the per-example residual
  `sde.denoising_residual(native, x_0, z, t)`. For the SDEs it is denoising score matching
  (Song et al. 2021, eq. 7 with lambda = sigma^2),

      l(x_0, t, z) = || s(x_t, t) sigma + z ||^2,

  which for a noise-predicting network s = -eps_theta / sigma is DDPM's
  || eps_theta - z ||^2; with likelihood weighting (Song, Durkan, Murray & Ermon 2021,
  lambda = g(t)^2) it is || s + z / sigma ||^2 g(t)^2 = l * `sde.likelihood_weight(t)`. For
  rectified flow it is velocity matching || v(x_t, t) - (z - x_0) ||^2 (Liu, Gong & Liu
  2023, eq. 1). The discrete objective (DDPM, SMLD) instead draws a level of the process's
  chain, `sde.chain` (`get_discrete_loss_fn`).
  """
  distill_steps = int(distill_steps)
  if distill_steps < 0:
    raise UserError(f"distill_steps must be >= 0 (0: off), got {distill_steps}")
  check_choice(distill_grid, ("euler", "rectified_flow"),
               "distillation time grid (config.training.rf_distill_grid)")
  grid_top = sde.T - eps if distill_grid == "rectified_flow" else sde.T
  if likelihood_weighting:
    sde.likelihood_weight(jnp.full((1,), 0.5 * sde.T))  # Raises where undefined.
  t_lo, t_hi = sde.train_time_range(eps)
  if time_range is not None:
    values = tuple(time_range)
    if (len(values) != 2 or not all(isinstance(v, (int, float)) for v in values)
        or not 0.0 <= float(values[0]) < float(values[1]) <= float(sde.T)):
      raise UserError(f"config.training.time_range = {time_range!r} must be (t_lo, t_hi) "
                      f"with 0 <= t_lo < t_hi <= T = {sde.T:g}")
    t_lo, t_hi = (float(v) for v in values)
    if not 0.0 <= t_lo < t_hi <= sde.T:
      raise UserError(f"config.training.time_range = {tuple(time_range)} must satisfy "
                      f"0 <= lo < hi <= T = {sde.T}")
  reduce = _reduce(reduce_mean)

  def loss_fn(model_fn: ModelFn, batch, key: jax.Array) -> jax.Array:
    t_key, z_key = jax.random.split(key)
    if isinstance(batch, dict):
      x0, z = batch["x0"], batch["z"]
    elif distill_steps:
      raise UserError("distillation (distill_steps > 0) needs coupled pairs "
                      "{'x0', 'z'} from a trained flow (config.training.pairs_dir)")
    else:
      x0 = batch
      z = jax.random.normal(z_key, x0.shape)
    b = x0.shape[0]
    if distill_steps:
      # Euler grid points t_j = j T / k, j = 1..k: where a k-step sampler queries v
      # (RectifiedFlow's grid: T - eps in place of T).
      j = jax.random.randint(t_key, (b,), 1, distill_steps + 1)
      t = grid_top * j.astype(x0.dtype) / distill_steps
    else:
      t = jax.random.uniform(t_key, (b,), minval=t_lo, maxval=t_hi)
    mean, std = sde.marginal_prob(x0, t)
    native = model_fn(mean + batch_mul(std, z), t)
    per_example = reduce(jnp.square(sde.denoising_residual(native, x0, z, t)))
    if likelihood_weighting:
      per_example = per_example * sde.likelihood_weight(t)
    return jnp.mean(per_example)

  return loss_fn


def get_sde_loss_fn(sde: AbstractSDE, *, reduce_mean: bool = True,
                    likelihood_weighting: bool = False, eps: float = DEFAULT_EPS
                    ) -> NativeLossFn:
  """score_sde's name for the continuous objective: `get_continuous_loss_fn`."""
  return get_continuous_loss_fn(sde, reduce_mean=reduce_mean,
                                likelihood_weighting=likelihood_weighting, eps=eps)


def get_rf_loss_fn(sde: AbstractSDE, *, reduce_mean: bool = True,
                   eps: float = DEFAULT_EPS, distill_steps: int = 0) -> NativeLossFn:
  """Rectified flow's velocity matching: `get_continuous_loss_fn` of a RectifiedFlow."""
  return get_continuous_loss_fn(sde, reduce_mean=reduce_mean, eps=eps,
                                distill_steps=distill_steps)


def get_discrete_loss_fn(sde: AbstractSDE, *, reduce_mean: bool = True) -> NativeLossFn:
  """The discrete objective of the process's chain at a uniform level (score_sde's
  `get_ddpm_loss_fn` for VP, `get_smld_loss_fn` for VE).

  i ~ U{0, ..., N-1}, (a_i, s_i) = sde.chain.marginal(i), x_i = a_i x_0 + s_i z, and the
  loss is || s(x_i, t_i) s_i + z ||^2 with t_i = sde.chain.time(i) (index(t_i) = i):
    DDPM (Ho et al. 2020, eq. 14): a_i = sqrt(abar_i), s_i = sqrt(1 - abar_i); for a
      noise-predicting network wrapped with continuous=False this is || eps_theta - z ||^2
      with the network fed the label i.
    SMLD (Song & Ermon 2019, eq. 5): a_i = 1, s_i = sigma_i (ascending), i.e.
      sigma_i^2 || s - (-z / sigma_i) ||^2; the network is fed NCSN's label N - 1 - i.

  Raises:
    UserError: if the process has no discrete chain (sub-VP, rectified flow).
  """
  chain = sde.chain
  if chain is None:
    raise UserError(f"the {sde.process_name} has no discrete training objective (no "
                    f"DDPM or SMLD chain); set config.training.continuous = True")
  reduce = _reduce(reduce_mean)

  def loss_fn(model_fn: ModelFn, batch: jax.Array, key: jax.Array) -> jax.Array:
    x0 = batch
    i_key, z_key = jax.random.split(key)
    i = jax.random.randint(i_key, (x0.shape[0],), 0, chain.N)
    z = jax.random.normal(z_key, x0.shape)
    t = chain.time(i)
    mean_coeff, std = chain.marginal(i)
    x = batch_mul(mean_coeff, x0) + batch_mul(std, z)
    score = sde.score_from_native(model_fn(x, t), x, t)
    return jnp.mean(reduce(jnp.square(batch_mul(std, score) + z)))

  return loss_fn


# score_sde's names: the chain (DDPM for VP, SMLD for VE) decides which objective it is.
get_ddpm_loss_fn = get_discrete_loss_fn
get_smld_loss_fn = get_discrete_loss_fn


def get_edm_loss_fn(sde: AbstractSDE, *, sigma_data: float = 0.5, p_mean: float = -1.2,
                    p_std: float = 1.2, reduce_mean: bool = False) -> NativeLossFn:
  """EDM's training objective (Karras et al. 2022, eq. 8 and Table 1; NVlabs/edm's
  `EDMLoss`), for any process through its x_0 prediction.

      ln sigma ~ N(p_mean, p_std^2),   n ~ N(0, sigma^2 I),
      lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,
      loss = E[ lambda(sigma) || D(y + n; sigma) - y ||^2 ],

  y the batch x_0 of shape (B, ...). The process is asked for the time of the noise level,
  t = sde.t_from_log_snr(-ln sigma), and for the data prediction D =
  sde.x0_from_native(model_fn(x_t, t), x_t, t) at x_t = alpha(t) y + sigma(t) z: for the
  EDM process (alpha = 1, sigma = t) that is EDMLoss exactly (t = sigma, x_t = y + n, and
  D the native quantity itself); for another process it is the same loss in its scaled
  variable (D(x_t / alpha; sigma~) = x0_hat(x_t, t), sigma~ = sigma / alpha).

  Reduction. EDMLoss returns the per-element loss lambda (D - y)^2 of shape (B, C, H, W);
  EDM's training loop backpropagates `loss.sum() * loss_scaling / batch_gpu_total`, the
  sum over every element of its share of the batch divided by the per-GPU total batch,
  i.e. (with gradients averaged over GPUs and loss_scaling = 1) the batch mean of the
  per-example sum over the C H W elements. reduce_mean=False is exactly that; with
  reduce_mean=True the per-example sum becomes a mean (the loss divided by C H W), which
  Adam's update does not see apart from its eps and gradient clipping.

  Returns `loss(model_fn, batch, key) -> scalar`, batch: x_0 (B, ...).
  """
  sigma_data, p_mean, p_std = float(sigma_data), float(p_mean), float(p_std)
  if not sigma_data > 0 or not p_std > 0:
    raise UserError(f"EDM's loss needs sigma_data > 0 and P_std > 0 (config.model."
                    f"sigma_data, config.training.P_std), got {sigma_data}, {p_std}")

  def reduce(sq):
    per = jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)
    return per / (sq[0].size) if reduce_mean else per

  def loss_fn(model_fn: ModelFn, batch, key: jax.Array) -> jax.Array:
    if isinstance(batch, dict):
      raise UserError("EDM's loss (config.training.loss = 'edm') trains on data alone; "
                      "coupled pairs {'x0', 'z'} are rectified flow's")
    y = batch
    s_key, z_key = jax.random.split(key)
    log_sigma = jax.random.normal(s_key, (y.shape[0],), y.dtype) * p_std + p_mean
    sigma_tilde = jnp.exp(log_sigma)
    t = sde.t_from_log_snr(-log_sigma)
    alpha, sigma = sde.alpha_sigma(t)
    z = jax.random.normal(z_key, y.shape, y.dtype)
    x = batch_mul(alpha, y) + batch_mul(sigma, z)
    denoised = sde.x0_from_native(model_fn(x, t), x, t)
    weight = (sigma_tilde**2 + sigma_data**2) / (sigma_tilde * sigma_data) ** 2
    return jnp.mean(weight * reduce(jnp.square(denoised - y)))

  return loss_fn


def get_native_loss_fn(sde: AbstractSDE, *, continuous: bool = True,
                       reduce_mean: bool = True, likelihood_weighting: bool = False,
                       rf_distill_steps: int = 0,
                       time_range: tuple[float, float] | None = None,
                       rf_distill_grid: str = "euler", objective: str = "default",
                       sigma_data: float = 0.5, p_mean: float = -1.2,
                       p_std: float = 1.2) -> NativeLossFn:
  """Chooses the objective for `sde`: its continuous objective (velocity matching for
  rectified flow, with distillation to a k-step generator if rf_distill_steps = k > 0), or
  with continuous=False the discrete objective of its chain (DDPM for VP, SMLD for VE:
  score_sde's choice). objective = "edm": EDM's loss instead (`get_edm_loss_fn`, with
  sigma_data, p_mean, p_std), continuous only and without likelihood weighting."""
  check_choice(objective, ("default", "edm"), "loss (config.training.loss)")
  if objective == "edm":
    if not continuous or likelihood_weighting or rf_distill_steps or time_range:
      raise UserError("EDM's loss (config.training.loss = 'edm') draws its own noise "
                      "levels and weighting: it needs training.continuous = True and no "
                      "likelihood_weighting, rf_distill_steps or time_range")
    return get_edm_loss_fn(sde, sigma_data=sigma_data, p_mean=p_mean, p_std=p_std,
                           reduce_mean=reduce_mean)
  if continuous or rf_distill_steps:
    return get_continuous_loss_fn(sde, reduce_mean=reduce_mean,
                                  likelihood_weighting=likelihood_weighting,
                                  distill_steps=rf_distill_steps, time_range=time_range,
                                  distill_grid=rf_distill_grid)
  if likelihood_weighting:
    raise UserError("likelihood_weighting needs continuous training "
                    "(config.training.continuous = True)")
  return get_discrete_loss_fn(sde, reduce_mean=reduce_mean)


def drop_labels(key: jax.Array, labels: jax.Array, p: float | jax.Array,
                null_label: int) -> jax.Array:
  """Label dropout: each of labels (B,) replaced by `null_label` with probability p,
  independently (Ho and Salimans 2022, Alg. 1, p_uncond). Returns (B,) int32."""
  drop = jax.random.bernoulli(key, p, labels.shape)
  return jnp.where(drop, null_label, labels).astype(jnp.int32)


def _label_settings(config) -> tuple[int, float]:
  """(num_classes, label_dropout) of config.model, validated."""
  m = config.model
  num_classes = int(m.get("num_classes", 0))
  p = float(m.get("label_dropout", 0.0))
  if num_classes < 0:
    raise UserError(f"config.model.num_classes must be >= 0 (0: unconditional), "
                    f"got {num_classes}")
  if not 0.0 <= p < 1.0:
    raise UserError(f"config.model.label_dropout must be in [0, 1), got {p}")
  if p > 0 and not num_classes:
    raise UserError(f"config.model.label_dropout = {p} needs a class-conditional model "
                    "(config.model.num_classes > 0)")
  return num_classes, p


def _split_labels(batch):
  """(batch without its labels, labels or None): {"x0", "label"} -> (x0, label);
  {"x0", "z", "label"} -> ({"x0", "z"}, label); anything else -> (batch, None)."""
  if not isinstance(batch, dict) or "label" not in batch:
    return batch, None
  rest = {k: v for k, v in batch.items() if k != "label"}
  return (rest["x0"] if set(rest) == {"x0"} else rest), batch["label"]


def _augment_setting(config) -> float:
  """config.training.augment_p (absent: 0), EDM's augmentation probability, checked: in
  [0, 1], and > 0 only with EDM's loss and a network with EDM's 9 augment inputs."""
  p = float(config.training.get("augment_p", 0.0) or 0.0)
  if not 0.0 <= p <= 1.0:
    raise UserError(f"config.training.augment_p = {p} must be in [0, 1] (0: off)")
  if p > 0:
    if str(config.training.get("loss", "default")) != "edm":
      raise UserError("config.training.augment_p > 0 is EDM's augmentation: it needs "
                      "config.training.loss = 'edm'")
    dim = int(config.model.get("augment_dim", 0) or 0)
    if dim != edm_augment.AUGMENT_DIM:
      raise UserError(f"config.training.augment_p > 0 conditions the network on "
                      f"{edm_augment.AUGMENT_DIM} augment labels: set "
                      f"config.model.augment_dim = {edm_augment.AUGMENT_DIM}, got {dim}")
  return p


def get_loss_fn(sde: AbstractSDE, config, train: bool = True) -> LossFn:
  """`loss(model, batch, key) -> scalar` for an nnx network, from config.training's
  continuous, reduce_mean, likelihood_weighting and rf_distill_steps (rectified flow),
  loss ("edm": EDM's objective, with training.P_mean, training.P_std and
  model.sigma_data; absent: the process's own), and config.model's num_classes and
  label_dropout.

  `key` is split into the objective's key (times, noise) and the network's dropout key;
  train=False evaluates without dropout (network or label dropout). A class-conditional
  model takes labeled batches {"x0", "label"} (below); in training a batch
  without labels is a UserError, in evaluation (train=False) it is scored at the null
  label, i.e. as the unconditional model. Labels of an unconditional model are ignored.

  The network is wrapped with `models.get_score_fn`, passing it a dropout key split from
  `key`.

  Class-conditional networks (config.model.num_classes > 0) are trained on labeled batches
  {"x0": x_0, "label": y} (y (B,) int): the labels are bound to the network after label
  dropout (config.model.label_dropout = p: each label replaced by the null label
  num_classes with probability p, independently), so that the one network learns both
  p(x | y) and p(x), as classifier-free guidance needs (Ho and Salimans 2022, Alg. 1).

  EDM's augmentation (config.training.augment_p = p > 0, EDM's loss only): in training
  each image batch is augmented by data.edm_augment.augment with probability multiplier p
  and the network is given the 9 augment labels (Karras et al. 2022, App. F.2); the loss
  is then taken on the augmented images. Evaluation (train=False) does not augment.
  """
  num_classes, label_dropout = _label_settings(config)
  tc = config.training
  continuous = bool(tc.continuous)
  native_loss = get_native_loss_fn(sde, continuous=continuous,
                                   reduce_mean=bool(tc.reduce_mean),
                                   likelihood_weighting=bool(tc.likelihood_weighting),
                                   rf_distill_steps=int(tc.get("rf_distill_steps", 0)),
                                   time_range=tc.get("time_range", None),
                                   rf_distill_grid=str(tc.get("rf_distill_grid", "euler")),
                                   objective=str(tc.get("loss", "default")),
                                   sigma_data=float(config.model.get("sigma_data", 0.5)),
                                   p_mean=float(tc.get("P_mean", -1.2)),
                                   p_std=float(tc.get("P_std", 1.2)))

  augment_p = _augment_setting(config)

  def loss_fn(model: nnx.Module, batch, key: jax.Array) -> jax.Array:
    loss_key, dropout_key = jax.random.split(key)
    model_fn = models.get_score_fn(sde, model, train=train, continuous=continuous,
                                   key=dropout_key if train else None)
    batch, labels = _split_labels(batch)
    augment_labels = None
    if augment_p > 0 and train:
      if isinstance(batch, dict) or batch.ndim != 4:
        raise UserError("EDM's augmentation (config.training.augment_p > 0) takes image "
                        f"batches (B, H, W, C), got {jax.tree.map(jnp.shape, batch)}")
      # fold_in(key, 2): the streams of the loss and of label dropout stay as they were.
      batch, augment_labels = edm_augment.augment(jax.random.fold_in(key, 2), batch,
                                                  augment_p)
    if augment_labels is not None:
      plain_fn = model_fn
      model_fn = lambda x, t, c=None: plain_fn(x, t, c, augment_labels)  # noqa: E731
    if num_classes:
      if labels is None and train:
        raise UserError(f"a class-conditional model (config.model.num_classes = "
                        f"{num_classes}) trains on labeled batches {{'x0', 'label'}}; "
                        "the data source gave no labels")
      if labels is not None:
        if train and label_dropout > 0:
          # fold_in, not a third split: the unconditional stream stays as it was.
          labels = drop_labels(jax.random.fold_in(key, 1), labels, label_dropout,
                               num_classes)
        score_fn = model_fn
        model_fn = lambda x, t: score_fn(x, t, labels)  # noqa: E731
    return native_loss(model_fn, batch, loss_key)

  return loss_fn
