"""The MLP, the registry, the preconditioning wrapper, and the network-output ->
native-quantity table."""
import importlib.util
import pathlib

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
  # Discrete: labels are DDPM indices t (N - 1), std from the discrete chain at the
  # truncated index (score_sde: sqrt_1m_alphas_cumprod[labels.astype(jnp.int32)]).
  score = models.get_score_fn(sde, net, continuous=False)(x, t)
  idx = (np.asarray(t, np.float32) * np.float32(999)).astype(int)
  assert list(idx) == [99, 499, 899]  # truncated, where rounding gives 100 and 900
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


# ----------------------------------------------------------------------------------------
# Preconditioning (models/precond.py): the same numbers as before the move


def _reference_module():
  path = pathlib.Path(__file__).parent / "data" / "make_precond_reference.py"
  spec = importlib.util.spec_from_file_location("make_precond_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_REF = _reference_module()
_REF_NPZ = pathlib.Path(__file__).parent / "data" / "precond_reference.npz"


@pytest.mark.parametrize("case", list(_REF.CASES))
def test_outputs_equal_the_code_before_preconditioning(case):
  """net(x, labels) and get_score_fn(sde, net, continuous)(x, t) equal the outputs of the
  code before the preconditioning module (each backbone centering and dividing by sigma
  itself), stored in tests/data/precond_reference.npz by tests/data/make_precond_reference.py
  run on that code (commit dfdcbd0; how: the script's docstring). Cases: NCSN++ (VE,
  continuous Fourier and discrete positional), DDPM++ (VP, continuous and discrete score
  functions), DDPM (VP; and VE discrete with scale_by_sigma), NCSNv2 (discrete and
  continuous), NCSN (conditional), the MLP (VE with scale_by_sigma; VP). Tiny networks
  (8x8 images, nf 16 or 32), batch 2, identical parameters filled from numpy by path.

  Tolerance: float32 round-off, rtol 1e-5 with atol 1e-5 x the output's max magnitude
  (the same operations in the same order, but XLA may fuse the moved centering / scaling
  differently). Parameter and variable counts must be equal exactly.
  """
  want = np.load(_REF_NPZ, allow_pickle=False)
  got = _REF.outputs(case)
  names = [k.split("/", 1)[1] for k in want.files if k.startswith(case + "/")]
  assert sorted(names) == sorted(got), (names, list(got))
  for name in names:
    w = want[f"{case}/{name}"]
    if name.startswith("n_"):
      assert int(got[name]) == int(w), name
      continue
    assert got[name].shape == w.shape and got[name].dtype == np.float32, name
    np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5 * np.abs(w).max(),
                               err_msg=f"{case}/{name}")


class _Echo(nnx.Module):
  """A backbone returning its input unchanged and recording (labels, train, key) in
  `calls` (a plain list outside the module: nnx modules hold only pytree data)."""

  def __init__(self, calls: list):
    self.calls = calls

  def __call__(self, x, labels, *, train=False, key=None):
    self.calls.append((labels, train, key))
    return x


def test_precond_centering_and_sigma_scaling_closed_form():
  """Precond(backbone) = c_out(labels) backbone(c_in(x), labels), c_in(x) = 2x - 1,
  c_out = 1 / sigma: sigma = labels (continuous), or the SMLD table
  sigma_max (sigma_min / sigma_max)^(i / (N - 1)) at i = int(labels), truncated (discrete),
  computed here in float64. Tolerance rtol 1e-5 (float32 exp/log of the table)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(3, 4, 4, 2)), jnp.float32)
  calls = []
  backbone = _Echo(calls)
  plain = models.Precond(backbone, center_input=True, scale_by_sigma=False, continuous=True)
  np.testing.assert_array_equal(plain(x, jnp.ones(3)), 2 * x - 1)
  uncentered = models.Precond(backbone, center_input=False, scale_by_sigma=False,
                              continuous=True)
  np.testing.assert_array_equal(uncentered(x, jnp.ones(3)), x)

  sigmas = jnp.array([0.01, 1.5, 50.0])
  cont = models.Precond(backbone, center_input=True, scale_by_sigma=True, continuous=True)
  np.testing.assert_allclose(cont(x, sigmas), (2 * x - 1) / sigmas[:, None, None, None],
                             rtol=1e-6)

  disc = models.Precond(backbone, center_input=True, scale_by_sigma=True, continuous=False,
                        sigma_min=0.01, sigma_max=50.0, num_scales=10)
  labels = jnp.array([0.0, 3.7, 9.0])
  table = 50.0 * (0.01 / 50.0) ** (np.arange(10) / 9)  # descending: index 0 is sigma_max
  want = (2 * np.asarray(x, np.float64) - 1) / table[[0, 3, 9]][:, None, None, None]
  np.testing.assert_allclose(disc(x, labels), want, rtol=1e-5)
  # The backbone sees the labels unchanged, and train / key are passed through.
  key = jax.random.key(3)
  disc(x, labels, train=True, key=key)
  np.testing.assert_array_equal(calls[-1][0], labels)
  assert calls[-1][1] is True and calls[-1][2] is key

  with pytest.raises(ValueError, match="num_scales"):
    models.Precond(backbone, center_input=True, scale_by_sigma=True, continuous=False)


def test_get_model_wraps_the_backbone_with_the_same_parameters():
  """get_model returns Precond(backbone): every variable sits under `backbone`, with the
  values the registered builder alone gives for the same seed (the wrapper draws
  nothing). The MLP is registered with image=False: its input is not centered."""
  from models import mlp
  c = _small_config()
  c.training.continuous = True
  c.model.embedding_type, c.model.scale_by_sigma = "fourier", True
  net = models.get_model(c, nnx.Rngs(0))
  assert isinstance(net, models.Precond) and isinstance(net.backbone, mlp.MLP)
  assert not net.center_input and net.scale_by_sigma and net.continuous
  wrapped = nnx.state(net)
  assert set(wrapped.keys()) == {"backbone"}
  alone = nnx.state(mlp.build(c, nnx.Rngs(0)))
  for a, b in zip(jax.tree.leaves(wrapped["backbone"]), jax.tree.leaves(alone)):
    np.testing.assert_array_equal(a, b)
  assert len(jax.tree.leaves(wrapped)) == len(jax.tree.leaves(alone)) > 0
  # Uncentered toy input, output divided by the labels (the noise levels).
  x, sigma = jnp.ones((2, 2)), jnp.array([0.5, 2.0])
  np.testing.assert_allclose(net(x, sigma), net.backbone(x, sigma) / sigma[:, None],
                             rtol=1e-6)


def test_get_model_user_errors():
  c = _small_config()
  c.model.name = "nope"
  with pytest.raises(sde_lib.UserError, match="'nope'"):
    models.get_model(c, nnx.Rngs(0))
