"""Importing score_sde / score_sde_pytorch / RectifiedFlow checkpoints (models/score_sde_import.py).

References:
* tests/data/score_sde_linen_names.json: the full `params_ema` name -> shape table that
  yang-song/score_sde's own flax.linen code (models/ncsnpp.py, ddpm.py, ncsnv2.py, run
  under this repo's flax) builds for eight tiny configs; produced by
  tests/data/make_score_sde_linen_names.py. Our map must produce exactly that table.
  When it was made, the same script also saved score_sde's model.apply output on a fixed
  input, and load_score_sde_checkpoint's network reproduced it to <= 1.8e-6 relative
  (max |diff| / max |y|) for the five NCSN++/DDPM++/DDPM configs (not committed: 1.5 MB
  per checkpoint); likewise for ncsnv2_64 and ncsnv2_256 (nf 8 / 4, 16 px, every
  parameter perturbed by N(0, 0.1^2), labels [0, 7]) the difference was exactly 0.
* Round trips: a tiny network with every parameter drawn at random (so a zero or one
  cannot hide a misplaced tensor) is written in each real format
  (flax msgpack of a score_sde train state; the torch.save zip layout of
  score_sde_pytorch's {'model', 'ema', 'optimizer', 'step'}) and read back; the rebuilt
  network's output must equal the writer's (rtol 1e-6; they are the same float32 values
  through the same code). The non-EMA weights in each file are different on purpose:
  loading them instead of the EMA fails the test.
"""
import collections
import importlib
import json
import os
import pathlib
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

import models
from models import pth, score_sde_import as ssi
from random_params import abstract_net, fill, random_net
from sde_lib import MissingFileError, UserError

DATA = pathlib.Path(__file__).parent / "data"
TINY = {"model.nf": 16, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
        "model.attn_resolutions": (8,), "data.image_size": 16}


def _config(module, overrides):
  config = importlib.import_module(module).get_config()
  for key, value in overrides.items():
    section, field = key.split(".")
    setattr(getattr(config, section), field, tuple(value) if isinstance(value, list)
            else value)
  return config


def _inputs(config):
  rng = np.random.default_rng(0)
  s, c = config.data.image_size, config.data.num_channels
  x = jnp.asarray(rng.uniform(0, 1, (2, s, s, c)), jnp.float32)
  if config.model.get("embedding_type", "positional") == "fourier":
    labels = jnp.array([0.05, 7.0], jnp.float32)  # noise levels
  else:
    labels = jnp.array([12.5, 700.0], jnp.float32)  # 999 t
  return x, labels


# One compiled forward per architecture (eagerly, a tiny NCSN++'s first call compiles each
# operation on its own: ~10 s against ~5 s on CPU), shared by every network of it.
_forward = nnx.jit(lambda net, x, labels: net(x, labels, train=False))


def _noisy(tree, seed):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [np.asarray(v) + rng.normal(size=np.shape(v)).astype(np.float32)
                for v in leaves])


def _write_msgpack(path, net):
  ema = ssi.export_linen_params(net)
  state = {"step": 7, "optimizer": {"target": _noisy(ema, 3), "state": {"step": 7}},
           "lr": 2e-4, "model_state": {}, "ema_rate": 0.999, "params_ema": ema,
           "rng": np.zeros(2, np.uint32)}
  pathlib.Path(path).write_bytes(serialization.msgpack_serialize(state))


def _write_pth(path, net, extra=None):
  sd, shadow = ssi.export_torch_state(net)
  trainable = {id(v) for v in shadow}
  # The raw (non-EMA) weights differ from the EMA; the Fourier W (not trained) does not.
  model = collections.OrderedDict(
      [("module.sigmas", np.geomspace(50, 0.01, 10))]
      + [("module." + k, v + 1.0 if id(v) in trainable else v) for k, v in sd.items()])
  obj = {"optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}, "model": model,
         "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow}, "step": 7}
  obj.update(extra or {})
  pth.save_pth(path, obj)


CASES = json.loads((DATA / "score_sde_linen_names.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_linen_names_and_shapes_equal_score_sdes(case):
  """Our name map gives exactly the params_ema table of score_sde's own linen code. Only
  names and shapes are compared, so the network is built abstractly (nnx.eval_shape:
  nothing initialised or compiled) and filled with zeros of each variable's shape."""
  spec = CASES[case]
  config = _config(spec["config"], spec["overrides"])
  net = nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0)))
  for _, var in nnx.to_flat_state(nnx.state(net, nnx.Variable)):
    var.set_value(np.zeros(var.shape, var.dtype))

  def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
      name = f"{prefix}/{k}" if prefix else k
      out.update(flat(v, name) if isinstance(v, dict) else {name: list(v.shape)})
    return out

  ours = flat(ssi.export_linen_params(net))
  ref = spec["params_ema"]
  assert sorted(set(ours) - set(ref)) == [] and sorted(set(ref) - set(ours)) == []
  assert ours == ref


