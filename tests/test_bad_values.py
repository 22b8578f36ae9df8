"""Every bad value is one line: each leaf of each shipped config (configs/**) set to bad
values of its type (negative, zero, NaN, another type, an unknown name) through main.py
in-process (`--mode check`, which validates as every mode does before compiling and
runs nothing). Each run must exit 0 or 2 (one line), never 1 or a traceback.

The full sweep (every leaf of every config) is marked slow; the default run takes every
leaf of the toy defaults and a seeded sample of the rest. The messages the CLI used to
get wrong are tested one by one below."""
import glob
import importlib.util
import os
import random

import pytest

from inprocess_cli import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SAMPLE = 100


def _config_files():
  out = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)):
    rel = os.path.relpath(path, REPO)
    if rel.endswith("__init__.py") or rel == os.path.join("configs", "tiny.py"):
      continue
    with open(path) as f:
      if "def get_config(" in f.read():
        out.append(rel)
  return out


def _load(rel):
  spec = importlib.util.spec_from_file_location("cfg_" + rel.replace("/", "_")[:-3],
                                                os.path.join(REPO, rel))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _leaves(node, prefix=""):
  for name, value in node.items():
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}", value


def bad_values(value):
  """Type-appropriate bad values of a leaf's value."""
  if isinstance(value, bool):
    return ["foo", "2"]
  if isinstance(value, int):
    return ["-1", "0", "nan"]
  if isinstance(value, float):
    return ["-1.0", "0.0", "nan", "inf"]
  if isinstance(value, str):
    return ["foo", ""]
  if isinstance(value, (tuple, list)):
    return ["foo", "(-1,)"]
  return []  # None: no type to violate


def _runs():
  runs = []
  for rel in _config_files():
    for path, value in _leaves(_load(rel)):
      runs += [(rel, path, bad) for bad in bad_values(value)]
  return runs


def _check(run, tmp_path):
  rel, path, bad = run
  try:
    code, err = run_cli("--config", rel, "--workdir", str(tmp_path), "--mode", "check",
                        f"--config.{path}={bad}")
  except Exception as e:  # noqa: BLE001 - a traceback is what the test looks for
    return False, f"{rel} {path}={bad!r}: {type(e).__name__}: {e}"
  lines = err.strip().splitlines()
  ok = code == 0 or (code == 2 and len(lines) == 1 and "Traceback" not in err)
  return ok, f"{rel} {path}={bad!r}: exit {code}: {err.strip()[-600:]}"


def _sweep(runs, tmp_path):
  failures = [msg for ok, msg in (_check(r, tmp_path) for r in runs) if not ok]
  assert not failures, f"{len(failures)} of {len(runs)} runs:\n" + "\n".join(failures[:30])


def test_bad_values_sampled(tmp_path):
  runs = _runs()
  toy = [r for r in runs if r[0] == os.path.join("configs", "default_toy.py")]
  rest = [r for r in runs if r not in toy]
  random.Random(22).shuffle(rest)
  _sweep(toy + rest[:DEFAULT_SAMPLE], tmp_path)


@pytest.mark.slow
def test_bad_values_every_leaf_of_every_config(tmp_path):
  _sweep(_runs(), tmp_path)


# ---------------------------------------------------------------------------------------
# The messages that used to be wrong.

TOY = ("--config", "configs/default_toy.py")


@pytest.mark.parametrize("override, expected", [
    ("--config.eval.trace=foo", "unknown trace estimator (config.eval.trace) 'foo'"),
    ("--config.sampling.method=foo", "unknown sampling method (config.sampling.method) "
     "'foo'; choices: pc, ode, sde, fast"),
    ("--config.sampling.eps=0.0", "config.sampling.eps = 0.0 must be a finite number > 0"),
    ("--config.sampling.snr=-0.1", "config.sampling.snr = -0.1 must be a finite number"),
    ("--config.training.n_iters=0", "config.training.n_iters = 0 is out of range"),
    ("--config.optim.lr=nan", "config.optim.lr = nan must be a finite number"),
])
def test_one_line_naming_the_setting(tmp_path, override, expected):
  code, err = run_cli(*TOY, "--workdir", str(tmp_path), "--mode", "check", override)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert expected in err, err


