"""Networks holding random parameter values without initialising them, for tests whose
networks only need arbitrary values (checkpoint round trips, import): `random_net`."""
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models

_GAINS = ("scale", "gamma", "alpha")  # normalisation gains: drawn near one


def fill(net: nnx.Module, seed: int) -> nnx.Module:
  """Every variable of `net` (concrete or abstract) set to numpy draws: N(0, 1/fan_in) for
  kernels (fan_in: the product of all axes but the last), 1 + N(0, 0.1^2) for
  normalisation gains, N(0, 0.1^2) for the rest, so that no zero or one can hide a
  misplaced tensor. float32; returns net."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(net, nnx.Variable)):
    shape = tuple(var.shape)
    noise = rng.standard_normal(shape).astype(np.float32)
    if len(shape) >= 2:
      value = noise / np.sqrt(np.prod(shape[:-1], dtype=np.float32))
    else:
      value = 0.1 * noise + (1.0 if path[-1] in _GAINS else 0.0)
    var.set_value(jnp.asarray(value, jnp.float32))
  return net


_SKELETONS: dict[str, nnx.Module] = {}


def abstract_net(config) -> nnx.Module:
  """`models.get_model(config)` built abstractly (nnx.eval_shape), a fresh copy per call.
  One skeleton is kept per config: tracing NCSNv2's construction takes ~1 s on CPU, most
  of it in flax's RNG-counter updates (each builds a tracer error message that searches
  the trace so far: jax's _origin_msg)."""
  key = config.to_json_best_effort(sort_keys=True)
  if key not in _SKELETONS:
    _SKELETONS[key] = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))
  return nnx.clone(_SKELETONS[key])


def random_net(config, seed: int = 1) -> nnx.Module:
  """`models.get_model(config)` holding `fill`'s values, on `abstract_net`: initialising
  it would compile one random program per distinct variable shape (~0.35 s each on CPU,
  ~20 s for a tiny NCSN++) for values that are replaced anyway."""
  return fill(abstract_net(config), seed)
