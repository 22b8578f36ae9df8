"""Toy mixtures with their component index as a class label, and the exact noisy-data
posterior p_t(y | x) where it has a closed form (`log_posterior`)."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from data import toy

NUM_CLASSES = {"two_gaussians": 2, "eight_gaussians": 8, "circles": 2, "two_moons": 2,
               "checkerboard": 8}
LABELED_DATASETS = tuple(sorted(NUM_CLASSES))


def _check(name: str) -> None:
  if name not in NUM_CLASSES:
    raise ValueError(f"toy dataset {name!r} has no class labels; labeled toy datasets: "
                     f"{', '.join(LABELED_DATASETS)}")


def num_classes(name: str) -> int:
  """The number of classes (mixture components) of a labeled toy dataset."""
  _check(name)
  return NUM_CLASSES[name]


def sample_with_labels(key: jax.Array, name: str, n: int, dim: int = 2
                       ) -> tuple[jax.Array, jax.Array]:
  """n exact samples of a labeled toy mixture and their component labels.

  Returns (x float32 (n, 2), y int32 (n,) in [0, num_classes(name))); x equals
  `data.toy.sample(key, name, n, dim)`. Pure and jittable.

  `sample_with_labels(key, name, n)` returns the same points as `data.toy.sample(key, name,
  n)` for the same key (the draws are made in the same order), together with the label of
  the component each point came from:

    two_gaussians    y = 1 for the mode at (+c, 0), 0 for (-c, 0)              2 classes
    eight_gaussians  y = k for the mode at angle 2 pi k / 8                      8 classes
    circles          y = 0 for the inner circle (radius 1), 1 for the outer     2 classes
    two_moons        y = 1 for the upper moon, 0 for the lower one              2 classes
    checkerboard     y = 2 col + row // 2, col = floor(x1) + 2, row = floor(x2) + 2: the
                     index of the dark unit square the point lies in           8 classes

  For the Gaussian mixtures, x_t = alpha x_0 + sigma z has x_t | y ~ N(alpha m_y,
  (alpha^2 s^2 + sigma^2) I), so the posterior over components is a softmax
  (`log_posterior`), the reference a noise-conditional classifier is tested against.

  The points and components are drawn by data/toy.py's samplers themselves
  (`toy.sample_with_components`); this module names the labeled mixtures and holds their
  posteriors.
  """
  _check(name)
  return toy.sample_with_components(key, name, n, dim)


def gaussian_mixture(name: str) -> tuple[np.ndarray, float]:
  """(component means (K, 2) in label order, per-coordinate std) of a Gaussian mixture."""
  if name == "two_gaussians":
    c = toy.TWO_GAUSSIANS_CENTRE
    return np.array([[-c, 0.0], [c, 0.0]]), toy.TWO_GAUSSIANS_STD
  if name == "eight_gaussians":
    angle = np.arange(8) * 2 * np.pi / 8
    return (toy.EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1),
            toy.EIGHT_GAUSSIANS_STD)
  raise ValueError(f"toy dataset {name!r} has no closed-form posterior; those with one: "
                   "eight_gaussians, two_gaussians")


def log_posterior(name: str, x: jax.Array, alpha: jax.Array, sigma: jax.Array
                  ) -> jax.Array:
  """Exact log p_t(y | x_t) for every class of an equal-weight Gaussian mixture.

  x_t | y ~ N(alpha m_y, v I), v = alpha^2 s^2 + sigma^2 (the process's marginal of the
  component N(m_y, s^2 I)); with equal weights and a shared v,
      log p_t(y | x) = log_softmax_y(-|x - alpha m_y|^2 / (2 v)).
  x: (B, 2); alpha, sigma: (B,) (e.g. `sde.alpha_sigma(t)`). Returns (B, K) nats.
  """
  means, s = gaussian_mixture(name)
  means = jnp.asarray(means, x.dtype)
  var = alpha**2 * s**2 + sigma**2
  sq = jnp.sum((x[:, None, :] - alpha[:, None, None] * means[None]) ** 2, axis=-1)
  return jax.nn.log_softmax(-0.5 * sq / var[:, None], axis=-1)