def test_ode_steps_negative_is_refused(tmp_path):
  code, err = run_cli(*TOY, "--workdir", str(tmp_path), "--mode", "check",
                      "--config.sampling.method=ode", "--config.sampling.ode_steps=-3")
  assert code == 2 and "config.sampling.ode_steps = -3 must be an integer >= 0" in err, err


def test_stray_argument_and_misspelt_field_are_one_line(tmp_path):
  code, err = run_cli(*TOY, "--workdir", str(tmp_path), "--mode", "check", "stray")
  assert code == 2 and err.strip().splitlines() == [
      "error: unexpected argument(s) 'stray': every setting is a flag, e.g. "
      "--mode=sample or --config.training.n_iters=100 (--help lists them)"], err
  code, err = run_cli(*TOY, "--workdir", str(tmp_path), "--mode", "check",
                      "--config.training.snapshot_freq=5",
                      "--config.training.snapshot_fre=3")
  assert code == 2 and err.startswith("error: --config.training.snapshot_fre: "), err


def test_begin_after_end_checkpoint_is_one_line(tmp_path):
  from inprocess_cli import TINY_TOY
  w = str(tmp_path)
  code, err = run_cli(*TOY, "--mode", "train", "--workdir", w, *TINY_TOY,
                      "--config.training.n_iters=10")
  assert code == 0, err
  code, err = run_cli(*TOY, "--mode", "eval", "--workdir", w, *TINY_TOY,
                      "--config.eval.begin_ckpt=5", "--config.eval.end_ckpt=2")
  assert code == 2 and "config.eval.begin_ckpt = 5 is after config.eval.end_ckpt = 2" \
      in err, err


CIFAR = ("--config", "configs/vp/cifar10_ddpmpp_continuous.py")


@pytest.mark.parametrize("config, override, expected", [
    (TOY, "--config.model.nf=-1", "config.model.nf = -1 must be an integer >= 1"),
    (TOY, "--config.model.num_layers=0", "config.model.num_layers = 0 must be an integer"),
    (TOY, "--config.model.dropout=1.0", "config.model.dropout = 1.0 must be a number >= 0 "
     "and < 1"),
    (TOY, "--config.model.dtype=foo", "unknown network dtype (config.model.dtype) 'foo'"),
    (CIFAR, "--config.model.ch_mult=(1,0,2)", "config.model.ch_mult = (1, 0, 2) must be"),
    (CIFAR, "--config.model.num_res_blocks=0", "config.model.num_res_blocks = 0 must be"),
    (CIFAR, "--config.model.attn_resolutions=(12,)", "config.model.attn_resolutions = "
     "(12,): 12 is not a resolution of this network: image_size 32 with 4 levels gives "
     "[32, 16, 8, 4]"),
    (CIFAR, "--config.data.image_size=20", "config.data.image_size = 20 must be divisible "
     "by 2^3 for config.model.ch_mult = (1, 2, 2, 2)"),
    (TOY, "--config.model.embedding_dim=0", "config.model.embedding_dim = 0 must be an"),
    (TOY, "--config.model.name=foo", "unknown model name 'foo'"),
    (CIFAR, "--config.model.nonlinearity=foo", "unknown nonlinearity (config.model."
     "nonlinearity) 'foo'"),
    (CIFAR, "--config.model.resblock_type=foo", "resblock_type"),
])
def test_bad_network_fields_are_one_line_before_anything_is_built(tmp_path, config,
                                                                  override, expected):
  """config.model's architecture fields (models/config_check.py): `--mode check` builds
  no network, so without these checks the values passed it and failed later."""
  code, err = run_cli(*config, "--workdir", str(tmp_path), "--mode", "check", override)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert expected in err, err
