"""The training step: one pure update (`make_train_step`), n of them in a `lax.scan`
(`make_multi_step`), and its compiled, sharded form (`compile_train_fn`, the one place
where parallelism is applied).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

import data as data_lib
from data import toy_labels
from models import conv as conv_lib
import sde_lib
from common.errors import UserError
from training import losses, optim
from training.losses import LossFn
from common.mesh import FSDP_AXIS, batch_sharding, put_batch, replicated, state_sharding
from training.state import (TrainState, abstract_train_state, ema_decay,
                            ema_halflife_decay, ema_update)

Batch = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def step_key(state: TrainState) -> jax.Array:
  """The key of the step the state is about to take: fold_in(base key, step)."""
  return jax.random.fold_in(state.key, state.step)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    ema_rate: float, *, ema_warmup: bool = False,
                    ema_schedule: Callable[[jax.Array], jax.Array] | None = None,
                    data_fn: Callable[[jax.Array], Batch] | None = None,
                    preprocess: Callable[[Batch], Batch] | None = None) -> StepFn:
  """One optimizer update, as a pure function.

  loss_fn:    `loss(model, batch, key) -> scalar` (training.losses.get_loss_fn).
  data_fn:    `key -> batch` in model space, used when the step is given batch=None
              (toy data sampled on the device).
  preprocess: applied to a given batch on the device (e.g. the data scaler).
  ema_rate:   ema <- ema_rate * ema + (1 - ema_rate) * params after the update.
  ema_warmup: use min(ema_rate, (1 + n) / (10 + n)) at update n = step + 1 instead
              (RectifiedFlow's EMA; training.state.ema_decay).
  ema_schedule: `step -> decay` of the update that starts at state.step, replacing
              ema_rate (EDM's half-life in images: training.state.ema_halflife_decay).

  metrics: loss (the loss of the parameters before the update) and grad_norm (global L2
  norm of the gradient before clipping), both scalars.

      state', metrics = train_step(state, batch)        # batch: (B, ...) or None

  Step s draws its randomness from fold_in(state.key, s), split into a data key (used to
  sample the batch on the device when `batch` is None, as for toy data) and a loss key
  (times, noise, dropout), so the stream depends only on the seed and the step and a
  resumed run repeats it exactly.
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

    # Reverse mode only: every convolution's weight and input gradients in the form XLA's
    # CPU backend runs fast inside the scan below (models/conv.py).
    with conv_lib.reverse_mode_layouts():
      (loss, model_state), grads = jax.value_and_grad(objective, has_aux=True)(
          state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if ema_schedule is not None:
      rate = ema_schedule(state.step)
    else:
      rate = ema_decay(state.step + 1, ema_rate, True) if ema_warmup else ema_rate
    new_state = state.replace(
        step=state.step + 1, params=params, model_state=model_state,
        opt_state=opt_state, ema_params=ema_update(state.ema_params, params, rate))
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_multi_step(train_step: StepFn) -> Callable[..., tuple[TrainState, Metrics]]:
  """`multi_step(state, batches, n_steps)`: n_steps updates in one `lax.scan`.

  batches: None (each step samples its own), or a pytree whose leaves have a leading
  axis of length n_steps. Metrics come back stacked: loss has shape (n_steps,).
  """

  def multi_step(state: TrainState, batches: Batch, n_steps: int):
    # One lax.scan: every step runs the same compiled body whatever n is, so a run
    # resumed off the n_jitted_steps grid is bitwise equal to an uninterrupted one.
    # XLA's CPU backend runs convolution gradients in a while loop fast only in their
    # canonical layout; models/conv.py writes them so (BENCHMARKS.md, the NCSN++ step).
    if batches is None:
      return jax.lax.scan(lambda s, _: train_step(s, None), state, None, length=n_steps)
    return jax.lax.scan(train_step, state, batches)

  return multi_step


def compile_train_fn(train_step: StepFn, mesh: Mesh, *, host_batches: bool,
                     state_shardings: Any = None):
  """The jitted, sharded n-step function; `jax.jit` is applied here and only here.

  host_batches=True:  fn(state, batches, n), batches of shape (n, B, ...) sharded
                      P(None, 'data').
  host_batches=False: fn(state, n); each step samples its batch on the device.
  state_shardings: the state's shardings (common.mesh.state_sharding: split along
  'fsdp' on a 2-D mesh), in and out; None: replicated.
  (n is static and positional: jit takes no keyword arguments with in_shardings.)
  The state argument is donated: its buffers are reused for the new state, so do not
  use the old state after the call. Each distinct n compiles once.

  Parallelism is applied only here, at the top (docs/ARCHITECTURE.md): the scanned step is
  jitted once, with the state replicated (`NamedSharding(mesh, P())`) and the batch split
  along the mesh axis 'data' (`P(None, 'data')` for the (n_steps, B, ...) stack of host
  batches; a sharding constraint `P('data')` on batches sampled on the device). XLA then
  partitions the computation and all-reduces the gradients; the losses and the model never
  name an axis.
  """
  multi_step = make_multi_step(train_step)
  repl = replicated(mesh)
  state_sh = repl if state_shardings is None else state_shardings
  if host_batches:
    return jax.jit(multi_step,
                   in_shardings=(state_sh, batch_sharding(mesh, stacked=True)),
                   out_shardings=(state_sh, repl), static_argnums=(2,),
                   donate_argnums=(0,))
  return jax.jit(lambda state, n_steps: multi_step(state, None, n_steps),
                 in_shardings=(state_sh,), out_shardings=(state_sh, repl),
                 static_argnums=(1,), donate_argnums=(0,))


def put_state(state: TrainState, mesh: Mesh) -> TrainState:
  """Places the state on the mesh: replicated, or on a mesh with an 'fsdp' axis split
  along it (common.mesh.state_sharding). The result may share buffers with `state`
  (when they are already there), and the train function donates it: do not reuse
  `state` after a call."""
  return jax.device_put(state, state_sharding(state, mesh))


def put_batches(batches: Batch, mesh: Mesh) -> Batch:
  """This process's (n, B_local, ...) host batches -> global arrays sharded
  P(None, 'data') (common.mesh.put_batch)."""
  return put_batch(batches, mesh, stacked=True)


def _data_fns(config, host_batches: bool, mesh: Mesh):
  """(data_fn, preprocess) for make_train_step: device sampling for toy data, the
  scaler for host batches."""
  scaler = data_lib.get_data_scaler(config)
  if host_batches:
    def preprocess(batch):
      # Labeled images {"image", "label"} (class-conditional training) are in data space;
      # other dict batches (reflow pairs) are already in model space.
      if isinstance(batch, dict) and "image" in batch:
        return {"x0": scaler(batch["image"]), "label": batch["label"]}
      return batch if isinstance(batch, dict) else scaler(batch)
    return None, preprocess
  if not data_lib.is_toy(config):
    raise UserError(f"dataset {config.data.dataset!r} (config.data.dataset) is not a toy "
                    "dataset; training on it needs a host data source")
  name, dim = config.data.dataset, int(config.data.dim)
  data_lib.toy.check_name(name, dim)
  batch_size = int(config.training.batch_size)
  sharding = batch_sharding(mesh)
  num_classes = int(config.model.get("num_classes", 0))
  if num_classes:
    # Class-conditional toy training: the mixture component is the label.
    if name not in toy_labels.NUM_CLASSES:
      raise UserError(f"toy dataset {name!r} has no class labels, but "
                      f"config.model.num_classes = {num_classes}; labeled toy datasets: "
                      f"{', '.join(toy_labels.LABELED_DATASETS)}")
    if toy_labels.num_classes(name) != num_classes:
      raise UserError(f"config.model.num_classes = {num_classes}, but toy dataset "
                      f"{name!r} has {toy_labels.num_classes(name)} classes")

    def labeled_data_fn(key):
      x, y = toy_labels.sample_with_labels(key, name, batch_size, dim)
      return jax.lax.with_sharding_constraint({"x0": scaler(x), "label": y}, sharding)

    return labeled_data_fn, None

  def data_fn(key):
    # The constraint splits the sampled batch over the devices, so each computes its
    # share of the loss (data parallelism without naming an axis in the losses).
    return jax.lax.with_sharding_constraint(
        scaler(data_lib.toy.sample(key, name, batch_size, dim)), sharding)

  return data_fn, None


# Fields that only steer the loop, not the compiled step (n_jitted_steps is the static
# scan length, a separate compile per value anyway): a config that differs from an
# earlier one only in these reuses its compiled step; any other field, known or not,
# makes a new one.
LOOP_ONLY_FIELDS = ("n_iters", "n_jitted_steps", "log_freq", "eval_freq",
                    "snapshot_freq", "snapshot_freq_for_preemption", "keep_checkpoints",
                    "snapshot_sampling")
_TRAIN_FNS: dict[tuple, Any] = {}
_MAX_CACHED = 8


def build_train_step(config, mesh: Mesh, *, host_batches: bool) -> StepFn:
  """The single (uncompiled) training step of `config`: its process, loss, optimizer and
  EMA, toy batches sampled on the device or host batches scaled on it."""
  sde = sde_lib.get_sde(config)
  loss_fn = losses.get_loss_fn(sde, config, train=True)
  data_fn, preprocess = _data_fns(config, host_batches, mesh)
  return make_train_step(
      loss_fn, optim.get_optimizer(config), float(config.model.ema_rate),
      ema_warmup=bool(config.model.get("ema_warmup", False)),
      ema_schedule=_ema_schedule(config), data_fn=data_fn, preprocess=preprocess)


def _ema_schedule(config) -> Callable[[jax.Array], jax.Array] | None:
  """EDM's EMA by half-life in images when config.model.ema_halflife_kimg > 0 (with
  config.model.ema_rampup_ratio; None: no ramp-up), replacing ema_rate; else None."""
  m = config.model
  halflife = float(m.get("ema_halflife_kimg", 0) or 0)
  if halflife < 0:
    raise UserError(f"config.model.ema_halflife_kimg = {halflife:g} must be >= 0 "
                    "(0: the EMA rate config.model.ema_rate)")
  if halflife == 0:
    return None
  ratio = m.get("ema_rampup_ratio", None)
  if ratio is not None and not float(ratio) > 0:
    raise UserError(f"config.model.ema_rampup_ratio must be > 0 (None: no ramp-up), "
                    f"got {ratio}")
  batch = int(config.training.batch_size)
  ratio = None if ratio is None else float(ratio)
  return lambda step: ema_halflife_decay(step, batch, halflife, ratio)


def get_train_fn(config, mesh: Mesh, *, host_batches: bool):
  """The compiled n-step training function of `config` on `mesh` (see compile_train_fn):
  the process, loss, optimizer and EMA of the config, toy batches sampled on the device
  or host batches scaled on it. The one place the training step is built (the loop and
  bench/train_step.py call it); cached, so that calling train() again in the same
  process (a rerun, a longer run) does not recompile."""
  key_config = config.to_dict()
  for name in LOOP_ONLY_FIELDS:
    key_config["training"].pop(name, None)
  key = (json.dumps(key_config, sort_keys=True, default=repr), bool(host_batches),
         tuple(d.id for d in mesh.devices.flat), tuple(mesh.shape.items()))
  if key not in _TRAIN_FNS:
    train_step = build_train_step(config, mesh, host_batches=host_batches)
    if len(_TRAIN_FNS) >= _MAX_CACHED:
      _TRAIN_FNS.pop(next(iter(_TRAIN_FNS)))
    shardings = None
    if FSDP_AXIS in mesh.axis_names:
      shardings = state_sharding(abstract_train_state(config), mesh)
    _TRAIN_FNS[key] = compile_train_fn(train_step, mesh, host_batches=host_batches,
                                       state_shardings=shardings)
  return _TRAIN_FNS[key]
