"""Noise-conditional classifiers p_t(y | x_t) for classifier guidance (score_sde trained
its classifier on noisy data, Song et al. 2021 App. I.1): the loss of `get_classifier_loss_fn`,
data drawn on the device, the config the generic training machinery sees
(`classifier_config`), what training.loop.run_loop needs (`classifier_training`), and
restoring the classifier as the `log_prob_fn` of `models.classifier_guidance`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

import data as data_lib
import sde_lib
from data import toy_labels
from models.classifier import ClassifierLogProb, classifier_labels, get_log_prob_fn
from common.errors import UserError
from common import io as cio
from common.io import write_json
from common.keys import fold_stream
from common.mesh import batch_sharding, replicated
from training import optim
from training.restore import restore_model
from training.state import TrainState
from training.step import make_multi_step, make_train_step

CLASSIFIER_SUBDIR = "classifier"
METRICS_FILE = "metrics.jsonl"

LossFn = Callable[[nnx.Module, dict, jax.Array], jax.Array]


def classifier_workdir(workdir: str) -> str:
  """Where the classifier of the run in `workdir` lives: workdir/classifier."""
  return cio.join(workdir, CLASSIFIER_SUBDIR)  # a gs:// URL stays a URL


def classifier_config(config) -> ml_collections.ConfigDict:
  """The config that the generic machinery (models.get_model, training.state,
  training.optim, training.checkpoint) sees for the classifier: `model`, `training` and
  `optim` from config.classifier, `data` and `seed` from config.

  config.classifier (configs/classifier.py):
    model     the network's section, as config.model is for score models (name:
              "mlp_classifier" | "wideresnet_noise_conditional", num_classes, ...)
    ema_rate  EMA of the parameters; the EMA weights are what `restore_classifier` returns
    eps       smallest training time (default config.sampling.eps)
    training  batch_size, n_iters, n_jitted_steps, log_freq, snapshot_freq,
              snapshot_freq_for_preemption, keep_checkpoints
    optim     as config.optim (training/optim.py)

  Raises UserError when config.classifier is missing or lacks a section.
  """
  if "classifier" not in config:
    raise UserError("config has no 'classifier' section; add one with "
                    "configs/classifier.py (e.g. with_toy_classifier(config))")
  c = config.classifier
  for name in ("model", "training", "optim"):
    if name not in c:
      raise UserError(f"config.classifier lacks its '{name}' section")
  out = ml_collections.ConfigDict()
  out.model = ml_collections.ConfigDict(c.model.to_dict())
  out.model.ema_rate = float(c.get("ema_rate", 0.999))
  # The classifier's output is logits: never divided by sigma.
  out.model.scale_by_sigma = False
  out.training = ml_collections.ConfigDict(c.training.to_dict())
  out.training.continuous = True  # the labels are the noise levels themselves
  out.optim = ml_collections.ConfigDict(c.optim.to_dict())
  out.data = ml_collections.ConfigDict(config.data.to_dict())
  out.seed = int(config.seed)
  return out


def _eps(config) -> float:
  """The smallest training time: config.classifier.eps, else config.sampling.eps."""
  sampling = config.get("sampling", None) or {}
  return float(config.classifier.get("eps", sampling.get("eps", 1e-3)))


def _perturb(sde: sde_lib.AbstractSDE, eps: float, x0: jax.Array, key: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
  """(x_t, t): t ~ U(eps, T) (B,), x_t = alpha(t) x0 + sigma(t) z, z ~ N(0, I)."""
  t_key, z_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (x0.shape[0],), minval=eps, maxval=sde.T)
  alpha, sigma = sde.alpha_sigma(t)
  z = jax.random.normal(z_key, x0.shape, x0.dtype)
  shape = (-1,) + (1,) * (x0.ndim - 1)
  return alpha.reshape(shape) * x0 + sigma.reshape(shape) * z, t


def get_classifier_loss_fn(sde: sde_lib.AbstractSDE, eps: float) -> LossFn:
  """`loss(classifier, batch, key) -> scalar`: the mean cross-entropy (nats) of the
  labels batch["y"] (B,) given x_t, batch["x"]: (B, ...) in model space,

      L = E_{(x_0, y), t ~ U(eps, T), z ~ N(0, I)} [ -log softmax(f(x_t, sigma(t)))_y ],
      x_t = alpha(t) x_0 + sigma(t) z,

  with alpha, sigma from `sde.alpha_sigma` of the config's process (the one the score
  model was trained for), so f(x_t, sigma(t)) estimates p_t(y | x_t) at every t the
  sampler visits; the network's labels are `models.classifier.classifier_labels`
  (sigma(t))."""

  def loss_fn(classifier, batch, key):
    xt, t = _perturb(sde, eps, batch["x"], key)
    logits = classifier(xt, classifier_labels(sde, t), train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  return loss_fn


def _accuracy_fn(sde: sde_lib.AbstractSDE, eps: float):
  """`accuracy(classifier, batch, key)`: the fraction of the batch classified right at
  fresh times and noise (a logged metric)."""

  def accuracy(classifier, batch, key):
    xt, t = _perturb(sde, eps, batch["x"], key)
    logits = classifier(xt, classifier_labels(sde, t), train=False)
    return jnp.mean(jnp.argmax(logits, -1) == batch["y"])

  return accuracy


def _image_arrays(config, num_classes: int) -> dict[str, np.ndarray]:
  dataset = data_lib.get_image_dataset(config, "train")
  labels = np.asarray(dataset.labels)
  if labels.size == 0 or labels.min() < 0:
    raise UserError(f"dataset {config.data.dataset!r} has no class labels (a classifier "
                    "needs them; folders need one subfolder per class)")
  if labels.max() >= num_classes:
    raise UserError(f"dataset {config.data.dataset!r} has label {int(labels.max())} but "
                    f"config.classifier.model.num_classes = {num_classes}")
  return {"images": np.asarray(dataset.images), "labels": labels}


def _make_data_fn(config, batch_size: int, sharding, arrays):
  """`data_fn(key) -> {"x": (B, ...) model space, "y": (B,) int32}` for the step.

  arrays: None for toy data, else {"images": uint8 (N, H, W, C), "labels": (N,)}
  (traced: arguments of the compiled function, never baked-in constants)."""
  scaler = data_lib.get_data_scaler(config)
  if arrays is None:
    name, dim = config.data.dataset, int(config.data.dim)

    def toy_fn(key):
      x, y = toy_labels.sample_with_labels(key, name, batch_size, dim)
      return jax.lax.with_sharding_constraint({"x": scaler(x), "y": y}, sharding)

    return toy_fn
  flip = bool(config.data.get("random_flip", False))
  dequantize = bool(config.data.get("uniform_dequantization", False))

  def image_fn(key):
    k_idx, k_flip, k_noise = jax.random.split(key, 3)
    images, labels = arrays["images"], arrays["labels"]
    idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
    pixels = images[idx].astype(jnp.float32)
    if dequantize:
      # (k + u) / 256, u ~ U[0, 1): data.transforms.dequantize's convention.
      u = jax.random.uniform(k_noise, pixels.shape, maxval=1.0 - 2.0**-16)
      x = (pixels + u) / 256.0
    else:
      x = pixels / 255.0
    if flip:
      mirror = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
      x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    return jax.lax.with_sharding_constraint({"x": scaler(x), "y": labels[idx]}, sharding)

  return image_fn


def get_classifier_train_fn(config, mesh, *, image_data: bool):
  """`fn(state, arrays, n) -> (state, {"loss": (n,), "grad_norm": (n,)})`: n updates in
  one lax.scan, jitted once per n, state donated and replicated over `mesh`, each step's
  batch sharded along its 'data' axis. arrays: None (toy data) or the image arrays."""
  cconfig = classifier_config(config)
  sde = sde_lib.get_sde(config)
  loss_fn = get_classifier_loss_fn(sde, _eps(config))
  optimizer = optim.get_optimizer(cconfig)
  batch_size = int(cconfig.training.batch_size)
  sharding = batch_sharding(mesh)

  def multi_step(state: TrainState, arrays: Any, n_steps: int):
    data_fn = _make_data_fn(config, batch_size, sharding, arrays if image_data else None)
    step = make_train_step(loss_fn, optimizer, float(cconfig.model.ema_rate),
                           data_fn=data_fn)
    return make_multi_step(step)(state, None, n_steps)

  return jax.jit(multi_step, static_argnums=(2,), donate_argnums=(0,))


def classifier_training(config, mesh, num_classes: int):
  """(train_fn, log_record) of the classifier of `config` for training.loop.run_loop
  (with classifier_config(config) and workdir/classifier).

  train_fn(state, n): n updates (get_classifier_train_fn) on batches drawn on the device
  from the step key (so a resumed run repeats the stream): toy mixtures
  (data.toy_labels.sample_with_labels: points and their component index), or labeled
  images (DIGITS, MNIST, CIFAR-10, labeled folders and npz) whose 'train' split is placed
  on the mesh once, replicated, each step taking uniformly random indices (with
  replacement) with the data set's random flip and uniform dequantization, then the
  data scaler.
  log_record(state, record): {"step", "loss", "accuracy", "grad_norm"}, where accuracy is
  the EMA weights' on a fresh batch at fresh times (a named key stream below the step's
  own key, so it never reuses a training draw).
  """
  image_data = not data_lib.is_toy(config)
  arrays = None
  if image_data:
    arrays = jax.device_put(_image_arrays(config, num_classes), replicated(mesh))
  multi_step = get_classifier_train_fn(config, mesh, image_data=image_data)
  accuracy_fn = _accuracy_fn(sde_lib.get_sde(config), _eps(config))
  batch_size = int(config.classifier.training.batch_size)
  sharding = batch_sharding(mesh)

  @jax.jit
  def accuracy(classifier, arrays, key):
    d_key, n_key = jax.random.split(key)
    batch = _make_data_fn(config, batch_size, sharding, arrays)(d_key)
    return accuracy_fn(classifier, batch, n_key)

  def train_fn(state: TrainState, n: int):
    return multi_step(state, arrays, n)

  def log_record(state: TrainState, record: dict) -> dict:
    step = int(record["step"])
    key = fold_stream(jax.random.fold_in(state.key, step), "classifier_accuracy")
    acc = float(accuracy(state.model(ema=True), arrays, key))
    logging.info("classifier step %d  loss %.4f  accuracy %.3f", step, record["loss"], acc)
    return {"step": step, "loss": record["loss"], "accuracy": acc,
            "grad_norm": record["grad_norm"]}

  return train_fn, log_record


_LOOP_ONLY = ("n_iters", "n_jitted_steps", "log_freq", "snapshot_freq",
              "snapshot_freq_for_preemption", "keep_checkpoints")
SETTINGS_FILE = "classifier_config.json"


def _settings(config) -> dict:
  """Everything that determines the classifier's training except the loop's own fields:
  the classifier section, the data and the process (with its schedule)."""
  c = config.classifier.to_dict()
  c["training"] = {k: v for k, v in c["training"].items() if k not in _LOOP_ONLY}
  return json.loads(json.dumps(
      {"classifier": c, "data": config.data.to_dict(), "sde": str(config.training.sde),
       "schedule": {k: config.model.get(k) for k in ("beta_min", "beta_max", "sigma_min",
                                                      "sigma_max", "num_scales")},
       "seed": int(config.seed)}, sort_keys=True, default=repr))


def check_settings(config, cdir: str) -> None:
  """Records the settings on the first run; a rerun in the same directory must have the
  same ones (it resumes that run), else UserError naming the fields that differ."""
  path = os.path.join(cdir, SETTINGS_FILE)
  now = _settings(config)
  if not cio.exists(path):
    if jax.process_index() == 0:
      write_json(path, now)
    return
  before = json.loads(cio.read_text(path))
  if before != now:
    def flat(d, prefix=""):
      out = {}
      for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
      return out
    a, b = flat(before), flat(now)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    raise UserError(f"{cdir} holds a classifier trained with other settings (differing: "
                    f"{', '.join(diff)}); use another --workdir or remove {cdir}")


def check_classifier_config(config, cconfig, n_devices: int) -> int:
  """Validates the classifier config against the data; returns num_classes."""
  tc = cconfig.training
  num_classes = int(cconfig.model.get("num_classes", 0) or 0)
  if int(tc.batch_size) % n_devices:
    raise UserError(f"config.classifier.training.batch_size = {tc.batch_size} must be "
                    f"divisible by the number of devices ({n_devices})")
  if int(tc.n_jitted_steps) < 1:
    raise UserError("config.classifier.training.n_jitted_steps must be >= 1, got "
                    f"{tc.n_jitted_steps}")
  if data_lib.is_toy(config):
    name = config.data.dataset
    if name not in toy_labels.NUM_CLASSES:
      raise UserError(f"toy dataset {name!r} has no class labels; labeled toy datasets: "
                      f"{', '.join(toy_labels.LABELED_DATASETS)}")
    if num_classes != toy_labels.num_classes(name):
      raise UserError(f"config.classifier.model.num_classes = {num_classes}, but toy "
                      f"dataset {name!r} has {toy_labels.num_classes(name)} classes")
  return num_classes


def restore_classifier(config, workdir: str, *, ema: bool = True,
                       step: int | None = None) -> tuple[nnx.Module, int]:
  """(classifier network with the EMA (or raw) parameters, step) of the checkpoint at
  `step` (default: the newest intact one) in workdir/classifier, restored as
  `training.restore.restore_model` restores a score model (verified, replicated).

  Raises MissingFileError when there is none, checkpoint.NonFiniteCheckpointError (a
  FloatingPointError) when the saved parameters are not all finite.
  """
  return restore_model(classifier_config(config), classifier_workdir(workdir), ema=ema,
                       step=step, what="classifier checkpoint",
                       train_mode="train_classifier", run_workdir=workdir)


def restore_log_prob_fn(config, workdir: str, class_labels, *, ema: bool = True,
                        step: int | None = None) -> ClassifierLogProb:
  """log p_t(y | x) of the trained classifier in workdir/classifier for the labels
  `class_labels` ((B,) or a scalar), for `models.classifier_guidance(model_fn, ...,
  scale, sde)` with sde = sde_lib.get_sde(config)."""
  classifier, _ = restore_classifier(config, workdir, ema=ema, step=step)
  return get_log_prob_fn(sde_lib.get_sde(config), classifier, class_labels)
