"""EDM network pickles (models/edm_pickle.py, models/edm_import.py): pickles in EDM's
format written by tests/edm_pickle_writer.py (our own writer, a dummy module source) from
the tiny EDM reference networks of tests/data/edm_network_*.npz; read without torch, the
weights land in our network exactly, foreign globals and other architectures are refused
with one line."""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from common.errors import MissingFileError, UserError
from edm_pickle_writer import Call, write_edm_pickle
from models import edm_import, edm_pickle

DATA = os.path.join(os.path.dirname(__file__), "data")


def _reference(name):
  z = np.load(os.path.join(DATA, f"edm_network_{name}.npz"))
  meta = json.loads(str(z["meta"]))
  sd = {k[3:]: z[k].astype(np.float32) for k in z.files if k.startswith("sd/")}
  return meta, sd


def _config(meta):
  kw = meta["kwargs"]
  c = ml_collections.ConfigDict()
  c.data = dict(image_size=kw["img_resolution"], num_channels=kw["in_channels"],
                centered=True)
  c.training = dict(continuous=True, sde="edm")
  c.model = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()
             if k not in ("img_resolution", "in_channels", "out_channels")}
  c.model.name = "song_unet" if meta["cls"] == "SongUNet" else "dhariwal_unet"
  c.model.precond = "edm"
  c.model.sigma_data = 0.5
  return c


@pytest.fixture(scope="module")
def ddpmpp_pickle(tmp_path_factory):
  meta, sd = _reference("ddpmpp_cond")
  path = str(tmp_path_factory.mktemp("edm") / "network-snapshot-000000.pkl")
  write_edm_pickle(path, meta["cls"], meta["kwargs"], sd)
  return path, meta, sd


def test_reads_modules_tensors_and_arguments(ddpmpp_pickle):
  path, meta, sd = ddpmpp_pickle
  data = edm_pickle.read_edm_pickle(path)
  assert set(data) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
  ema = data["ema"]
  assert (ema.cls, ema.persistent, ema.modules["model"].cls) == ("EDMPrecond", True,
                                                                  "SongUNet")
  assert ema.source_chars > 0 and ema.attrs["sigma_data"] == 0.5
  got = edm_pickle.state_dict(ema.modules["model"])
  assert list(got) == list(sd)  # EDM's state-dict order
  for k, v in sd.items():
    np.testing.assert_array_equal(got[k], v)
  block = ema.modules["model"].modules["enc"].modules["8x8_block0"]
  assert block.cls == "UNetBlock" and block.init_kwargs["skip_scale"] == np.sqrt(0.5)
  assert ema.modules["model"].modules["enc"].cls == "ModuleDict"
  assert data["augment_pipe"].attrs["p"] == 0.12
  assert data["dataset_kwargs"]["resolution"] == 8


