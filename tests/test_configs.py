"""The shipped configs: every field is read by something, and the tiny variant is defined
once (configs/tiny.py) and used by the benchmarks."""
import ast
import glob
import importlib.util
import os

import pytest

from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("common", "sde_lib", "models", "solvers", "data", "training", "evaluation", "modes")
CONFIG_FILES = sorted(
    f for f in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if os.path.basename(f) not in ("__init__.py", "tiny.py"))


def _load(path):
  spec = importlib.util.spec_from_file_location("_config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ("get_config", "get_default_configs"):
    if hasattr(module, name):
      return getattr(module, name)()
  return None  # a helper module of the configs, not a config


def _leaves(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + k + ".")
    else:
      yield prefix + k


def _names_read_by_the_package() -> set[str]:
  """Every name the package's code can read a config field by: attribute names
  (config.eval.begin_ckpt), string constants other than docstrings (o.get("amsgrad")),
  and parameter / keyword names (networks take their config.model fields as keyword
  arguments). Comments and docstrings do not count."""
  names = set()
  files = [os.path.join(REPO, "main.py")]
  for package in PACKAGES:
    files += glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)
  for path in files:
    tree = ast.parse(open(path).read())
    docstrings = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef,
                           ast.ClassDef)) and ast.get_docstring(node) is not None:
        docstrings.add(id(node.body[0].value))
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute):
        names.add(node.attr)
      elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
          and id(node) not in docstrings:
        names.update(part for part in node.value.split(".") if part.isidentifier())
      elif isinstance(node, ast.arg):
        names.add(node.arg)
      elif isinstance(node, ast.keyword) and node.arg:
        names.add(node.arg)
  return names


def test_every_field_of_every_shipped_config_is_read():
  """A field that nothing reads is a setting that silently does nothing: each leaf name
  of each config file must occur in the package's code as an attribute, a string key or
  an argument name. (Removing the code that reads, e.g., eval.begin_ckpt makes this fail.)"""
  read = _names_read_by_the_package()
  assert len(CONFIG_FILES) > 30
  unread = {}
  for path in CONFIG_FILES:
    config = _load(path)
    for leaf in _leaves(config.to_dict() if config is not None else {}):
      if leaf.rsplit(".", 1)[-1] not in read:
        unread.setdefault(leaf, []).append(os.path.relpath(path, REPO))
  assert not unread, unread


def test_tiny_variant_is_defined_once_and_used_by_bench():
  from bench import common
  assert common.TINY_BATCH is tiny.TINY_BATCH
  assert common.load_config_file is tiny.load
  image = tiny.get_config(os.path.join(REPO, "configs", "vp", "cifar10_ddpmpp_continuous.py"))
  for field, value in tiny.TINY_IMAGE.items():
    section, name = field.split(".")
    assert image[section][name] == value
  toy = tiny.get_config()
  assert toy.model.nf == tiny.TINY_TOY["model.nf"] and toy.data.dataset == "eight_gaussians"
  with pytest.raises(KeyError, match="no field 'model.nope'"):
    tiny.set_field(toy, "model.nope", 1)
