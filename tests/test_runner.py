"""training/runner.py (restore, keys, placement, atomic outputs), the training monitor
(held-out loss, sample snapshots), discrete models evaluated through the continuous
parameterization (the import graph: tests/test_imports.py)."""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sde_lib
from configs import tiny
from configs.default_toy import get_default_configs
from training import losses, loop, monitor, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**training):
  config = tiny.shrink(get_default_configs())
  config.model.ema_rate = 0.9
  config.training.update(dict(batch_size=32, n_iters=20, n_jitted_steps=10, log_freq=10,
                              snapshot_freq=20, snapshot_freq_for_preemption=10,
                              eval_freq=10))
  config.training.update(training)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """20 steps of a tiny toy VP model with held-out loss every 10 steps and a PC sample
  snapshot (50 scales) at step 20."""
  config = _config(snapshot_sampling=True)
  config.model.num_scales = 50
  workdir = str(tmp_path_factory.mktemp("runner"))
  state = loop.train(config, workdir)
  return config, workdir, state


def test_stream_keys_are_named_fold_ins():
  """stream_key(seed, name) = fold_in(PRNGKey(seed), STREAMS[name]); every stream differs."""
  for name, number in runner.STREAMS.items():
    np.testing.assert_array_equal(
        runner.stream_key(3, name), jax.random.fold_in(jax.random.PRNGKey(3), number))
  keys = {tuple(np.asarray(runner.stream_key(3, n)).tolist()) for n in runner.STREAMS}
  assert len(keys) == len(runner.STREAMS) == len(set(runner.STREAMS.values()))
  assert not np.array_equal(runner.stream_key(3, "sample"), runner.stream_key(4, "sample"))
  with pytest.raises(ValueError, match="unknown key stream 'smaple'"):
    runner.stream_key(0, "smaple")


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
  path = tmp_path / "sub" / "out.json"
  runner.write_json(str(path), {"a": 1})
  with pytest.raises(RuntimeError):
    with runner.atomic_file(str(path), "w") as f:
      f.write('{"a": 2')  # half a file, then the writer dies
      raise RuntimeError("killed")
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(path.parent) == ["out.json"]  # no temporary left behind
  runner.save_npz(str(tmp_path / "x.npz"), x=np.arange(3))
  with np.load(tmp_path / "x.npz") as d:
    np.testing.assert_array_equal(d["x"], np.arange(3))


def test_put_batch_places_on_the_data_axis():
  x = np.arange(24, dtype=np.float32).reshape(4, 6)
  y = runner.put_batch(x)
  np.testing.assert_array_equal(np.asarray(y), x)
  assert y.sharding.mesh.axis_names == (runner.DATA_AXIS,)
  stacked = runner.put_batch({"a": x[None]}, stacked=True)
  np.testing.assert_array_equal(np.asarray(stacked["a"]), x[None])


def test_process_table_fixture_matches_get_sde(process_table, tiny_config):
  """The shared process table builds the processes get_sde builds from the same settings."""
  config = tiny_config()
  for name, sde_name in (("vp", "vpsde"), ("subvp", "subvpsde"), ("rf", "rectified_flow")):
    config.training.sde = sde_name
    assert process_table[name](config.model.num_scales) == sde_lib.get_sde(config)


def test_snapshot_png_of_images_and_points(tmp_path):
  from PIL import Image
  grid = runner.save_snapshot_png(np.full((5, 8, 8, 1), 0.5), str(tmp_path / "g.png"))
  with Image.open(grid) as im:  # 3 columns x 2 rows of 8 px with 1 px borders
    assert im.size == (3 * 9 + 1, 2 * 9 + 1)
    assert np.asarray(im)[1, 1] == 128
  pts = runner.save_snapshot_png(np.array([[0.0, 0.0], [-3.0, 3.0], [9.0, 9.0]]),
                                 str(tmp_path / "p.png"), lim=3.0, size=65)
  with Image.open(pts) as im:
    a = np.asarray(im)
  # (0, 0) at the centre, (-3, 3) at the top-left corner, (9, 9) off the canvas.
  assert a[32, 32] == 0 and a[0, 0] == 0 and (a == 0).sum() == 2


def test_restore_errors_name_the_problem(tmp_path, trained):
  config, workdir, _ = trained
  with pytest.raises(sde_lib.MissingFileError, match="no checkpoint in .*train first"):
    runner.restore_model_fn(config, str(tmp_path))
  with pytest.raises(sde_lib.UserError, match="no checkpoint at step 7 .*10, 20"):
    runner.restore_model(config, workdir, step=7)
  model, step = runner.restore_model(config, workdir, step=10, ema=False)
  assert step == 10


def test_restore_refuses_non_finite_parameters(tmp_path, monkeypatch):
  from training import checkpoint
  from training.state import create_train_state
  config = _config()
  state = create_train_state(config)
  state = state.replace(ema_params=jax.tree.map(lambda p: p * jnp.nan, state.ema_params))
  manager = checkpoint.make_manager(config, str(tmp_path))
  # save() refuses non-finite states (tests/test_fault_injection.py); bypass that guard
  # to write the checkpoint a damaged disk or an older version could have left.
  monkeypatch.setattr(checkpoint, "non_finite_parts", lambda state, parts=(): [])
  checkpoint.save(manager, state)
  monkeypatch.undo()
  manager.close()
  with pytest.raises(FloatingPointError, match="EMA parameters .* step 0 .* not all finite"):
    runner.restore_model(config, str(tmp_path))
  runner.restore_model(config, str(tmp_path), ema=False)  # the raw ones are finite


