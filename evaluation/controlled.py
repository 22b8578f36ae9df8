"""Controllable generation (Song et al. 2021, Sec. 5 and App. I): the settings of
config.sampling.task (inpaint, colorize, class; modes.controlled_sample.run documents the
fields and outputs), checked before anything is restored; masks, inputs, guided model
functions, the task's sampler, its batches and its picture."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import data as data_lib
import models
import solvers
from common.choices import check_choice
from common.errors import MissingFileError, UserError
from evaluation.samples import positive_int
from common.images import save_png, tile_images
from common.io import file_sha256
from common.keys import stream_key
from common.mesh import shard_outputs
from solvers.from_config import fast_sampler_kwargs
from training.restore import continuous_labels, model_fn_for

TASKS = ("sample", "inpaint", "colorize", "class")
MASKS = ("center", "left_half", "random")
_MAX_SHOWN = 16  # examples per row of the picture


# ---------------------------------------------------------------------------------------
# Settings, checked before anything is restored.

def get_task(config) -> str:
  """config.sampling.task, checked (default "sample")."""
  task = str(config.sampling.get("task", "sample")).lower()
  check_choice(task, TASKS, "config.sampling.task")
  return task


def _num_classes(config) -> tuple[int, int]:
  """(classes of the score model, 0 if unconditional; classes of the classifier, 0 if
  none is configured)."""
  cond = int(config.model.get("num_classes", 0) or 0)
  classifier = 0
  if "classifier" in config and "model" in config.classifier:
    classifier = int(config.classifier.model.get("num_classes", 0) or 0)
  return cond, classifier


def parse_class_labels(text, n: int, num_classes: int) -> np.ndarray:
  """The (n,) int32 labels of config.sampling.class_labels (modes.controlled_sample.run), each
  checked to lie in [0, num_classes)."""
  text = str(text if text is not None else "").strip()
  if not text:
    cycle = np.arange(num_classes)
  else:
    try:
      cycle = np.asarray([int(v) for v in text.replace(" ", "").strip("()[],").split(",")
                          if v != ""])
    except ValueError:
      raise UserError(f"config.sampling.class_labels = {text!r} must be integers "
                      "separated by commas, e.g. '3' or '1,7' ('' = every class in "
                      "turn)") from None
  bad = cycle[(cycle < 0) | (cycle >= num_classes)]
  if bad.size:
    raise UserError(f"class label {int(bad[0])} out of range "
                    f"(config.sampling.class_labels = {text!r}): the model has "
                    f"{num_classes} classes, labels must be in [0, {num_classes})")
  return np.resize(cycle, n).astype(np.int32)


def _guidance(config) -> tuple[float, float]:
  """(guidance_weight, classifier_scale), checked against the model and the task."""
  s = config.sampling
  w, scale = float(s.get("guidance_weight", 0.0)), float(s.get("classifier_scale", 0.0))
  if w < 0 or scale < 0:
    raise UserError(f"config.sampling.guidance_weight = {w} and classifier_scale = "
                    f"{scale} must both be >= 0")
  task = get_task(config)
  cond, classifier = _num_classes(config)
  if task != "class":
    if w or scale:
      raise UserError(f"guidance (guidance_weight = {w}, classifier_scale = {scale}) "
                      f"applies to config.sampling.task = 'class', not {task!r}")
    return w, scale
  if not cond and not scale:
    raise UserError("class-guided sampling on an unconditional model (config.model."
                    "num_classes = 0): train a class-conditional model "
                    "(config.model.num_classes > 0 with label_dropout > 0) or use "
                    "classifier guidance (config.sampling.classifier_scale > 0 with a "
                    "classifier from --mode train_classifier)")
  if w and not cond:
    raise UserError(f"classifier-free guidance (config.sampling.guidance_weight = {w}) "
                    "needs a class-conditional model, but config.model.num_classes = 0; "
                    "set guidance_weight = 0 to use classifier guidance only")
  if w and not float(config.model.get("label_dropout", 0.0) or 0.0):
    raise UserError(f"classifier-free guidance (guidance_weight = {w}) needs a model "
                    "trained with label dropout (config.model.label_dropout > 0): this "
                    "model's null label was never trained")
  if scale and not classifier:
    raise UserError(f"classifier guidance (config.sampling.classifier_scale = {scale}) "
                    "needs config.classifier (configs/classifier.py) with its num_classes")
  if cond and classifier and cond != classifier:
    raise UserError(f"the model has {cond} classes but the classifier {classifier}")
  return w, scale


def _existing(path: str, what: str) -> str:
  path = os.path.expanduser(str(path))
  if not os.path.isfile(path):
    raise MissingFileError(f"{what} {path!r} does not exist")
  return path


# ---------------------------------------------------------------------------------------
# Masks.

def load_mask_file(path: str, shape: tuple[int, ...]) -> np.ndarray:
  """The mask in file `path` (.npz or .png) as float32 of the example shape `shape`
  (1 = known, 0 = generate). Raises UserError for another shape or values not 0/1."""
  path = _existing(path, "mask file (config.sampling.mask_path)")
  if path.lower().endswith(".png"):
    from PIL import Image
    try:
      with Image.open(path) as im:
        mask = np.asarray(im.convert("L"), np.float32) / 255.0
    except OSError as e:
      raise UserError(f"{path}: not a readable PNG ({e})") from None
    mask = (mask >= 0.5).astype(np.float32)
  elif path.lower().endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        if "mask" in f.files:
          mask = f["mask"]
        elif len(f.files) == 1:
          mask = f[f.files[0]]
        else:
          raise UserError(f"{path}: no array 'mask' (found {sorted(f.files)})")
    except (OSError, ValueError, EOFError) as e:
      if isinstance(e, UserError):
        raise
      raise UserError(f"{path}: not a readable .npz archive ({e})") from None
    mask = np.asarray(mask)
    if mask.dtype == bool:
      mask = mask.astype(np.float32)
    if not np.issubdtype(mask.dtype, np.number) or not np.all(np.isin(mask, (0, 1))):
      raise UserError(f"{path}: the mask must hold only 0 (generate) and 1 (known)")
    mask = mask.astype(np.float32)
  else:
    raise UserError(f"mask file {path!r}: expected an .npz or a .png")
  return _mask_to_shape(mask, shape, f"the mask in {path}")


def _mask_to_shape(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
  """mask broadcast to one example's shape, or UserError naming both shapes."""
  ok = [shape]
  if len(shape) == 3:
    ok += [shape[:2], shape[:2] + (1,)]
  if tuple(mask.shape) not in ok:
    raise UserError(f"{what} has shape {tuple(mask.shape)}, but the data's examples "
                    f"have shape {shape} (accepted: "
                    f"{' or '.join(str(s) for s in ok)})")
  if mask.ndim == 2:
    mask = mask[..., None]
  return np.broadcast_to(mask, shape).astype(np.float32)


