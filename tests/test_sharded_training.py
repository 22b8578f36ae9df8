"""Data-parallel training on 8 CPU devices equals single-device training.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax is imported,
so the checks run in a subprocess (the script below); this test only launches it.

Checked: (1) the sharded step (batch split P('data') over 8 devices, state replicated)
and the 1-device step, on the same global batches for 3 steps, give parameters, EMA,
optimizer state and losses allclose with rtol 1e-5, atol 1e-6 (only the order of the
gradient's sum differs); (2) the same for toy batches sampled on the device inside the
sharded step, against the 1-device step fed the same samples; (3) the parameters stay
replicated; (4) train() runs on the 8-device mesh, and its checkpoint restores on
one device.
"""
import os
import subprocess
import sys
import textwrap

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)

_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}]
    import jax
    import numpy as np
    from configs.default_toy import get_default_configs
    import data
    from common.mesh import make_mesh
    from training.restore import restore_model
    from training import loop, optim
    from training import step as step_lib
    from training.state import create_train_state

    assert jax.device_count() == 8, jax.devices()
    config = get_default_configs()
    config.data.dataset = "two_moons"
    config.data.centered = True
    config.model.nf = 32
    config.model.num_layers = 2
    config.model.embedding_dim = 16
    config.model.ema_rate = 0.9
    config.training.batch_size = 64
    config.optim.warmup = 0
    tx = optim.get_optimizer(config)
    state0 = create_train_state(config, tx)
    # The batches the toy path samples on the device at steps 0, 1, 2, drawn here on the
    # host, so that one 1-device run with host batches is the reference for both paths.
    keys = [jax.random.split(jax.random.fold_in(state0.key, s))[0] for s in range(3)]
    batches = np.stack([data.toy.sample(k, "two_moons", 64) for k in keys])

    def run(devices, host):
      mesh = make_mesh(devices)
      # The compiled step train() uses (and caches: train() below reuses the toy one).
      fn = step_lib.get_train_fn(config, mesh, host_batches=host)
      # From host copies: device_put onto the device state0 lives on would alias its
      # buffers, and the call donates them.
      state = step_lib.put_state(jax.tree.map(np.asarray, state0), mesh)
      if host:
        sharded = step_lib.put_batches(batches, mesh)
        assert len(sharded.sharding.device_set) == len(devices)
        return fn(state, sharded, 3)
      return fn(state, 3)

    s1, m1 = run(jax.devices()[:1], host=True)
    for host in (True, False):
      s8, m8 = run(jax.devices(), host)
      assert int(s8.step) == int(s1.step) == 3
      for leaf in jax.tree.leaves(s8.params):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
      np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
      worst = 0.0
      for a, b in zip(jax.tree.leaves((s8.params, s8.ema_params, s8.opt_state)),
                      jax.tree.leaves((s1.params, s1.ema_params, s1.opt_state))):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
      print("host" if host else "device", "batches: max |8-device - 1-device| =", worst)

    workdir = sys.argv[1]
    config.training.update(dict(n_iters=6, n_jitted_steps=3, log_freq=3,
                                snapshot_freq_for_preemption=3, snapshot_freq=6))
    state = loop.train(config, workdir)
    assert int(state.step) == 6
    model, step = restore_model(config, workdir)
    assert step == 6
    # Restored replicated over the mesh, ready for sharded sampling (restore_model).
    for leaf in jax.tree.leaves(model):
      assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(state.ema_params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print("OK")
""")


def test_sharded_step_equals_single_device_step(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [sys.executable, "-c", _SCRIPT.format(repo=REPO), str(tmp_path / "workdir")],
      env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "OK" in result.stdout, result.stdout
  print(result.stdout)
