"""Toy distributions, sampled exactly and on the device (`sample`, jittable), with exact
log-densities where they have a closed form (`log_density`)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from common.choices import check_choice
from common.errors import UserError

# Parameters of the distributions (fixed, so the exact densities below are known).
GAUSSIAN_MEAN = 1.0
GAUSSIAN_STD = 0.5
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.2
NOISE_STD = 0.05
# two_gaussians: an equal mixture of N((+-c, 0), s^2 I), the two-mode target of Liu et al.'s
# 2-D reflow illustrations (well separated: the 1-rectified flow's paths must bend).
TWO_GAUSSIANS_CENTRE = 2.0
TWO_GAUSSIANS_STD = 0.3


# Each sampler returns (points (n, dim), component (n,) or None): the mixture component
# every point was drawn from, the class label of data.toy_labels (None for distributions
# that are not mixtures of named parts).


def _gaussian(key, n, dim):
  return GAUSSIAN_MEAN + GAUSSIAN_STD * jax.random.normal(key, (n, dim)), None


def _eight_gaussians(key, n, dim):
  k1, k2 = jax.random.split(key)
  k = jax.random.randint(k1, (n,), 0, 8)
  angle = k * (2 * math.pi / 8)
  centres = EIGHT_GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
  return centres + EIGHT_GAUSSIANS_STD * jax.random.normal(k2, (n, 2)), k


def _checkerboard(key, n, dim):
  # Uniform on the 8 dark unit squares of a 4 x 4 board on [-2, 2]^2 (as in FFJORD).
  k1, k2, k3 = jax.random.split(key, 3)
  x1 = jax.random.uniform(k1, (n,), minval=-2.0, maxval=2.0)
  x2 = jax.random.uniform(k2, (n,)) - 2.0 * jax.random.randint(k3, (n,), 0, 2)
  x2 = x2 + jnp.mod(jnp.floor(x1), 2)
  # The component is the dark square the point lies in: 2 col + row // 2.
  col = jnp.clip(jnp.floor(x1) + 2, 0, 3).astype(jnp.int32)
  row = jnp.clip(jnp.floor(x2) + 2, 0, 3).astype(jnp.int32)
  return jnp.stack([x1, x2], axis=1), 2 * col + row // 2


def _two_moons(key, n, dim):
  k1, k2, k3 = jax.random.split(key, 3)
  s = jax.random.uniform(k1, (n,), maxval=math.pi)
  upper = jax.random.bernoulli(k2, 0.5, (n,))
  x = jnp.where(upper, jnp.cos(s), 1.0 - jnp.cos(s))
  y = jnp.where(upper, jnp.sin(s), 0.5 - jnp.sin(s))
  pts = jnp.stack([x - 0.5, y - 0.25], axis=1) * 1.5
  return pts + NOISE_STD * 2 * jax.random.normal(k3, (n, 2)), upper


def _swiss_roll(key, n, dim):
  k1, k2 = jax.random.split(key)
  s = 1.5 * math.pi * (1 + 2 * jax.random.uniform(k1, (n,)))
  pts = jnp.stack([s * jnp.cos(s), s * jnp.sin(s)], axis=1) / 5.0
  return pts + NOISE_STD * jax.random.normal(k2, (n, 2)), None


def _two_gaussians(key, n, dim):
  k1, k2 = jax.random.split(key)
  upper = jax.random.bernoulli(k1, 0.5, (n,))
  sign = 2.0 * upper.astype(jnp.float32) - 1.0
  centres = jnp.stack([TWO_GAUSSIANS_CENTRE * sign, jnp.zeros_like(sign)], axis=1)
  return centres + TWO_GAUSSIANS_STD * jax.random.normal(k2, (n, 2)), upper


def _circles(key, n, dim):
  k1, k2, k3 = jax.random.split(key, 3)
  inner = jax.random.bernoulli(k1, 0.5, (n,))
  radius = jnp.where(inner, 1.0, 2.0)
  angle = jax.random.uniform(k2, (n,), maxval=2 * math.pi)
  pts = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
  return pts + NOISE_STD * jax.random.normal(k3, (n, 2)), ~inner


_SAMPLERS = {
    "gaussian": _gaussian,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "two_moons": _two_moons,
    "swiss_roll": _swiss_roll,
    "circles": _circles,
    "two_gaussians": _two_gaussians,
}
TOY_DATASETS = tuple(sorted(_SAMPLERS))


def check_name(name: str, dim: int = 2) -> None:
  check_choice(name, TOY_DATASETS, "toy dataset")
  if name != "gaussian" and dim != 2:
    raise UserError(f"toy dataset {name!r} is 2-D, but dim={dim} was asked for "
                    "(only 'gaussian' takes any dim)")


def sample(key: jax.Array, name: str, n: int, dim: int = 2) -> jax.Array:
  """n exact samples of the named distribution: (n, dim) float32.

  `sample(key, name, n, dim=2)` is pure and jittable: the training step draws its batch from
  the step's key inside the compiled loop, so toy data never crosses from the host.
  `log_density(name, x)` is the exact log-density (nats) where it has a closed form
  (gaussian, eight_gaussians, checkerboard, two_gaussians), for comparing a model's
  likelihood with the truth.
  """
  return sample_with_components(key, name, n, dim)[0]


def sample_with_components(key: jax.Array, name: str, n: int, dim: int = 2
                           ) -> tuple[jax.Array, jax.Array | None]:
  """`sample`'s points and the mixture component each came from: ((n, dim) float32,
  (n,) int32, or None for the gaussian and swiss_roll, which have no named parts)."""
  check_name(name, dim)
  x, component = _SAMPLERS[name](key, n, dim)
  return x.astype(jnp.float32), (None if component is None
                                 else component.astype(jnp.int32))


def has_density(name: str) -> bool:
  return name in ("gaussian", "eight_gaussians", "checkerboard", "two_gaussians")


def log_density(name: str, x: jax.Array) -> jax.Array:
  """Exact log-density (nats) of the named distribution at x: (B, dim) -> (B,).

  Checkerboard's density is 1/8 on the dark squares and 0 elsewhere (log = -inf).
  """
  check_name(name, x.shape[-1])
  d = x.shape[-1]
  if name == "gaussian":
    sq = jnp.sum((x - GAUSSIAN_MEAN) ** 2, axis=-1)
    return -0.5 * d * np.log(2 * np.pi * GAUSSIAN_STD**2) - 0.5 * sq / GAUSSIAN_STD**2
  if name == "eight_gaussians":
    angle = np.arange(8) * 2 * np.pi / 8
    centres = EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    sq = jnp.sum((x[:, None, :] - centres[None]) ** 2, axis=-1)
    comp = -np.log(2 * np.pi * EIGHT_GAUSSIANS_STD**2) - 0.5 * sq / EIGHT_GAUSSIANS_STD**2
    return jax.nn.logsumexp(comp, axis=1) - np.log(8)
  if name == "checkerboard":
    inside = jnp.all(jnp.abs(x) <= 2.0, axis=-1)
    dark = jnp.mod(jnp.floor(x[:, 0]) + jnp.floor(x[:, 1]), 2) == 0
    return jnp.where(inside & dark, -np.log(8.0), -jnp.inf)
  if name == "two_gaussians":
    centres = np.array([[TWO_GAUSSIANS_CENTRE, 0.0], [-TWO_GAUSSIANS_CENTRE, 0.0]])
    sq = jnp.sum((x[:, None, :] - centres[None]) ** 2, axis=-1)
    comp = -np.log(2 * np.pi * TWO_GAUSSIANS_STD**2) - 0.5 * sq / TWO_GAUSSIANS_STD**2
    return jax.nn.logsumexp(comp, axis=1) - np.log(2)
  raise UserError(f"toy dataset {name!r} has no closed-form density; those with one: "
                  "gaussian, eight_gaussians, checkerboard, two_gaussians")