def named_mask(name: str, shape: tuple[int, ...]) -> np.ndarray:
  """The named mask ("center" or "left_half", modes.controlled_sample.run) of one example."""
  mask = np.ones(shape, np.float32)
  if len(shape) == 1:
    if name == "left_half":
      mask[:max(1, shape[0] // 2)] = 0.0
      return mask
    raise UserError(f"config.sampling.mask = {name!r} is for images; for {shape[0]}-D "
                    "points use 'left_half' (the first half of the coordinates is "
                    "generated), 'random' or a mask_path")
  h, w = shape[:2]
  if name == "center":
    mask[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0.0
  else:
    mask[:, :w // 2] = 0.0
  return mask


def get_mask_fn(config, shape: tuple[int, ...]) -> tuple[Callable[[int, int], np.ndarray],
                                                         dict]:
  """(`mask(i, batch) -> (batch, *shape)` float32 for batch i, the mask's settings)."""
  s = config.sampling
  path = str(s.get("mask_path", "") or "")
  if path:
    mask = load_mask_file(path, shape)
    return (lambda i, b: np.broadcast_to(mask, (b,) + shape).copy(),
            {"mask_path": path, "mask_sha256": file_sha256(os.path.expanduser(path))})
  name = str(s.get("mask", "center")).lower()
  check_choice(name, MASKS, "config.sampling.mask (or give config.sampling.mask_path)")
  if name != "random":
    mask = named_mask(name, shape)
    return lambda i, b: np.broadcast_to(mask, (b,) + shape).copy(), {"mask": name}
  fraction = float(s.get("mask_fraction", 0.5))
  if not 0.0 < fraction < 1.0:
    raise UserError(f"config.sampling.mask_fraction = {fraction} must be in (0, 1) (the "
                    "fraction of pixels generated)")
  key = stream_key(int(config.seed), "mask")
  # Images: one draw per pixel, shared by its channels; points: one per coordinate.
  draw_shape = shape[:2] + (1,) if len(shape) == 3 else shape

  def random_mask(i: int, b: int) -> np.ndarray:
    generate = jax.random.bernoulli(jax.random.fold_in(key, i), fraction,
                                    (b,) + draw_shape)
    return np.broadcast_to(1.0 - np.asarray(generate, np.float32), (b,) + shape).copy()

  return random_mask, {"mask": name, "mask_fraction": fraction}


# ---------------------------------------------------------------------------------------
# Inputs.

def load_inputs(config, n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
  """(n inputs in data space, float32 (n, *shape), their settings) from
  config.sampling.inputs (modes.controlled_sample.run)."""
  source = str(config.sampling.get("inputs", "eval") or "eval")
  toy = data_lib.is_toy(config)
  if source == "eval":
    if toy:
      key = stream_key(int(config.seed), "controlled_inputs")
      x = data_lib.toy.sample(key, config.data.dataset, n, int(config.data.dim))
      return np.asarray(x, np.float32), {"inputs": "eval"}
    images = data_lib.get_image_dataset(config, "test").images
    if len(images) < n:
      raise UserError(f"the test split of {config.data.dataset} has {len(images)} "
                      f"images, fewer than config.eval.num_samples = {n}")
    return images[:n].astype(np.float32) / 255.0, {"inputs": "eval"}
  path = _existing(source, "inputs file (config.sampling.inputs)")
  settings = {"inputs": path, "inputs_sha256": file_sha256(path)}
  if toy:
    try:
      with np.load(path, allow_pickle=False) as f:
        key = next((k for k in ("x", "points") if k in f.files), None)
        if key is None:
          raise UserError(f"{path}: no array 'x' or 'points' (found {sorted(f.files)})")
        x = np.asarray(f[key], np.float32)
    except (OSError, ValueError, EOFError) as e:
      if isinstance(e, UserError):
        raise
      raise UserError(f"{path}: not a readable .npz archive ({e})") from None
  else:
    from data.npz import read_npz
    x = read_npz(path)[0].astype(np.float32) / 255.0
  if tuple(x.shape[1:]) != shape:
    raise UserError(f"{path}: the inputs have shape {tuple(x.shape[1:])} per example, but "
                    f"the data's examples have shape {shape}")
  if len(x) < n:
    raise UserError(f"{path} holds {len(x)} inputs, fewer than config.eval.num_samples "
                    f"= {n}")
  return x[:n], settings


# ---------------------------------------------------------------------------------------
# Model functions.

class ConditionalModelFn(eqx.Module):
  """`model_fn(x, t)` of a class-conditional score function at fixed labels (B,): plain
  conditional sampling (guidance weight 0) with one network call, not two."""

  score_fn: Any
  class_labels: jax.Array

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.score_fn(x, t, self.class_labels)


def class_model_fn(config, sde, model, classifier, labels: np.ndarray, purpose: str):
  """The guided `model_fn(x, t)` for labels (B,): classifier-free guidance of a
  conditional model (weight 0: the conditional model) and/or classifier guidance."""
  w, scale = _guidance(config)
  continuous = continuous_labels(config, purpose)
  labels = jnp.asarray(labels, jnp.int32)
  if int(config.model.get("num_classes", 0) or 0):
    if w:
      fn = models.get_guided_score_fn(sde, model, w, labels, continuous=continuous)
    else:
      fn = ConditionalModelFn(models.get_score_fn(sde, model, continuous=continuous),
                              labels)
  else:
    fn = model_fn_for(config, sde, model, purpose)
  if scale:
    from models.classifier import get_log_prob_fn
    fn = models.classifier_guidance(fn, get_log_prob_fn(sde, classifier, labels), scale,
                                    sde)
  return fn


# ---------------------------------------------------------------------------------------
# Pictures.

def _tile_rows(rows: list[np.ndarray], names: list[str], path: str, title: str) -> str:
  """Rows of images (each (n, H, W, C) in [0, 1]) as one grid with a name per row."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ncol = max(len(r) for r in rows)
  h, w, c = rows[0].shape[1:]
  blank = np.ones((1, h, w, c), np.float32)
  stack = np.concatenate([np.concatenate([r] + [blank] * (ncol - len(r)))
                          for r in rows])
  grid = tile_images(stack, ncol)
  fig, ax = plt.subplots(figsize=(max(3.0, ncol * w / 12 + 1), max(2.0, len(rows) * h / 12)))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None,
            vmin=0, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([1 + i * (h + 1) + h / 2 for i in range(len(rows))])
  ax.set_yticklabels(names)
  ax.set_title(title)
  save_png(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
  plt.close(fig)
  return path


def save_picture(task: str, path: str, samples: np.ndarray, inputs: np.ndarray | None,
                 mask: np.ndarray | None, labels: np.ndarray | None, nfe: float) -> str:
  """samples.png of the task (modes.controlled_sample.run); returns its path."""
  from evaluation import plots
  title = f"{task} (NFE {nfe:.0f})"
  if samples.ndim == 2:
    if task == "class":
      panels = {f"class {k}": samples[labels == k] for k in np.unique(labels)[:10]}
    else:
      panels = {"inputs": inputs, f"samples (NFE {nfe:.0f})": samples}
    return plots.scatter(panels, path, title=title)
  n = min(len(samples), _MAX_SHOWN)
  if task == "inpaint":
    observed = inputs[:n] * mask[:n] + 0.5 * (1.0 - mask[:n])
    return _tile_rows([inputs[:n], mask[:n], observed, samples[:n]],
                      ["input", "mask", "observed", "samples"], path, title)
  if task == "colorize":
    gray = np.repeat(inputs[:n].mean(-1, keepdims=True), inputs.shape[-1], -1)
    return _tile_rows([inputs[:n], gray, samples[:n]], ["original", "gray", "samples"],
                      path, title)
  classes = np.unique(labels)[:_MAX_SHOWN]
  rows = [samples[labels == k][:_MAX_SHOWN] for k in classes]
  return _tile_rows(rows, [f"class {k}" for k in classes], path, title)


# ---------------------------------------------------------------------------------------
# A task: its settings checked, its sampler, its batches.


@dataclasses.dataclass
class Task:
  """A controllable-generation run, checked before any checkpoint is restored.

  inputs: (n_batches * batch, ...) data-space inputs wrapped to whole batches (inpaint,
  colorize), labels: (n_batches * batch,) int32 (class), mask_fn: `mask(i, batch)`
  (inpaint); settings: what the result directory's key adds to the sampling settings.
  """

  name: str
  method: str
  n: int
  batch: int
  shape: tuple[int, ...]
  settings: dict[str, Any]
  inputs: np.ndarray | None = None
  labels: np.ndarray | None = None
  mask_fn: Callable[[int, int], np.ndarray] | None = None
  classifier_scale: float = 0.0

  @property
  def n_batches(self) -> int:
    return -(-self.n // self.batch)


def get_task_settings(config) -> Task:
  """config.sampling.task with every user choice checked (modes.controlled_sample.run); raises
  UserError for plain sampling (task 'sample') and for any bad setting or input."""
  name = get_task(config)
  if name == "sample":
    raise UserError("config.sampling.task = 'sample' is plain sampling, not a "
                    "controllable-generation task")
  s = config.sampling
  method = str(s.method).lower()
  n = positive_int(config.eval.num_samples, "config.eval.num_samples")
  batch = min(positive_int(config.eval.batch_size, "config.eval.batch_size"), n)
  shape = data_lib.get_data_shape(config)
  _, scale = _guidance(config)
  task = Task(name, method, n, batch, shape, {"task": name}, classifier_scale=scale)
  if name in ("inpaint", "colorize") and method not in ("pc", "fast"):
    raise UserError(f"config.sampling.task = {name!r} runs on the predictor-corrector "
                    f"sampler or a fast sampler: set config.sampling.method to 'pc' or "
                    f"'fast' (got {method!r})")
  if name == "colorize" and (len(shape) != 3 or shape[-1] != 3):
    what = (f"{shape[-1]} channel(s)" if len(shape) == 3 else f"{shape[0]}-D points")
    raise UserError(f"colorization needs RGB images (3 channels), but "
                    f"{config.data.dataset} has {what} (config.data.num_channels)")
  if name == "inpaint":
    task.mask_fn, mask_settings = get_mask_fn(config, shape)
    task.settings.update(mask_settings)
  if name == "class":
    cond, classifier_classes = _num_classes(config)
    task.labels = parse_class_labels(s.get("class_labels", ""), task.n_batches * batch,
                                     cond or classifier_classes)
  else:
    inputs, input_settings = load_inputs(config, n, shape)
    task.settings.update(input_settings)
    # Wrapped to whole batches; the extra outputs are trimmed off at the end.
    task.inputs = np.resize(inputs, (task.n_batches * batch,) + shape)
  return task


def get_task_sampler(config, sde, task: Task) -> Callable:
  """`run(key, model_fn, data, mask) -> (x, nfe)` for one batch of the task, split over
  the devices: score_sde's PC inpainter or colorizer, the fast samplers with the same
  replacement rule (method 'fast'), or the configured sampler (class)."""
  s = config.sampling
  bshape = (task.batch,) + task.shape
  sampler_kw = dict(predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                    n_steps=s.n_steps_each, eps=float(s.get("eps", 1e-3)),
                    denoise=bool(s.noise_removal),
                    probability_flow=bool(s.probability_flow),
                    rule=str(s.get("replacement", "ours")))
  if task.name in ("inpaint", "colorize") and task.method == "fast":
    if sampler_kw["rule"] != "ours":
      raise UserError(f"config.sampling.replacement = {sampler_kw['rule']!r} is a PC rule; "
                      f"the fast samplers replace with 'ours' only")
    fast_kw = fast_sampler_kwargs(config)
    fast_method = fast_kw.pop("method")
    if task.name == "inpaint":
      run = solvers.get_fast_inpainter(sde, bshape, method=fast_method, **fast_kw)
    else:
      colorize = solvers.get_fast_colorizer(sde, bshape, method=fast_method, **fast_kw)
      run = lambda key, model_fn, data, mask: colorize(key, model_fn, data)
  elif task.name == "inpaint":
    run = solvers.get_inpainter(sde, bshape, **sampler_kw)
  elif task.name == "colorize":
    colorize = solvers.get_colorizer(sde, bshape, **sampler_kw)
    run = lambda key, model_fn, data, mask: colorize(key, model_fn, data)
  else:
    sampler = solvers.get_sampling_fn(config, sde, bshape, method=task.method)
    run = lambda key, model_fn, data, mask: sampler(key, model_fn)
  return shard_outputs(run, n_batched=1, n_outputs=2, batch_size=task.batch)


def sample_task(config, sde, model, classifier, task: Task, key: jax.Array
                ) -> dict[str, Any]:
  """The task's samples from the network `model` (and the noise-conditional `classifier`
  for classifier guidance, else None): batch i with key fold_in(key, i). Returns the
  arrays of samples.npz: "samples" (n, ...) data space, "nfe" (mean per batch), and
  "inputs", "mask" or "class_labels" as the task has them (modes.controlled_sample.run)."""
  run = get_task_sampler(config, sde, task)
  scaler = data_lib.get_data_scaler(config)
  inverse_scaler = data_lib.get_data_inverse_scaler(config)
  out, masks, nfes = [], [], []
  for i in range(task.n_batches):
    sl = slice(i * task.batch, (i + 1) * task.batch)
    data = mask = None
    if task.name == "class":
      model_fn = class_model_fn(config, sde, model, classifier, task.labels[sl],
                                task.method)
    else:
      model_fn = model_fn_for(config, sde, model, "pc")
      x = task.inputs[sl]
      if task.name == "colorize":
        x = np.repeat(x.mean(-1, keepdims=True), 3, -1)  # gray, equal channels
      data = scaler(jnp.asarray(x))
      if task.name == "inpaint":
        mask = task.mask_fn(i, task.batch)
        masks.append(mask)
        mask = jnp.asarray(mask)
    x, nfe = run(jax.random.fold_in(key, i), model_fn, data, mask)
    out.append(np.asarray(inverse_scaler(x)))
    nfes.append(float(nfe))
  arrays: dict[str, Any] = {"samples": np.concatenate(out)[:task.n],
                            "nfe": float(np.mean(nfes))}
  if task.inputs is not None:
    arrays["inputs"] = task.inputs[:task.n]
  if masks:
    arrays["mask"] = np.concatenate(masks)[:task.n]
  if task.labels is not None:
    arrays["class_labels"] = task.labels[:task.n]
  return arrays
