"""Class-conditional networks, label dropout and classifier-free guidance end to end.

Networks: the MLP (toy configs) and NCSN++/DDPM++ as the digits config builds it (8x8x1,
nf = 16, tiny). A conditional network adds a learned class embedding (num_classes + 1
rows, the last the null label) to its time embedding (ADM's `emb + label_emb(y)`), which
is checked exactly: the conditional network with class k equals the unconditional one of
the same seed whose time-embedding output bias is shifted by row k.
"""
from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sde_lib
import solvers
from configs.default_toy import get_config as toy_config
from configs.vp.digits_ddpmpp_small import get_config as digits_config
from sde_lib import UserError
from training import losses, optim
from training import step as step_lib
from training.data_source import LabeledBatches
from common.mesh import make_mesh
from training.state import create_train_state


def _mlp_config(num_classes=None, **model):
  c = toy_config()
  c.model.nf, c.model.num_layers = 32, 2
  if num_classes is not None:
    c.model.num_classes = num_classes
  c.model.update(model)
  return c


def _digits_config(num_classes=None):
  c = digits_config()
  # Not the zero-initialised output layer of DDPM++ (outputs ~1e-6 at init): outputs of
  # order one, so that differences between classes are measurable.
  c.model.init_scale = 1.0
  if num_classes is not None:
    c.model.num_classes = num_classes
  return c


def _without_class_emb(state):
  return {k: v for k, v in nnx.to_pure_dict(state).items() if k != "class_emb"}


def _bias(net):
  """The bias of the time-embedding layer the class embedding is added to."""
  backbone = net.backbone
  return backbone.temb.bias if hasattr(backbone, "inp") else backbone.temb1.bias


CASES = {
    "mlp": (_mlp_config, lambda b: (jax.random.normal(jax.random.key(1), (b, 2)),
                                    jnp.linspace(0.1, 0.9, b))),
    "ddpmpp": (_digits_config,
               lambda b: (jax.random.uniform(jax.random.key(1), (b, 8, 8, 1)),
                          jnp.linspace(100.0, 900.0, b))),
}
K = 3  # classes of the conditional networks below


@pytest.fixture(scope="module", params=sorted(CASES))
def nets(request):
  """(name, unconditional network, conditional network with K classes), one seed.
  Built once per module: building even the tiny NCSN++ takes seconds on a CPU."""
  make = CASES[request.param][0]
  return (request.param, models.get_model(make(0), nnx.Rngs(0)),
          models.get_model(make(K), nnx.Rngs(0)))


def test_unconditional_tree_unchanged_and_class_embedding_added_to_time_embedding(nets):
  """num_classes = 0 builds the parameters it did before (absent = 0: compared by tree
  structure for the MLP; the values of unconditional networks are pinned by
  tests/test_models.py's reference outputs); a conditional network of the same seed has
  exactly those parameters plus `class_emb` ((K + 1, width)); its output for class k
  equals the unconditional network's with the time-embedding bias shifted by row k
  (exact up to float32 round-off: outputs are of order one; rtol 1e-5, atol 1e-5)."""
  name, zero, cond = nets
  make, inputs = CASES[name]
  assert zero.num_classes == 0 and zero.null_label is None
  assert cond.num_classes == K and cond.null_label == K
  pure_zero = nnx.to_pure_dict(nnx.state(zero))
  if name == "mlp":
    absent = models.get_model(make(), nnx.Rngs(0))
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(absent)),
                 pure_zero)
  jax.tree.map(np.testing.assert_array_equal, pure_zero["backbone"],
               _without_class_emb(nnx.state(cond)["backbone"]))
  table = np.asarray(cond.backbone.class_emb.embed.embedding[...])
  assert table.shape == (K + 1, _bias(cond).shape[0])

  x, t = inputs(K + 1)
  y = jnp.arange(K + 1)  # every class and the null label
  out = np.asarray(cond(x, t, class_labels=y))
  bias = np.asarray(_bias(zero)[...])
  try:
    for row in range(K + 1):
      _bias(zero)[...] = bias + table[row]
      want = np.asarray(zero(x, t))[row]  # the whole batch: one shape, one compile
      np.testing.assert_allclose(out[row], want, rtol=1e-5, atol=1e-5)
  finally:
    _bias(zero)[...] = bias


def test_conditional_forward_labels_null_and_broadcast(nets):
  """Shapes and dtype; different classes give different outputs (the embedding rows are
  N(0, 1) draws: a relative difference far above round-off, > 1e-3); class_labels=None
  is the null label; a scalar label is broadcast over the batch."""
  name, _, net = nets
  x, t = CASES[name][1](4)
  out0 = net(x, t, class_labels=jnp.zeros(4, jnp.int32))
  out1 = net(x, t, class_labels=jnp.ones(4, jnp.int32))
  assert out0.shape == x.shape and out0.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out0 - out1))) > 1e-3 * float(jnp.max(jnp.abs(out0)))
  np.testing.assert_array_equal(net(x, t), net(x, t, class_labels=jnp.full(4, K)))
  np.testing.assert_array_equal(net(x, t, class_labels=1), out1)


