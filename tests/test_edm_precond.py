"""EDM's preconditioning (models/edm_precond.py) against Table 1 of Karras et al. 2022,
written out here in float64 numpy, with backbones of both call signatures."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import models
import sde_lib
from common.errors import UserError
from models.edm_precond import EDMPrecond, edm_coefficients

SIGMAS = np.array([0.002, 0.1, 0.5, 1.0, 10.0, 80.0])


class OursBackbone(nnx.Module):
  """F(x, labels, *, train, key[, class_labels]) = labels x^2 (+ class label), a known
  nonlinear function of both inputs; records what it was given."""

  def __init__(self, num_classes=0):
    self.num_classes = num_classes

  def __call__(self, x, labels, *, train=False, key=None, class_labels=None):
    out = labels[:, None] * x**2
    if class_labels is not None:
      out = out + class_labels[:, None].astype(jnp.float32)
    return out


class EDMBackbone(nnx.Module):
  """EDM's signature F(x, noise_labels, class_labels, augment_labels, *, train, key)."""

  def __init__(self):
    self.num_classes = 3

  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, *,
               train=False, key=None):
    out = noise_labels[:, None] * x**2
    if class_labels is not None:
      out = out + jnp.sum(class_labels * jnp.arange(1.0, 4.0), axis=1)[:, None]
    if augment_labels is not None:
      out = out + 10 * augment_labels[:, :1]
    return out


def _table1(sigma, sigma_data=0.5):
  s = np.asarray(sigma, np.float64)
  return (sigma_data**2 / (s**2 + sigma_data**2),
          s * sigma_data / np.sqrt(s**2 + sigma_data**2),
          1 / np.sqrt(s**2 + sigma_data**2),
          np.log(s) / 4)


def test_coefficients_are_table_1():
  got = edm_coefficients(jnp.asarray(SIGMAS, jnp.float32), 0.5)
  for g, want in zip(got, _table1(SIGMAS)):
    np.testing.assert_allclose(g, want, rtol=2e-6, atol=1e-7)
  # The limits EDM designs them for: D -> x as sigma -> 0, unit-variance input and
  # target for data of std sigma_data (Appendix B.6): c_in^2 (sigma^2 + sd^2) = 1.
  c_skip, c_out, c_in, _ = _table1(SIGMAS)
  np.testing.assert_allclose(c_in**2 * (SIGMAS**2 + 0.25), 1.0)
  assert c_skip[0] > 0.9999 and c_out[0] < 0.0021


def test_denoiser_with_our_backbone_signature():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  net = EDMPrecond(OursBackbone(num_classes=4), sigma_data=0.5)
  assert not net.edm_signature and net.num_classes == 4 and net.null_label == 4
  sig = jnp.asarray(SIGMAS, jnp.float32)
  c_skip, c_out, c_in, c_noise = _table1(SIGMAS)
  xs = np.asarray(x, np.float64)
  want = c_skip[:, None] * xs + c_out[:, None] * (c_noise[:, None] * (c_in[:, None] * xs)**2)
  np.testing.assert_allclose(net(x, sig), want, rtol=1e-5, atol=1e-6)
  labels = jnp.array([0, 1, 2, 3, 4, 0])
  np.testing.assert_allclose(net(x, sig, class_labels=labels),
                             want + c_out[:, None] * np.asarray(labels)[:, None], rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(UserError, match="augment_labels"):
    net(x, sig, augment_labels=jnp.zeros((6, 9)))
  with pytest.raises(UserError, match="out of range"):
    net(x, sig, class_labels=jnp.array([5, 0, 0, 0, 0, 0]))


def test_denoiser_with_edm_backbone_signature():
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
  net = EDMPrecond(EDMBackbone(), sigma_data=0.7)
  assert net.edm_signature
  sig = jnp.asarray(SIGMAS, jnp.float32)
  c_skip, c_out, c_in, c_noise = _table1(SIGMAS, 0.7)
  xs = np.asarray(x, np.float64)
  base = c_noise[:, None] * (c_in[:, None] * xs)**2
  one_hot = jax.nn.one_hot(jnp.array([0, 1, 2, 0, 1, 2]), 3)
  aug = jnp.arange(6.0)[:, None] * jnp.ones((6, 9))
  extra = (np.array([1, 2, 3, 1, 2, 3.0]) + 10 * np.arange(6.0))[:, None]
  want = c_skip[:, None] * xs + c_out[:, None] * (base + extra)
  np.testing.assert_allclose(net(x, sig, class_labels=one_hot, augment_labels=aug), want,
                             rtol=1e-5, atol=1e-5)


def _config(**over):
  from configs import default_toy
  c = default_toy.get_config()
  c.training.sde = "edm"
  c.model.precond = "edm"
  c.model.sigma_data = 0.5
  c.model.nf, c.model.num_layers = 16, 1
  for k, v in over.items():
    section, name = k.split("__")
    c[section][name] = v
  return c


def test_get_model_wraps_any_backbone_and_checks_the_process():
  net = models.get_model(_config(), nnx.Rngs(0))
  assert isinstance(net, EDMPrecond) and net.sigma_data == 0.5
  # The EDM process feeds sigma = t and takes the output as D: get_score_fn's model_fn is
  # the preconditioned denoiser itself.
  sde = sde_lib.EDM()
  x, t = jnp.ones((2, 2)), jnp.array([0.5, 20.0])
  np.testing.assert_allclose(models.get_score_fn(sde, net)(x, t), net(x, t), rtol=1e-6)
  with pytest.raises(UserError, match="needs config.training.sde = 'edm'"):
    models.get_model(_config(training__sde="vesde"), nnx.Rngs(0))
  with pytest.raises(ValueError, match="precond"):
    models.get_model(_config(model__precond="karras"), nnx.Rngs(0))


def test_image_networks_need_centered_data():
  c = ml_collections.ConfigDict({
      "training": {"sde": "edm", "continuous": True},
      "data": {"centered": False, "image_size": 8, "num_channels": 3},
      "model": {"name": "ddpm", "precond": "edm"}})
  with pytest.raises(UserError, match="centered = True"):
    models.get_model(c, nnx.Rngs(0))