ROUND_TRIP = [
    ("configs.ve.cifar10_ncsnpp_continuous", TINY),
    ("configs.vp.cifar10_ddpmpp_continuous", TINY),
    ("configs.vp.ddpm.cifar10", dict(TINY, **{"model.nf": 32})),
    ("configs.ve.cifar10_ncsnpp_continuous",
     dict(TINY, **{"model.progressive": "output_skip", "model.progressive_input": "input_skip",
                   "model.progressive_combine": "cat", "model.resblock_type": "ddpm"})),
]


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
@pytest.mark.parametrize("module,overrides", ROUND_TRIP,
                         ids=["ncsnpp", "ddpmpp", "ddpm", "ncsnpp_outskip_ddpmblocks"])
def test_round_trip_reproduces_the_writer(tmp_path, module, overrides, fmt):
  config = _config(module, overrides)
  net0 = random_net(config)
  x, labels = _inputs(config)
  y0 = np.asarray(_forward(net0, x, labels))
  path = tmp_path / ("checkpoint_7" + (".pth" if fmt == "pth" else ""))
  (_write_pth if fmt == "pth" else _write_msgpack)(path, net0)
  net1 = models.load_score_sde_checkpoint(path, config)
  y1 = np.asarray(_forward(net1, x, labels))
  np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6 * np.abs(y0).max())
  # ...and the same network with other values does not (the test can fail).
  y_other = np.asarray(_forward(fill(nnx.clone(net0), 5), x, labels))
  assert np.abs(y_other - y0).max() > 1e-2 * np.abs(y0).max()


def test_groupnorm_stored_1_1_1_c_is_squeezed(tmp_path):
  config = _config("configs.vp.cifar10_ddpmpp_continuous", TINY)
  net0 = random_net(config)
  ema = ssi.export_linen_params(net0)
  ema["GroupNorm_0"] = {k: v.reshape(1, 1, 1, -1) for k, v in ema["GroupNorm_0"].items()}
  path = tmp_path / "checkpoint_1"
  path.write_bytes(serialization.msgpack_serialize({"params_ema": ema}))
  x, labels = _inputs(config)
  np.testing.assert_allclose(_forward(models.load_score_sde_checkpoint(path, config), x,
                                      labels), _forward(net0, x, labels), rtol=1e-6, atol=1e-6)


def test_rectified_flow_time_label_is_reversed_exactly(tmp_path):
  """RectifiedFlow's networks take 999 t_RF, t_RF = 1 - t, and predict x_data - z:
  the imported backbone must satisfy ours(x, l) = -theirs(x, 999 - l). 'theirs' is the
  same file imported without the reversal (a VP config). float32 sines of arguments up
  to 999 carry ~6e-5 absolute error whichever way they are computed, so the tolerance is
  1e-3 of the output scale. Labels 0.999, 500, 998 and 250, two per call (batch 2: one
  compiled program serves all four calls)."""
  config = _config("configs.rf.cifar10_rf_ddpmpp", TINY)
  net0 = random_net(config)
  path = tmp_path / "checkpoint_rf.pth"
  _write_pth(path, net0)
  ours = models.load_score_sde_checkpoint(path, config).backbone
  vp = _config("configs.rf.cifar10_rf_ddpmpp", TINY)
  vp.training.sde = "vpsde"
  theirs = models.load_score_sde_checkpoint(path, vp).backbone
  x, _ = _inputs(config)
  pairs = [jnp.array(p, jnp.float32) for p in ([0.999, 500.0], [998.0, 250.0])]
  y_ours = np.concatenate([np.asarray(_forward(ours, x, labels)) for labels in pairs])
  y_theirs = np.concatenate([np.asarray(_forward(theirs, x, 999.0 - labels))
                             for labels in pairs])
  scale = np.abs(y_theirs).max()
  np.testing.assert_allclose(y_ours, -y_theirs, rtol=0, atol=1e-3 * scale)
  assert np.abs(y_ours - y_theirs).max() > 0.1 * scale  # the reversal did something


# ------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def tiny_ddpmpp():
  config = _config("configs.vp.cifar10_ddpmpp_continuous", TINY)
  return config, random_net(config)


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
def test_truncated_checkpoint_is_one_user_error(tmp_path, tiny_ddpmpp, fmt):
  config, net = tiny_ddpmpp
  full = tmp_path / "full"
  (_write_pth if fmt == "pth" else _write_msgpack)(full, net)
  bad = tmp_path / "checkpoint_9"
  bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
  with pytest.raises(UserError, match="checkpoint_9"):
    models.load_score_sde_checkpoint(bad, config)