def test_user_errors():
  x, t = jnp.ones((2, 2)), jnp.full((2,), 0.5)
  uncond = models.get_model(_mlp_config(), nnx.Rngs(0))
  with pytest.raises(UserError, match="unconditional"):
    uncond(x, t, class_labels=jnp.zeros(2, jnp.int32))
  sde = sde_lib.VPSDE()
  with pytest.raises(UserError, match="unconditional model|null label"):
    models.get_guided_score_fn(sde, uncond, 1.0, jnp.zeros(2, jnp.int32))
  cond = models.get_model(_mlp_config(3), nnx.Rngs(0))
  for bad in (4, -1):
    with pytest.raises(UserError, match=f"class label {bad} out of range"):
      cond(x, t, class_labels=jnp.array([0, bad]))
  with pytest.raises(UserError, match="out of range"):  # the null label is not a class
    models.get_guided_score_fn(sde, cond, 1.0, jnp.array([0, 3]))
  with pytest.raises(UserError, match="integers"):
    cond(x, t, class_labels=jnp.array([0.0, 1.0]))
  c = _digits_config(10)
  c.model.conditional = False
  with pytest.raises(UserError, match="conditional = True"):
    models.get_model(c, nnx.Rngs(0))
  for kw, match in [(dict(num_classes=0, label_dropout=0.1), "needs a class-conditional"),
                    (dict(num_classes=2, label_dropout=1.0), r"in \[0, 1\)"),
                    (dict(num_classes=-1), ">= 0")]:
    c = _mlp_config(**kw)
    with pytest.raises(UserError, match=match):
      losses.get_loss_fn(sde, c)
  # A conditional toy model on a data set without labels, or with another class count.
  mesh = make_mesh(jax.devices()[:1])
  for dataset, match in [("swiss_roll", "has no class labels"),
                         ("eight_gaussians", "has 8 classes")]:
    c = _mlp_config(3)
    c.data.dataset = dataset
    with pytest.raises(UserError, match=match):
      step_lib.get_train_fn(c, mesh, host_batches=False)


class Recorder(nnx.Module):
  """A stand-in conditional network: output 0, records the class labels it is given."""

  num_classes, null_label = 3, 3
  seen: list = []

  def __call__(self, x, labels, *, class_labels=None, train=False, key=None):
    Recorder.seen.append(None if class_labels is None else np.asarray(class_labels))
    return jnp.zeros_like(x)


def test_label_dropout_rate_and_plumbing():
  """drop_labels: n = 40000 labels, p = 0.3: the dropped fraction is within 4 standard
  deviations (sqrt(p (1 - p) / n) = 0.0023) of p, dropped labels become the null label
  and the rest are unchanged. Through get_loss_fn (n = 4000, sd 0.0072, tolerance 0.03):
  training drops at rate p, evaluation passes the labels unchanged and scores an
  unlabeled batch at the null label; training on an unlabeled batch is an error."""
  p, null, n = 0.3, 5, 40000
  y = jax.random.randint(jax.random.key(0), (n,), 0, null)
  z = np.asarray(losses.drop_labels(jax.random.key(1), y, p, null))
  dropped = z == null
  assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
  np.testing.assert_array_equal(z[~dropped], np.asarray(y)[~dropped])

  c = _mlp_config(3, label_dropout=0.25)
  sde = sde_lib.get_sde(c)
  m = 4000
  y = jax.random.randint(jax.random.key(2), (m,), 0, 3)
  batch = {"x0": jnp.zeros((m, 2)), "label": y}
  Recorder.seen.clear()
  losses.get_loss_fn(sde, c, train=True)(Recorder(), batch, jax.random.key(3))
  seen = Recorder.seen[-1]
  assert abs((seen == 3).mean() - 0.25) < 0.03
  keep = seen != 3
  np.testing.assert_array_equal(seen[keep], np.asarray(y)[keep])
  losses.get_loss_fn(sde, c, train=False)(Recorder(), batch, jax.random.key(3))
  np.testing.assert_array_equal(Recorder.seen[-1], y)
  losses.get_loss_fn(sde, c, train=False)(Recorder(), batch["x0"], jax.random.key(3))
  assert Recorder.seen[-1] is None
  with pytest.raises(UserError, match="labeled batches"):
    losses.get_loss_fn(sde, c, train=True)(Recorder(), batch["x0"], jax.random.key(3))


def test_guided_score_fn_is_one_batched_call_of_the_cfg_combination():
  """get_guided_score_fn = (1 + w) model_fn(x, t, y) - w model_fn(x, t, null), computed
  from one network call on 2B examples with labels [y; null] (rtol 1e-5)."""
  c = _mlp_config(3)
  net = models.get_model(c, nnx.Rngs(0))
  sde = sde_lib.get_sde(c)
  x, t = jax.random.normal(jax.random.key(0), (4, 2)), jnp.linspace(0.1, 0.9, 4)
  y, w = jnp.array([0, 1, 2, 1]), 1.5
  score_fn = models.get_score_fn(sde, net)
  want = (1 + w) * score_fn(x, t, y) - w * score_fn(x, t)
  np.testing.assert_allclose(models.get_guided_score_fn(sde, net, w, y)(x, t), want,
                             rtol=1e-5, atol=1e-6)
  Recorder.seen.clear()
  models.get_guided_score_fn(sde, Recorder(), w, y)(x, t)
  assert len(Recorder.seen) == 1
  np.testing.assert_array_equal(Recorder.seen[0], [0, 1, 2, 1, 3, 3, 3, 3])


