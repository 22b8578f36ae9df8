"""Name registry for networks: the one place that maps `config.model.name` to a network
(`register_model` on the builder, `get_model` to build; the backbone contract:
`register_model`)."""
from __future__ import annotations

from typing import Callable, NamedTuple

from flax import nnx

from common.choices import check_choice
from common.errors import UserError
from models.edm_precond import EDMPrecond
from models.precond import Precond

Builder = Callable[..., nnx.Module]


class _Entry(NamedTuple):
  build: Builder
  image: bool


_MODELS: dict[str, _Entry] = {}


def register_model(name: str, *, image: bool = True) -> Callable[[Builder], Builder]:
  """Decorator: registers `build(config, rngs) -> backbone` under `name`.

  image: the network takes image data in [0, 1], which get_model maps to [-1, 1] unless
  config.data.centered (score_sde's convention); False for networks on other data (the
  toy MLP), whose input is passed through unchanged.

  A builder is a function `build(config, rngs) -> nnx.Module` returning a backbone. It reads
  the fields it needs from `config.model` (and the data shape, image_size / num_channels /
  dim, from `config.data`) and passes them as keyword arguments to its module, so modules
  never see the whole config. Every backbone is called as

      out = backbone(x, labels, *, train=False, key=None)

  x: (B, ...) float array (images NHWC); labels: (B,) float array (a time, a noise level or
  a noise-level index, as chosen by `models.get_score_fn`); `key` is the dropout key, used
  only when train=True; out has the shape of x.

  `get_model` wraps the backbone in `models.precond.Precond`, which adds score_sde's input
  centering and 1/sigma output scaling, so that `get_model(config, rngs)(x, labels)` equals
  score_sde's `model.apply(x, labels)`.
  """

  def wrap(build: Builder) -> Builder:
    if name in _MODELS:
      raise ValueError(f"model name {name!r} is already registered")
    _MODELS[name] = _Entry(build, image)
    return build

  return wrap


def registered_models() -> list[str]:
  return sorted(_MODELS)


def get_model(config, rngs: nnx.Rngs) -> Precond | EDMPrecond:
  """The network named by `config.model.name`, float32 parameters, with score_sde's
  semantics: a `Precond` around the registered backbone (at attribute `backbone`); with
  config.model.precond = "edm", EDM's denoiser `models.edm_precond.EDMPrecond` instead
  (config.model.sigma_data; absent: 0.5), which needs the EDM process and, for image
  networks, centered data.

  Reads config.model.{name, scale_by_sigma} (absent: False), config.training.continuous,
  config.data.centered (image networks), and config.model.{sigma_min, sigma_max,
  num_scales} when scale_by_sigma is on with discrete labels. Parameter initialisation
  is the backbone's alone (the wrapper has no variables), so a seed gives the same
  parameters as the backbone built by itself.
  """
  name = config.model.name
  check_choice(name, registered_models(), "model name")
  entry = _MODELS[name]
  m = config.model
  precond = str(m.get("precond", "score_sde"))
  check_choice(precond, ("score_sde", "edm"), "preconditioning (config.model.precond)")
  if precond == "edm":
    # Checked before the backbone is built: these are cheap and say what to change.
    if str(config.training.sde).lower() != "edm":
      raise UserError(f"config.model.precond = 'edm' feeds the network sigma = t and "
                      f"makes it a denoiser: it needs config.training.sde = 'edm', got "
                      f"{config.training.sde!r}")
    if entry.image and not bool(config.data.centered):
      raise UserError("config.model.precond = 'edm' takes image data in [-1, 1] "
                      "(sigma_data = 0.5): set config.data.centered = True")
    return EDMPrecond(entry.build(config, rngs), sigma_data=float(m.get("sigma_data", 0.5)))
  backbone = entry.build(config, rngs)
  scale_by_sigma = bool(m.get("scale_by_sigma", False))
  continuous = bool(config.training.continuous)
  table = {}
  if scale_by_sigma and not continuous:
    table = dict(sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max),
                 num_scales=int(m.num_scales))
  return Precond(backbone, center_input=entry.image and not bool(config.data.centered),
                 scale_by_sigma=scale_by_sigma, continuous=continuous, **table)