def test_missing_checkpoint(tmp_path, tiny_ddpmpp):
  with pytest.raises(MissingFileError, match="checkpoint_404"):
    models.load_score_sde_checkpoint(tmp_path / "checkpoint_404", tiny_ddpmpp[0])


def test_disallowed_pickle_class_is_refused_unexecuted(tmp_path, tiny_ddpmpp):
  config, net = tiny_ddpmpp
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "checkpoint_evil.pth"
  _write_pth(path, net, extra={"optimizer": {"state": Evil()}})
  with pytest.raises(UserError, match=r"refusing to unpickle posix\.system"):
    models.load_score_sde_checkpoint(path, config)
  assert not marker.exists()


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
@pytest.mark.parametrize("change,match", [
    ({"model.nf": 32}, "shape"),                          # same names, other widths
    ({"model.ch_mult": (1, 2, 2)}, "absent"),             # the config has more modules
    ({"model.num_res_blocks": 0}, "no place"),            # the file has more
], ids=["nf", "deeper_config", "shallower_config"])
def test_checkpoint_of_another_architecture(tmp_path, tiny_ddpmpp, fmt, change, match):
  config, net = tiny_ddpmpp
  path = tmp_path / ("checkpoint_3" + (".pth" if fmt == "pth" else ""))
  (_write_pth if fmt == "pth" else _write_msgpack)(path, net)
  other = _config("configs.vp.cifar10_ddpmpp_continuous", dict(TINY, **change))
  with pytest.raises(UserError, match=match) as info:
    models.load_score_sde_checkpoint(path, other)
  assert "checkpoint_3" in str(info.value) and "config" in str(info.value)


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
def test_checkpoint_missing_one_variable_names_it(tmp_path, tiny_ddpmpp, fmt):
  """A file lacking one variable of the configured network (the first conv's bias) is
  one UserError naming the file and that variable in the file's own naming."""
  config, net = tiny_ddpmpp
  path = tmp_path / ("checkpoint_6" + (".pth" if fmt == "pth" else ""))
  if fmt == "msgpack":
    ema = ssi.export_linen_params(net)
    del ema["Conv_0"]["bias"]
    path.write_bytes(serialization.msgpack_serialize({"params_ema": ema}))
    name = "Conv_0/bias"
  else:
    sd, shadow = ssi.export_torch_state(net)
    name = next(e.torch for e in ssi.parameter_map(net) if e.ours == ("conv_in", "bias"))
    dropped = sd.pop(name)
    shadow = [v for v in shadow if v is not dropped]
    pth.save_pth(path, {"model": sd, "ema": {"shadow_params": shadow}})
  with pytest.raises(UserError, match=rf"checkpoint_6.*: 1 .* absent, e\.g\. {re.escape(name)} "):
    models.load_score_sde_checkpoint(path, config)


def test_variable_outside_the_map_is_named_not_left_abstract(tmp_path, tiny_ddpmpp,
                                                              monkeypatch):
  """The loader builds the network abstractly (nnx.eval_shape) and fills what the
  checkpoint maps; a variable nothing fills (here one added beside the backbone) is one
  UserError naming it and the file, never a shape-only value in the returned network."""
  config, net = tiny_ddpmpp
  path = tmp_path / "checkpoint_8"
  _write_msgpack(path, net)

  def with_extra(config, rngs):
    model = models.get_model(config, rngs)
    model.extra = nnx.Param(jnp.zeros(3))
    return model

  monkeypatch.setattr(ssi, "get_model", with_extra)
  with pytest.raises(UserError, match="checkpoint_8: variable extra of our network"):
    models.load_score_sde_checkpoint(path, config)


def test_pickled_dict_is_not_mistaken_for_msgpack(tmp_path, tiny_ddpmpp):
  """A plain pickle (neither zip nor msgpack) is a clear error, not a crash."""
  path = tmp_path / "checkpoint_p"
  path.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(UserError, match="checkpoint_p"):
    models.load_score_sde_checkpoint(path, tiny_ddpmpp[0])


# ------------------------------------------------------------------------------ NCSNv2


def _ncsnv2_config(name="ncsnv2_64", nf=8):
  return _config("configs.ve.ncsnv2.cifar10",
                 {"model.name": name, "model.nf": nf, "data.image_size": 16})


def _ncsnv2_inputs(config):
  x, _ = _inputs(config)
  return x, jnp.array([0, 7], jnp.int32)  # noise-level indices (discrete VE)