def test_import_fills_every_variable_exactly(ddpmpp_pickle):
  """The imported backbone's variables are the reference state dict's, transposed; the
  same weights reproduce EDM's output in tests/test_edm_networks.py."""
  path, meta, sd = ddpmpp_pickle
  backbone, arch = edm_import.load_edm_backbone(path)
  assert arch["precond"] == "EDMPrecond" and arch["model"] == "song_unet"
  assert arch["kwargs"]["model_channels"] == meta["kwargs"]["model_channels"]
  np.testing.assert_array_equal(
      np.asarray(backbone.enc["8x8_conv"].kernel[...]),
      sd["enc.8x8_conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(backbone.map_layer0.kernel[...]),
                                sd["map_layer0.weight"].T)
  np.testing.assert_array_equal(np.asarray(backbone.dec["8x8_aux_norm"].scale[...]),
                                sd["dec.8x8_aux_norm.weight"])
  leaves = jax.tree.leaves(nnx.state(backbone))
  assert sum(a.size for a in leaves) == sum(
      v.size for k, v in sd.items() if not k.endswith("resample_filter"))
  net = edm_import.load_edm_checkpoint(path, _config(meta))
  assert type(net).__name__ == "EDMPrecond" and net.sigma_data == 0.5
  np.testing.assert_array_equal(np.asarray(net.backbone.map_layer1.kernel[...]),
                                sd["map_layer1.weight"].T)


def test_refuses_foreign_global_without_running_it(tmp_path):
  meta, sd = _reference("adm_uncond")
  marker = tmp_path / "ran"
  path = str(tmp_path / "evil.pkl")
  write_edm_pickle(path, meta["cls"], meta["kwargs"], sd,
                   extra={"x": Call("posix", "system", f"touch {marker}")})
  with pytest.raises(UserError, match=r"refusing to unpickle posix\.system") as e:
    edm_pickle.read_edm_pickle(path)
  assert "\n" not in str(e.value) and not marker.exists()
  # EDM's own classes by name (what unpickling without the persistence wrapper would
  # import) are refused too.
  write_edm_pickle(path, meta["cls"], meta["kwargs"], sd,
                   extra={"x": Call("training.networks", "SongUNet")})
  with pytest.raises(UserError, match=r"training\.networks\.SongUNet"):
    edm_pickle.read_edm_pickle(path)


def test_truncated_missing_and_foreign_files(ddpmpp_pickle, tmp_path):
  path, _, _ = ddpmpp_pickle
  cut = tmp_path / "cut.pkl"
  cut.write_bytes(open(path, "rb").read()[:5000])
  with pytest.raises(UserError, match="truncated or malformed"):
    edm_pickle.read_edm_pickle(str(cut))
  with pytest.raises(MissingFileError):
    edm_pickle.read_edm_pickle(str(tmp_path / "nothing.pkl"))
  other = tmp_path / "other.pkl"
  other.write_bytes(__import__("pickle").dumps({"a": 1}))
  with pytest.raises(UserError, match="not an EDM network pickle"):
    edm_pickle.read_edm_pickle(str(other))
  assert edm_import.is_edm_pickle(path) and not edm_import.is_edm_pickle(str(other))


def test_config_mismatch_names_first_field(ddpmpp_pickle):
  path, meta, _ = ddpmpp_pickle
  config = _config(meta)
  config.model.model_channels = 16
  config.model.num_blocks = 3
  with pytest.raises(UserError, match=r"config\.model\.model_channels = 16.*has 4"):
    edm_import.load_edm_checkpoint(path, config)
  config = _config(meta)
  config.model.precond = "score_sde"
  with pytest.raises(UserError, match=r"config\.model\.precond"):
    edm_import.load_edm_checkpoint(path, config)
  config = _config(meta)
  config.model.name = "dhariwal_unet"
  with pytest.raises(UserError, match=r"config\.model\.name = 'dhariwal_unet'"):
    edm_import.load_edm_checkpoint(path, config)


def test_other_preconditionings_are_refused_by_the_checkpoint_loader(tmp_path):
  meta, sd = _reference("adm_uncond")
  path = str(tmp_path / "vp.pkl")
  write_edm_pickle(path, meta["cls"], meta["kwargs"], sd, precond="iDDPMPrecond")
  backbone, arch = edm_import.load_edm_backbone(path)  # the backbone alone loads
  assert arch["precond"] == "iDDPMPrecond" and backbone.out_conv.kernel.shape[-1] == 6
  with pytest.raises(UserError, match="iDDPMPrecond"):
    edm_import.load_edm_checkpoint(path, _config(meta))


@pytest.mark.slow
def test_mode_import_writes_a_restorable_checkpoint(ddpmpp_pickle, tmp_path):
  """--mode import of an EDM pickle: the restored EMA network's backbone reproduces EDM's
  own output of tests/data/edm_network_ddpmpp_cond.npz (same float32 round-off
  tolerance as tests/test_edm_networks.py)."""
  import jax.numpy as jnp

  from configs.edm.digits import get_config
  from modes.import_checkpoint import IMPORT_FILE, import_checkpoint
  from training.restore import restore_model
  path, meta, _ = ddpmpp_pickle
  config = get_config()
  for k, v in _config(meta).model.items():
    config.model["num_classes" if k == "label_dim" else k] = v
  config.data.image_size, config.data.num_channels = 8, 3
  config.eval.import_path = path
  workdir = str(tmp_path / "run")
  import_checkpoint(config, workdir)
  with open(os.path.join(workdir, IMPORT_FILE)) as f:
    assert json.load(f)["format"] == "edm_pkl"
  model, step = restore_model(config, workdir, ema=True)
  assert step == 0
  z = np.load(os.path.join(DATA, "edm_network_ddpmpp_cond.npz"))
  y = model.backbone(jnp.asarray(z["x"].transpose(0, 2, 3, 1)),
                     jnp.asarray(z["noise_labels"]), jnp.asarray(z["class_labels"]),
                     jnp.asarray(z["augment_labels"]))
  ref = z["output"].transpose(0, 2, 3, 1)
  assert np.all(np.abs(np.asarray(y) - ref) <= 2e-5 + 2e-5 * np.abs(ref))
