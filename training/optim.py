"""The optimizer from `config.optim`: Adam(W) with linear warm-up and global-norm clipping,
on score_sde's learning-rate schedule (`get_optimizer` gives the update rule).
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

from common.errors import UserError

# The one place that maps config.optim.optimizer to an optax transformation.
_OPTIMIZERS = ("adam", "adamw")


def lr_rampup_schedule(lr: float, rampup_kimg: float, batch_size: int) -> optax.Schedule:
  """EDM's ramp-up in images: lr_c = lr * min(c B / (1000 rampup_kimg), 1) at update count
  c = 0, 1, ... (NVlabs/edm training_loop.py: lr * min(cur_nimg / (lr_rampup_kimg * 1000),
  1) with cur_nimg = c B, the images seen before the update; B = batch_size)."""
  rampup_nimg = max(float(rampup_kimg) * 1000.0, 1e-8)
  per_update = float(batch_size) / rampup_nimg
  return lambda count: lr * jnp.minimum(count * per_update, 1.0)


def get_lr_schedule(config) -> optax.Schedule:
  """lr_c = lr * min(c / warmup, 1) for update count c = 0, 1, ...; constant if warmup <= 0;
  with config.optim.lr_rampup_kimg > 0, EDM's ramp-up in images instead
  (`lr_rampup_schedule`, B = config.training.batch_size).

  c counts updates from 0, so the first update has lr_0 = 0 when warmup > 0: the same
  schedule as score_sde's `optimization_manager` (lr * min(step / warmup, 1) at the
  state's step before the update).
  """
  lr = float(config.optim.lr)
  warmup = int(config.optim.warmup)
  rampup_kimg = float(config.optim.get("lr_rampup_kimg", 0) or 0)
  if rampup_kimg < 0:
    raise UserError(f"config.optim.lr_rampup_kimg = {rampup_kimg:g} must be >= 0 "
                    "(0: no ramp-up)")
  if rampup_kimg > 0:
    if warmup > 0:
      raise UserError(f"config.optim.warmup = {warmup} (steps) and lr_rampup_kimg = "
                      f"{rampup_kimg:g} (images) both ramp the learning rate up; set one "
                      "of them to 0")
    return lr_rampup_schedule(lr, rampup_kimg, int(config.training.batch_size))
  if warmup <= 0:
    return optax.constant_schedule(lr)
  # Written out rather than optax.linear_schedule, whose interpolation is off by a few
  # float32 ulps at the warm-up steps.
  return lambda count: lr * jnp.minimum(count / warmup, 1.0)


def get_optimizer(config) -> optax.GradientTransformation:
  """Builds the optimizer described by `config.optim`.

  Fields: optimizer ('Adam' or 'AdamW', case-insensitive; Adam with weight_decay > 0 is
  AdamW, decoupled decay as in flax.optim.Adam that score_sde used), lr, beta1, eps,
  weight_decay, warmup (steps of linear warm-up), grad_clip (global-norm clipping
  threshold; < 0 disables it), amsgrad (NCSNv2's flag: AMSGrad's running maximum of the
  second moment; default False).

  The update, per step:

      g     <- g * min(1, grad_clip / ||g||_2)             (if grad_clip > 0; global norm)
      u     <- Adam(g; b1 = beta1, b2 = 0.999, eps)       (Kingma & Ba 2015)
      u     <- u + weight_decay * params                   (if weight_decay > 0: AdamW)
      theta <- theta - lr_c * u,   lr_c = lr * min(c / warmup, 1)
  """
  o = config.optim
  name = str(o.optimizer).lower()
  if name not in _OPTIMIZERS:
    raise UserError(f"unknown optimizer {o.optimizer!r} (config.optim.optimizer); "
                    f"choices: {', '.join(_OPTIMIZERS)}")
  grad_clip = float(o.grad_clip)
  if grad_clip == 0:
    # Clipping to norm 0 would zero every update (and 0/0 for zero gradients).
    raise UserError("config.optim.grad_clip = 0 would zero every update; use a "
                    "positive threshold, or a negative value to disable clipping")
  schedule = get_lr_schedule(config)
  weight_decay = float(o.get("weight_decay", 0.0))
  if bool(o.get("amsgrad", False)):
    # AMSGrad (Reddi et al. 2018) as optax writes it: the running maximum of the
    # bias-corrected second moment. (PyTorch, which NCSNv2 used, takes the maximum before
    # the correction; the two differ only while 1 - 0.999^c is far from 1.)
    adam = optax.chain(optax.scale_by_amsgrad(b1=float(o.beta1), eps=float(o.eps)),
                       optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(schedule))
  elif weight_decay > 0:
    adam = optax.adamw(schedule, b1=float(o.beta1), eps=float(o.eps),
                       weight_decay=weight_decay)
  else:
    adam = optax.adam(schedule, b1=float(o.beta1), eps=float(o.eps))
  if grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam)
  return adam
