"""The training step: one pure update, n of them in a `lax.scan`, and its compiled,
sharded form.

    state', metrics = train_step(state, batch)        # batch: (B, ...) or None

Step s draws its randomness from fold_in(state.key, s), split into a data key (used to
sample the batch on the device when `batch` is None, as for toy data) and a loss key
(times, noise, dropout), so the stream depends only on the seed and the step and a
resumed run repeats it exactly.

Parallelism is applied only here, at the top (DESIGN.md): `compile_train_fn` jits the
scanned step once, with the state replicated (`NamedSharding(mesh, P())`) and the batch
split along the mesh axis 'data' (`P(None, 'data')` for the (n_steps, B, ...) stack of
host batches; a sharding constraint `P('data')` on batches sampled on the device).
XLA then partitions the computation and all-reduces the gradients; the losses and the
model never name an axis.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from training.losses import LossFn
from training.state import TrainState, ema_update

Batch = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
DATA_AXIS = "data"


def step_key(state: TrainState) -> jax.Array:
  """The key of the step the state is about to take: fold_in(base key, step)."""
  return jax.random.fold_in(state.key, state.step)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    ema_rate: float, *,
                    data_fn: Callable[[jax.Array], Batch] | None = None,
                    preprocess: Callable[[Batch], Batch] | None = None) -> StepFn:
  """One optimizer update, as a pure function.

  loss_fn:    `loss(model, batch, key) -> scalar` (training.losses.get_loss_fn).
  data_fn:    `key -> batch` in model space, used when the step is given batch=None
              (toy data sampled on the device).
  preprocess: applied to a given batch on the device (e.g. the data scaler).
  ema_rate:   ema <- ema_rate * ema + (1 - ema_rate) * params after the update.

  metrics: loss (the loss of the parameters before the update) and grad_norm (global L2
  norm of the gradient before clipping), both scalars.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    data_key, loss_key = jax.random.split(step_key(state))
    if batch is None:
      if data_fn is None:
        raise ValueError("train_step got no batch and has no data_fn to sample one")
      batch = data_fn(data_key)
    elif preprocess is not None:
      batch = preprocess(batch)

    def objective(params):
      model = nnx.merge(state.graphdef, params, state.model_state)
      loss = loss_fn(model, batch, loss_key)
      # Variables the forward pass updated (batch statistics, ...) come back as aux.
      return loss, nnx.state(model, nnx.Not(nnx.Param))

    (loss, model_state), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, model_state=model_state,
        opt_state=opt_state, ema_params=ema_update(state.ema_params, params, ema_rate))
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_multi_step(train_step: StepFn) -> Callable[..., tuple[TrainState, Metrics]]:
  """`multi_step(state, batches, n_steps)`: n_steps updates in one `lax.scan`.

  batches: None (each step samples its own), or a pytree whose leaves have a leading
  axis of length n_steps. Metrics come back stacked: loss has shape (n_steps,).
  """

  def multi_step(state: TrainState, batches: Batch, n_steps: int):
    if batches is None:
      return jax.lax.scan(lambda s, _: train_step(s, None), state, None, length=n_steps)
    return jax.lax.scan(train_step, state, batches)

  return multi_step


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of one batch (P('data')) or of a stack of them (P(None, 'data'))."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if stacked else P(DATA_AXIS))


def compile_train_fn(train_step: StepFn, mesh: Mesh, *, host_batches: bool):
  """The jitted, sharded n-step function; `jax.jit` is applied here and only here.

  host_batches=True:  fn(state, batches, n), batches of shape (n, B, ...) sharded
                      P(None, 'data').
  host_batches=False: fn(state, n); each step samples its batch on the device.
  (n is static and positional: jit takes no keyword arguments with in_shardings.)
  The state argument is donated: its buffers are reused for the new state, so do not
  use the old state after the call. Each distinct n compiles once.
  """
  multi_step = make_multi_step(train_step)
  repl = replicated(mesh)
  if host_batches:
    return jax.jit(multi_step, in_shardings=(repl, batch_sharding(mesh, stacked=True)),
                   out_shardings=(repl, repl), static_argnums=(2,), donate_argnums=(0,))
  return jax.jit(lambda state, n_steps: multi_step(state, None, n_steps),
                 in_shardings=(repl,), out_shardings=(repl, repl), static_argnums=(1,),
                 donate_argnums=(0,))


def put_state(state: TrainState, mesh: Mesh) -> TrainState:
  """Places the state on the mesh, replicated. The result may share buffers with `state`
  (when they are already there), and the train function donates it: do not reuse
  `state` after a call."""
  return jax.device_put(state, replicated(mesh))


def put_batches(batches: Batch, mesh: Mesh) -> Batch:
  """This process's (n, B_local, ...) host batches -> global arrays sharded P(None, 'data').

  On one host B_local = B; with several, each process passes its own slice and the global
  batch is their concatenation (jax.make_array_from_process_local_data).
  """
  sharding = batch_sharding(mesh, stacked=True)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batches)
