"""Name registry for networks: the one place that maps `config.model.name` to a builder.

A builder is a function `build(config, rngs) -> nnx.Module`. It reads only the fields it
needs from `config` and passes them as keyword arguments to its module, so modules never
see the whole config. Every registered network is called as

    out = net(x, labels, *, train=False, key=None)

x: (B, ...) float array (images NHWC); labels: (B,) float array (a time or a noise level,
as chosen by `models.get_score_fn`); `key` is the dropout key, used only when train=True;
out has the shape of x.
"""
from __future__ import annotations

from typing import Callable

from flax import nnx

Builder = Callable[..., nnx.Module]
_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
  """Decorator: registers `build(config, rngs)` under `name`."""

  def wrap(build: Builder) -> Builder:
    if name in _MODELS:
      raise ValueError(f"model name {name!r} is already registered")
    _MODELS[name] = build
    return build

  return wrap


def registered_models() -> list[str]:
  return sorted(_MODELS)


def get_model(config, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the network named by `config.model.name` with float32 parameters."""
  name = config.model.name
  if name not in _MODELS:
    raise ValueError(
        f"unknown model name {name!r} (config.model.name); "
        f"registered models: {', '.join(registered_models())}")
  return _MODELS[name](config, rngs)
