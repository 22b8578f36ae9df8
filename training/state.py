"""The train state (step, parameters, other model state, optimizer state, EMA, PRNG key) as
a pytree of arrays, so that the whole training step is a pure function `state -> state`
that jax.jit compiles and donates and orbax saves and restores leaf by leaf.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

import models
from training import optim


class TrainState(struct.PyTreeNode):
  """Everything that determines the rest of a training run.

  step:        int32 scalar, the number of optimizer updates done so far.
  params:      nnx.State of the network's nnx.Param variables.
  model_state: nnx.State of its other variables (e.g. batch statistics; often empty).
  opt_state:   the optax state for `params`.
  ema_params:  exponential moving average of `params` (what is sampled from).
  key:         raw uint32 PRNG key (2,); step s uses fold_in(key, s), so the random stream
               depends only on (seed, s) and resumes exactly from a checkpoint.
  graphdef:    the network's structure (static: not saved, rebuilt from the config).

  The state is a pytree of arrays (plus the network's static `graphdef`), so the whole
  training step is a pure function `state -> state` that jax.jit compiles and donates, and
  orbax saves and restores it leaf by leaf. The network is rebuilt inside the step by
  `nnx.merge(state.graphdef, state.params, state.model_state)`.
  """

  step: jax.Array
  params: nnx.State
  model_state: nnx.State
  opt_state: optax.OptState
  ema_params: nnx.State
  key: jax.Array
  graphdef: Any = struct.field(pytree_node=False)

  def model(self, ema: bool = False) -> nnx.Module:
    """The network with the current (or, with ema=True, the EMA) parameters."""
    return nnx.merge(self.graphdef, self.ema_params if ema else self.params,
                     self.model_state)


def ema_update(ema_params, params, rate):
  """ema <- rate * ema + (1 - rate) * params, leaf by leaf (score_sde's EMA); rate is a
  float or a traced scalar (ema_decay)."""
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def ema_decay(num_updates: jax.Array, rate: float, warmup: bool) -> jax.Array:
  """The EMA decay of update number `num_updates` (1 for the first update): `rate`, or
  with warmup=True min(rate, (1 + n) / (10 + n)), n = num_updates, the warm-up of
  RectifiedFlow's models/ema.py (from TensorFlow's ExponentialMovingAverage with
  num_updates), which lets the average forget the random initialisation early on:
  decay 2/11 at the first update, 0.5 at the 8th, 0.9 at the 80th. float32 scalar."""
  rate = jnp.asarray(rate, jnp.float32)
  if not warmup:
    return rate
  n = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(rate, (1.0 + n) / (10.0 + n))


def ema_halflife_decay(step: jax.Array, batch_size: int, halflife_kimg: float,
                       rampup_ratio: float | None) -> jax.Array:
  """EDM's EMA decay of update number `step` (0 for the first update), from a half-life in
  images (NVlabs/edm training_loop.py):

      h    = 1000 halflife_kimg,  or min(h, rampup_ratio * n) with a ramp-up,
      beta = 0.5 ** (B / max(h, 1e-8)),

  n = step * B the images seen before this update, B = batch_size; the average then
  halves its memory every h images. With the ramp-up, beta = 0 at the first update (the
  average starts at the parameters) and the half-life grows as rampup_ratio of the images
  seen until it reaches h. float32, step's shape."""
  h = jnp.float32(float(halflife_kimg) * 1000.0)
  if rampup_ratio is not None:
    n = jnp.asarray(step, jnp.float32) * float(batch_size)
    h = jnp.minimum(h, n * float(rampup_ratio))
  beta = jnp.power(jnp.float32(0.5), float(batch_size) / jnp.maximum(h, 1e-8))
  return jnp.broadcast_to(beta, jnp.shape(step))


def create_train_state(config, optimizer: optax.GradientTransformation | None = None
                       ) -> TrainState:
  """The state at step 0: the network from `config.model` initialised with
  `config.seed`, EMA equal to the initial parameters, and the base key from the seed.

  The network's initialisation and the training stream use independent keys split from
  the seed's key.
  """
  init_key, _ = _seed_keys(config)
  model = models.get_model(config, nnx.Rngs(init_key))
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return state_from_params(config, graphdef, params, model_state, optimizer=optimizer)


def _seed_keys(config) -> tuple[jax.Array, jax.Array]:
  # Raw uint32 key data rather than a typed key: plain arrays for orbax and sharding.
  seed_key = jax.random.key_data(jax.random.key(int(config.seed)))
  init_key, train_key = jax.random.split(seed_key)
  return init_key, train_key


def state_from_params(config, graphdef: Any, params: nnx.State, model_state: nnx.State,
                      optimizer: optax.GradientTransformation | None = None,
                      step: int = 0) -> TrainState:
  """The state at `step` of a network given by its parts (nnx.split(net, nnx.Param, ...)):
  a fresh optimizer state for `params`, EMA equal to them, and the training stream's key
  from config.seed, as `create_train_state` makes for an initialised network (the import
  mode uses it for imported weights without computing an initialisation)."""
  optimizer = optimizer or optim.get_optimizer(config)
  return TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=optimizer.init(params),
      # A copy, so that donating `params` never invalidates the EMA buffers.
      ema_params=jax.tree.map(jnp.copy, params),
      key=_seed_keys(config)[1],
      graphdef=graphdef)


def abstract_train_state(config, optimizer: optax.GradientTransformation | None = None
                         ) -> TrainState:
  """The state's shapes and dtypes (jax.ShapeDtypeStruct leaves) without computing it:
  the restore target for checkpoints."""
  return jax.eval_shape(lambda: create_train_state(config, optimizer))
