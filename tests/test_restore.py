"""training/restore.py: checkpoint -> network or model function (errors, non-finite
parameters, discrete models evaluated through the continuous parameterization)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sde_lib
from short_run_config import get_config as _config
from training import loop, restore


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """20 steps of a tiny toy VP model, checkpoints at steps 10 and 20."""
  config = _config(eval_freq=0)
  workdir = str(tmp_path_factory.mktemp("restore"))
  state = loop.train(config, workdir)
  return config, workdir, state


def test_restore_errors_name_the_problem(tmp_path, trained):
  config, workdir, _ = trained
  with pytest.raises(sde_lib.MissingFileError, match="no checkpoint in .*train first"):
    restore.restore_model_fn(config, str(tmp_path))
  with pytest.raises(sde_lib.UserError, match="no checkpoint at step 7 .*10, 20"):
    restore.restore_model(config, workdir, step=7)
  model, step = restore.restore_model(config, workdir, step=10, ema=False)
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
    restore.restore_model(config, str(tmp_path))
  restore.restore_model(config, str(tmp_path), ema=False)  # the raw ones are finite


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
    np.testing.assert_array_equal(restore.model_fn_for(config, sde, model, purpose)(x, t),
                                  cont, err_msg=purpose)
  np.testing.assert_array_equal(restore.model_fn_for(config, sde, model, "pc")(x, t), disc)
  config.eval.discrete_as_continuous = False
  for purpose in ("ode", "likelihood", "pc"):
    np.testing.assert_array_equal(restore.model_fn_for(config, sde, model, purpose)(x, t),
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


def test_process_table_fixture_matches_get_sde(process_table, tiny_config):
  """The shared process table builds the processes get_sde builds from the same settings."""
  config = tiny_config()
  for name, sde_name in (("vp", "vpsde"), ("subvp", "subvpsde"), ("rf", "rectified_flow")):
    config.training.sde = sde_name
    assert process_table[name](config.model.num_scales) == sde_lib.get_sde(config)