def test_held_out_loss_is_the_ema_loss_on_fresh_data(trained):
  """metrics.jsonl's eval_loss at steps 10 and 20 equals the loss recomputed here from the
  restored EMA network, fresh toy data and the key fold_in(stream_key(seed, 'eval_loss'),
  step) (float32, rtol 1e-5)."""
  config, workdir, _ = trained
  with open(os.path.join(workdir, loop.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  held_out = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
  assert sorted(held_out) == [10, 20]
  import data as data_lib
  sde = sde_lib.get_sde(config)
  loss_fn = losses.get_loss_fn(sde, config, train=False)
  for step in (10, 20):
    model, _ = runner.restore_model(config, workdir, step=step)
    data_key, loss_key = jax.random.split(
        jax.random.fold_in(runner.stream_key(config.seed, "eval_loss"), step))
    x = data_lib.get_data_scaler(config)(
        data_lib.toy.sample(data_key, config.data.dataset, 32, 2))
    np.testing.assert_allclose(held_out[step], float(loss_fn(model, x, loss_key)),
                               rtol=1e-5)


def test_snapshot_is_the_configured_sampler_from_the_ema(trained):
  """samples/snapshot_step20.npz equals the PC sampler run here on the restored EMA
  network with key fold_in(stream_key(seed, 'snapshot'), 20) (rtol 1e-5)."""
  from solvers.from_config import get_sampling_fn
  config, workdir, _ = trained
  path = os.path.join(workdir, monitor.SNAPSHOT_SUBDIR, "snapshot_step20")
  assert os.path.getsize(path + ".png") > 100
  with np.load(path + ".npz") as d:
    got = d["samples"]
  assert got.shape == (32, 2)
  sde, model_fn, _ = runner.restore_model_fn(config, workdir, purpose="pc")
  want, _ = get_sampling_fn(config, sde, (32, 2))(
      jax.random.fold_in(runner.stream_key(config.seed, "snapshot"), 20), model_fn)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde_name", ["vpsde", "vesde"])
def test_discrete_models_are_evaluated_through_the_continuous_parameterization(sde_name):
  """score_sde's likelihood and ODE sampler call get_score_fn(..., continuous=True) even
  for DDPM/SMLD-trained networks; only its PC sampler uses config.training.continuous.
  With N = 100 scales the discrete labels (99 t, or the SMLD index) differ from the
  continuous ones (999 t, or sigma(t)), so the outputs differ (checked > 1e-3 apart)."""
  config = _config(sde=sde_name, continuous=False)
  config.model.num_scales = 100
  sde = sde_lib.get_sde(config)
  model = models.get_model(config, nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
  t = jnp.linspace(0.1, 0.9, 8)
  cont = models.get_score_fn(sde, model, continuous=True)(x, t)
  disc = models.get_score_fn(sde, model, continuous=False)(x, t)
  assert float(jnp.max(jnp.abs(cont - disc))) > 1e-3
  for purpose in ("ode", "likelihood", "fast", "flow", "sde"):
    np.testing.assert_array_equal(runner.model_fn_for(config, sde, model, purpose)(x, t),
                                  cont, err_msg=purpose)
  np.testing.assert_array_equal(runner.model_fn_for(config, sde, model, "pc")(x, t), disc)
  config.eval.discrete_as_continuous = False
  for purpose in ("ode", "likelihood", "pc"):
    np.testing.assert_array_equal(runner.model_fn_for(config, sde, model, purpose)(x, t),
                                  disc, err_msg=purpose)


def test_eval_mode_uses_the_continuous_parameterization_for_discrete_models(
    tmp_path, monkeypatch):
  """modes.eval.evaluate hands the likelihood the continuous-label model
  function of a discrete-trained model (what score_sde's run_lib.evaluate does)."""
  from modes import eval as eval_run
  config = _config(sde="vpsde", continuous=False, n_iters=10, eval_freq=0)
  config.model.num_scales = 100
  config.eval.update(dict(enable_loss=False, enable_sampling=False, num_eval_points=8,
                          batch_size=8))
  loop.train(config, str(tmp_path))
  seen = []

  def fake_bpd(likelihood_fn, model_fn, batches, out_dir, key, num_batches=None,
               metric="bpd"):
    seen.append(model_fn.continuous)
    return {"n": 0, f"mean_{metric}": 0.0, f"stderr_{metric}": 0.0, "mean_nfe": 0.0}

  monkeypatch.setattr(eval_run, "run_bpd_eval", fake_bpd)
  eval_run.evaluate(config, str(tmp_path))
  config.eval.discrete_as_continuous = False
  eval_run.evaluate(config, str(tmp_path))
  assert seen == [True, False]


def test_snapshot_grid_and_scalars_land_in_tensorboard(trained):
  """The training run's event files hold the logged scalars (loss, eval_loss) and the
  step-20 snapshot picture as an image (read back with tensorboardX's own protobufs)."""
  pytest.importorskip("tensorboardX")
  from tensorboardX.proto import event_pb2
  _, workdir, _ = trained
  files = glob.glob(os.path.join(workdir, loop.TENSORBOARD_SUBDIR, "events.out.*"))
  assert files
  tags, images = set(), []
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      n = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for value in event.summary.value:
        tags.add(value.tag)
        if value.HasField("image"):
          images.append((event.step, value.image.height, value.image.width))
  assert {"loss", "eval_loss", "samples"} <= tags, tags
  assert [step for step, _, _ in images] == [20]
  assert images[0][1] > 10 and images[0][2] > 10