def test_labeled_image_batches_match_their_images():
  """LabeledBatches yields {"image", "label"}: the labels are those of exactly the
  images of each batch (checked against the data set by matching each image), and its
  position (state/restore) is the wrapped iterator's."""
  from data.images import get_image_dataset
  c = _digits_config(10)
  ds = get_image_dataset(c, "train")
  it = LabeledBatches(ds.train_iterator(64, 0), ds.labels)
  flat = ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0
  for _ in range(2):
    b = next(it)
    assert b["image"].shape == (64, 8, 8, 1) and b["label"].dtype == np.int32
    dist = ((b["image"].reshape(64, -1)[:, None] - flat[None]) ** 2).sum(-1)
    match = dist.argmin(1)
    assert np.all(dist[np.arange(64), match] < 1e-8)
    # Duplicate images in the data set would make the match ambiguous; labels agree.
    np.testing.assert_array_equal(b["label"], ds.labels[match])
  saved, want = it.state(), next(it)
  it.restore(saved)
  np.testing.assert_array_equal(next(it)["label"], want["label"])
  # The host step maps labeled images to model space, labels untouched.
  _, preprocess = step_lib._data_fns(c, True, make_mesh(jax.devices()[:1]))
  out = preprocess({"image": jnp.full((2, 8, 8, 1), 0.5), "label": jnp.array([3, 4])})
  np.testing.assert_array_equal(out["label"], [3, 4])
  assert out["x0"].shape == (2, 8, 8, 1)


class Traced(eqx.Module):
  """A model function that counts how often it is traced (Python runs only then)."""

  fn: eqx.Module
  calls: ClassVar[list] = []

  def __call__(self, x, t):
    Traced.calls.append(1)
    return self.fn(x, t)


def test_trained_conditional_mlp_cfg_samples_land_in_the_class():
  """A conditional MLP (nf 64, 2 layers) on two_gaussians (modes (+-2, 0), std 0.3;
  label 1 = the mode at +2) trained 300 steps (batch 256, label dropout 0.2) through the
  training step (toy labels sampled on the device). 1000 VP reverse-diffusion samples
  (250 steps), half requested from each class, at w = 0, 1, 3: the fraction on the
  requested side (sign of x_1) is far above chance at w = 0 (measured 0.82; binomial sd
  0.016: asserted > 0.65), rises by > 0.05 from w = 0 to 1 (measured 0.82 -> 0.98) and
  does not fall at w = 3; the mean signed position sign * x_1 grows with w (guidance
  sharpens p(x | y)^(1+w) / p(x)^w away from the other class); the sampler compiles once
  for the three weights. The null label (label
  dropout) gives the unconditional model: both modes, fraction at +2 within 0.5 +- 0.1."""
  c = _mlp_config(2, nf=64, label_dropout=0.2)
  c.data.dataset = "two_gaussians"
  c.training.batch_size, c.training.n_jitted_steps = 256, 100
  c.optim.warmup, c.optim.lr = 50, 3e-3
  mesh = make_mesh(jax.devices()[:1])
  train = step_lib.get_train_fn(c, mesh, host_batches=False)
  state = step_lib.put_state(create_train_state(c, optim.get_optimizer(c)), mesh)
  for _ in range(3):
    state, metrics = train(state, 100)
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))
  net = state.model(ema=True)

  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=250)
  n = 1000
  sampler = solvers.get_pc_sampler(sde, (n, 2), predictor="reverse_diffusion",
                                   corrector="none", denoise=True, eps=1e-3)
  y = jnp.repeat(jnp.arange(2, dtype=jnp.int32), n // 2)
  sign = np.asarray(2.0 * y - 1.0)
  accuracy, position, traces = [], [], []
  for w in (0.0, 1.0, 3.0):
    guided = Traced(models.get_guided_score_fn(sde, net, w, y))
    x, nfe = sampler(jax.random.key(7), guided)
    x = np.asarray(x)
    assert nfe == 250 and np.all(np.isfinite(x))
    accuracy.append(np.mean(np.sign(x[:, 0]) == sign))
    position.append(np.mean(sign * x[:, 0]))
    traces.append(len(Traced.calls))
  # w and the labels are traced leaves: a new weight reuses the compiled sampler.
  assert traces[0] > 0 and traces[0] == traces[1] == traces[2], traces
  assert accuracy[0] > 0.65, accuracy
  assert accuracy[1] > accuracy[0] + 0.05 and accuracy[2] >= accuracy[1], accuracy
  assert position[0] < position[1] < position[2], position

  x, _ = sampler(jax.random.key(8), models.get_score_fn(sde, net))
  assert abs(np.mean(np.asarray(x)[:, 0] > 0) - 0.5) < 0.1