def _torch_ncsnv2(config, seed=1):
  """A network laid out as score_sde_pytorch's: for ncsnv2_64 its third RefineBlock is
  nf wide (ours and score_sde's JAX net: 2 nf)."""
  net = abstract_net(config)
  other = nnx.eval_shape(lambda: ssi._ncsnv2_torch_backbone(net.backbone, config))
  if other is not None:
    net.backbone = other
  return fill(net, seed)


@pytest.mark.parametrize("name,fmt", [("ncsnv2_64", "msgpack"), ("ncsnv2_64", "pth"),
                                      ("ncsnv2_256", "pth")])
def test_ncsnv2_round_trip_reproduces_the_writer(tmp_path, name, fmt):
  """Export a random-valued tiny NCSNv2 (nf 8 / 4, 16 px) in score_sde's (msgpack) or
  score_sde_pytorch's (.pth) layout, load it: same output (rtol 1e-6, same float32 code).
  ncsnv2_256 covers refine31 (PyTorch registers it after refine3 but applies it first)."""
  config = _ncsnv2_config(name, nf=8 if name == "ncsnv2_64" else 4)
  net0 = _torch_ncsnv2(config) if fmt == "pth" else random_net(config)
  x, labels = _ncsnv2_inputs(config)
  y0 = np.asarray(_forward(net0, x, labels))
  path = tmp_path / ("checkpoint_7" + (".pth" if fmt == "pth" else ""))
  (_write_pth if fmt == "pth" else _write_msgpack)(path, net0)
  if fmt == "msgpack":  # score_sde stores InstanceNorm++ parameters (1, 1, 1, C)
    tree = serialization.msgpack_restore(path.read_bytes())["params_ema"]
    assert tree["InstanceNorm2dPlus_0"]["gamma"].shape == (1, 1, 1, config.model.nf)
  net1 = models.load_score_sde_checkpoint(path, config)
  y1 = np.asarray(_forward(net1, x, labels))
  np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6 * np.abs(y0).max())
  # ...and the same network with other values does not (the test can fail).
  y_other = np.asarray(_forward(fill(nnx.clone(net0), 5), x, labels))
  assert np.abs(y_other - y0).max() > 1e-2 * np.abs(y0).max()


def test_ncsnv2_64_pth_refine_widths_follow_pytorch(tmp_path):
  """score_sde_pytorch's ncsnv2_64 has an nf-wide third RefineBlock: the loaded network
  has it, and a .pth written from score_sde's JAX widths (2 nf) is a shape error."""
  config = _ncsnv2_config()
  path = tmp_path / "checkpoint_1.pth"
  _write_pth(path, _torch_ncsnv2(config))
  net = models.load_score_sde_checkpoint(path, config)
  assert net.backbone.refine[2].output.convs[0].kernel.shape == (3, 3, 8, 8)
  jax_layout = tmp_path / "checkpoint_2.pth"
  _write_pth(jax_layout, random_net(config))
  with pytest.raises(UserError, match="checkpoint_2.pth.*shape"):
    models.load_score_sde_checkpoint(jax_layout, config)


@pytest.mark.parametrize("fmt", ["msgpack", "pth"])
@pytest.mark.parametrize("other,match", [
    ({"model.name": "ncsnv2_128"}, "absent"),  # the config has more stages
    ({"model.nf": 4}, "shape"),
], ids=["128_config", "nf"])
def test_ncsnv2_checkpoint_of_another_architecture(tmp_path, fmt, other, match):
  config = _ncsnv2_config()
  net = _torch_ncsnv2(config) if fmt == "pth" else random_net(config)
  path = tmp_path / ("checkpoint_3" + (".pth" if fmt == "pth" else ""))
  (_write_pth if fmt == "pth" else _write_msgpack)(path, net)
  wrong = _config("configs.ve.ncsnv2.cifar10",
                  dict({"model.name": "ncsnv2_64", "model.nf": 8, "data.image_size": 16},
                       **other))
  with pytest.raises(UserError, match=match) as info:
    models.load_score_sde_checkpoint(path, wrong)
  assert "checkpoint_3" in str(info.value) and "config" in str(info.value)


def test_ncsn_is_refused_with_the_reason(tmp_path):
  """Neither original code can build NCSN, so no checkpoint of it exists."""
  config = _ncsnv2_config("ncsn")
  path = tmp_path / "checkpoint_1"
  path.write_bytes(serialization.msgpack_serialize({"params_ema": {"a": np.zeros(1)}}))
  with pytest.raises(UserError, match="ncsn.*cannot be imported"):
    models.load_score_sde_checkpoint(path, config)
