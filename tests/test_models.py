"""The MLP, the registry, and the network-output -> native-quantity table."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sde_lib
from configs.default_toy import get_config


class Constant(nnx.Module):
  """A stand-in network returning a fixed output and recording its labels."""

  def __init__(self, out):
    self.out = out
    self.labels = None

  def __call__(self, x, labels, *, train=False, key=None):
    self.seen = labels
    return jnp.broadcast_to(self.out, x.shape)


def _small_config():
  c = get_config()
  c.model.nf = 32
  c.model.num_layers = 2
  return c


def test_mlp_shapes_and_dtypes():
  c = _small_config()
  for emb in ["positional", "fourier"]:
    c.model.embedding_type = emb
    for dtype in ["float32", "bfloat16"]:
      c.model.dtype = dtype
      m = models.get_model(c, nnx.Rngs(0))
      out = m(jnp.ones((5, 2)), jnp.linspace(0.1, 1, 5))
      assert out.shape == (5, 2) and out.dtype == jnp.float32
      assert all(p.dtype == jnp.float32
                 for p in jax.tree_util.tree_leaves(nnx.state(m, nnx.Param)))


def test_mlp_dropout_uses_the_key():
  c = _small_config()
  c.model.dropout = 0.5
  m = models.get_model(c, nnx.Rngs(0))
  x, t = jnp.ones((4, 2)), jnp.full((4,), 0.5)
  a = m(x, t, train=True, key=jax.random.PRNGKey(0))
  b = m(x, t, train=True, key=jax.random.PRNGKey(1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, m(x, t, train=True, key=jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(m(x, t), m(x, t))


def test_unknown_model_name():
  c = _small_config()
  c.model.name = "ncsnpp_typo"
  with pytest.raises(ValueError, match=r"unknown model name 'ncsnpp_typo'.*mlp"):
    models.get_model(c, nnx.Rngs(0))


def test_vp_noise_prediction_becomes_score():
  sde = sde_lib.VPSDE(N=1000)
  x, t = jnp.ones((3, 2)), jnp.array([0.1, 0.5, 0.9])
  net = Constant(2.0)
  score = models.get_score_fn(sde, net, continuous=True)(x, t)
  std = sde.marginal_prob(x, t)[1]
  np.testing.assert_allclose(score, -2.0 / std[:, None] * jnp.ones((3, 2)), rtol=1e-6)
  np.testing.assert_allclose(net.seen, 999 * t, rtol=1e-6)
  # Discrete: labels are DDPM indices, std from the discrete chain.
  score = models.get_score_fn(sde, net, continuous=False)(x, t)
  idx = np.round(np.asarray(t) * 999).astype(int)
  np.testing.assert_allclose(score[:, 0], -2.0 / sde.sqrt_1m_alphas_cumprod[idx], rtol=1e-5)
  np.testing.assert_allclose(net.seen, t * 999, rtol=1e-6)


def test_ve_labels_are_sigmas_or_ncsn_indices():
  sde = sde_lib.VESDE(0.01, 50.0, N=10)
  x, t = jnp.ones((2, 2)), jnp.array([0.0, 1.0])
  net = Constant(3.0)
  np.testing.assert_allclose(models.get_score_fn(sde, net)(x, t), 3.0)
  np.testing.assert_allclose(net.seen, [0.01, 50.0], rtol=1e-5)
  models.get_score_fn(sde, net, continuous=False)(x, t)
  np.testing.assert_allclose(net.seen, [9, 0])  # NCSN's sigmas run from large to small


def test_rectified_flow_output_is_the_velocity():
  sde = sde_lib.RectifiedFlow()
  out = models.get_score_fn(sde, Constant(0.25))(jnp.ones((2, 2)), jnp.array([0.2, 0.8]))
  np.testing.assert_allclose(out, 0.25)


def test_score_fn_is_a_pytree_that_does_not_recompile_for_new_params():
  import equinox as eqx
  c = _small_config()
  traces = []

  @eqx.filter_jit
  def apply(fn, x, t):
    traces.append(1)
    return fn(x, t)

  sde = sde_lib.VPSDE()
  x, t = jnp.ones((4, 2)), jnp.full((4,), 0.5)
  a = apply(models.get_score_fn(sde, models.get_model(c, nnx.Rngs(0))), x, t)
  b = apply(models.get_score_fn(sde, models.get_model(c, nnx.Rngs(1))), x, t)
  assert len(traces) == 1 and not np.allclose(a, b)
