"""Optimizer, EMA, the step's key stream, and end-to-end training on toy data.

The optimizer is checked against Adam written out by hand (Kingma & Ba 2015, Alg. 1) in
float64, with score_sde's warm-up lr_c = lr min(c / warmup, 1) and global-norm clipping.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default_toy import get_default_configs
import data
import sde_lib
from training import losses, loop, optim
from training import step as step_lib
from training.state import create_train_state, ema_update


def _optim_config(**kw):
  config = get_default_configs()
  config.optim.update(dict(lr=1e-2, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=2,
                           grad_clip=-1.0))
  config.optim.update(kw)
  return config


def _adam_by_hand(params, grads_seq, lr, warmup, b1=0.9, b2=0.999, eps=1e-8, wd=0.0,
                  clip=None):
  p = np.asarray(params, np.float64)
  m, v = np.zeros_like(p), np.zeros_like(p)
  for c, g in enumerate(grads_seq):
    g = np.asarray(g, np.float64)
    if clip is not None:
      g = g * min(1.0, clip / np.linalg.norm(g))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    mhat, vhat = m / (1 - b1 ** (c + 1)), v / (1 - b2 ** (c + 1))
    lr_c = lr * min(c / warmup, 1.0) if warmup > 0 else lr
    p = p - lr_c * (mhat / (np.sqrt(vhat) + eps) + wd * p)
  return p


def _run_optimizer(config, params, grads_seq):
  tx = optim.get_optimizer(config)
  p = jnp.asarray(params, jnp.float32)
  opt_state = tx.init(p)
  for g in grads_seq:
    updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, p)
    p = p + updates
  return np.asarray(p)


PARAMS = np.array([0.5, -1.0, 2.0])
GRADS = [np.array([3.0, -4.0, 0.0]), np.array([0.1, 0.2, -0.2]),
         np.array([-6.0, 8.0, 0.0]), np.array([0.3, 0.0, 0.4])]


def test_warmup_schedule_values():
  schedule = optim.get_lr_schedule(_optim_config(lr=2e-3, warmup=100))
  for c, want in [(0, 0.0), (1, 2e-5), (50, 1e-3), (99, 1.98e-3), (100, 2e-3),
                  (5000, 2e-3)]:
    np.testing.assert_allclose(float(schedule(c)), want, rtol=1e-6, atol=1e-12)
  constant = optim.get_lr_schedule(_optim_config(lr=2e-3, warmup=0))
  assert float(constant(0)) == float(constant(10**6)) == np.float32(2e-3)


def test_adam_with_warmup_matches_hand_computation():
  got = _run_optimizer(_optim_config(), PARAMS, GRADS)
  np.testing.assert_allclose(got, _adam_by_hand(PARAMS, GRADS, 1e-2, 2), rtol=1e-5)
  # The first update has lr 0 (score_sde's warm-up): parameters unchanged.
  np.testing.assert_array_equal(_run_optimizer(_optim_config(), PARAMS, GRADS[:1]),
                                PARAMS.astype(np.float32))


def test_global_norm_clipping():
  # Gradient norms 5, 0.3, 10, 0.5: clipping to 1 rescales the first and third only,
  # which changes Adam's result (it is not scale-invariant across steps).
  config = _optim_config(grad_clip=1.0)
  got = _run_optimizer(config, PARAMS, GRADS)
  np.testing.assert_allclose(got, _adam_by_hand(PARAMS, GRADS, 1e-2, 2, clip=1.0),
                             rtol=1e-5)
  unclipped = _adam_by_hand(PARAMS, GRADS, 1e-2, 2)
  assert np.max(np.abs(got - unclipped)) > 1e-3
  with pytest.raises(ValueError, match="grad_clip"):
    optim.get_optimizer(_optim_config(grad_clip=0.0))


def test_weight_decay_is_decoupled_adamw():
  got = _run_optimizer(_optim_config(weight_decay=0.1), PARAMS, GRADS)
  np.testing.assert_allclose(got, _adam_by_hand(PARAMS, GRADS, 1e-2, 2, wd=0.1), rtol=1e-5)


def _amsgrad_by_hand(params, grads_seq, lr, warmup, b1=0.9, b2=0.999, eps=1e-8):
  """AMSGrad (Reddi et al. 2018) with bias correction before the running maximum, in
  float64: v_max <- max(v_max, v / (1 - b2^c)), p <- p - lr_c m_hat / (sqrt(v_max) + eps)."""
  p = np.asarray(params, np.float64)
  m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
  for c, g in enumerate(grads_seq):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    v_max = np.maximum(v_max, v / (1 - b2 ** (c + 1)))
    lr_c = lr * min(c / warmup, 1.0)
    p = p - lr_c * (m / (1 - b1 ** (c + 1))) / (np.sqrt(v_max) + eps)
  return p


def test_amsgrad_matches_hand_computation():
  """config.optim.amsgrad (NCSNv2's configs): float64 reference, rtol 1e-5. The gradient
  sequence shrinks after step 3, so the running maximum differs from Adam's v (checked:
  the results differ by > 1e-4)."""
  grads = GRADS + [np.array([0.01, 0.01, 0.01])] * 3
  got = _run_optimizer(_optim_config(amsgrad=True, warmup=2), PARAMS, grads)
  np.testing.assert_allclose(got, _amsgrad_by_hand(PARAMS, grads, 1e-2, 2), rtol=1e-5)
  adam = _run_optimizer(_optim_config(warmup=2), PARAMS, grads)
  assert np.max(np.abs(got - adam)) > 1e-4


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match=r"'SGDM'.*choices: adam, adamw"):
    optim.get_optimizer(_optim_config(optimizer="SGDM"))


def test_ema_update_by_hand():
  ema = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
  params = {"a": jnp.array([0.0, 4.0]), "b": jnp.array(-1.0)}
  new = ema_update(ema, params, 0.9)
  np.testing.assert_allclose(new["a"], [0.9, 2.2], rtol=1e-6)
  np.testing.assert_allclose(new["b"], 2.6, rtol=1e-6)


def _tiny_config(**training):
  config = get_default_configs()
  config.model.nf = 32
  config.model.num_layers = 2
  config.model.embedding_dim = 16
  config.model.ema_rate = 0.9
  config.training.batch_size = 64
  config.training.n_jitted_steps = 10
  config.training.update(training)
  return config


def test_train_step_key_stream_and_ema():
  # Step s draws its batch from split(fold_in(base_key, s))[0]: start a state at step 5
  # and recompute the step's loss from that key by hand.
  config = _tiny_config()
  config.optim.warmup = 0  # so that this first update moves the parameters
  tx = optim.get_optimizer(config)
  data_fn = lambda key: jax.random.normal(key, (64, 2))

  def loss_fn(model, batch, key):
    return jnp.mean(batch) + jnp.mean(model(batch, jnp.ones(64)) ** 2)

  train_step = jax.jit(step_lib.make_train_step(loss_fn, tx, 0.9, data_fn=data_fn))
  state5 = create_train_state(config, tx).replace(step=jnp.int32(5))
  state6, metrics = train_step(state5, None)
  state6_again, metrics_again = train_step(state5, None)
  assert int(state6.step) == 6
  for a, b in zip(jax.tree.leaves((state6, metrics)),
                  jax.tree.leaves((state6_again, metrics_again))):
    np.testing.assert_array_equal(a, b)
  batch = data_fn(jax.random.split(jax.random.fold_in(state5.key, 5))[0])
  by_hand = jnp.mean(batch) + jnp.mean(state5.model()(batch, jnp.ones(64)) ** 2)
  np.testing.assert_allclose(metrics["loss"], by_hand, rtol=1e-5)
  # EMA after the update: 0.9 * old EMA + 0.1 * new parameters.
  for e, e0, p1 in zip(jax.tree.leaves(state6.ema_params),
                       jax.tree.leaves(state5.ema_params), jax.tree.leaves(state6.params)):
    np.testing.assert_allclose(e, 0.9 * e0 + 0.1 * p1, rtol=1e-6, atol=1e-7)
  assert any(np.any(p1 != p0) for p1, p0 in zip(jax.tree.leaves(state6.params),
                                                 jax.tree.leaves(state5.params)))


# Thresholds on the loss of the final parameters, on 16384 fresh examples. For reference
# (per dimension, checkerboard, Var x0 = 4/3 per axis): the zero output scores 1.0 (VP,
# noise prediction) and 2.33 (rectified flow, E|z - x0|^2 / 2); the best affine-in-x model
# scores 0.300 and 1.81; the MLP reaches about 0.29 and 1.78 after 300 steps.
@pytest.mark.parametrize("sde,at_most,fraction", [("vpsde", 0.4, 0.5),
                                                  ("rectified_flow", 1.95, 0.85)])
def test_training_lowers_the_loss(tmp_path, sde, at_most, fraction):
  config = _tiny_config(sde=sde, n_iters=300, log_freq=50, snapshot_freq=300,
                        snapshot_freq_for_preemption=300, batch_size=256,
                        n_jitted_steps=50)
  config.model.nf = 64
  config.data.dataset = "checkerboard"
  config.optim.warmup = 20
  state = loop.train(config, str(tmp_path))
  assert int(state.step) == 300
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in lines] == [50, 100, 150, 200, 250, 300]
  assert all({"step", "loss", "steps_per_sec", "time"} <= set(r) for r in lines)

  loss_fn = losses.get_loss_fn(sde_lib.get_sde(config), config, train=False)
  x0 = data.toy.sample(jax.random.PRNGKey(123), "checkerboard", 16384)
  evaluate = jax.jit(lambda model: loss_fn(model, x0, jax.random.PRNGKey(7)))
  initial = float(evaluate(create_train_state(config).model()))
  final = float(evaluate(state.model()))
  assert final < at_most and final < fraction * initial, (initial, final)


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  bad = blocker / "workdir"
  with pytest.raises(loop.WorkdirError, match=f"workdir {bad} is not writable"):
    loop.train(_tiny_config(n_iters=1), str(bad))
  if os.geteuid() != 0:  # root ignores permission bits
    ro = tmp_path / "read_only"
    ro.mkdir(mode=0o500)
    with pytest.raises(loop.WorkdirError, match="is not writable"):
      loop.check_workdir(str(ro))


def test_image_dataset_needs_a_data_source(tmp_path):
  config = _tiny_config(n_iters=1)
  config.data.dataset = "cifar10"
  with pytest.raises(ValueError, match="data_source"):
    loop.train(config, str(tmp_path))

