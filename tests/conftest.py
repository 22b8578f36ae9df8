"""Shared test settings and helpers: float32 everywhere (as in production), fixed keys.

Fixtures (use them rather than redefining the same tables in each file):
  process_table    {"vp", "subvp", "ve", "rf"} -> a constructor of that process, with the
                   hyper-parameters the solver tests use (VE with sigma_max = 4, so a
                   unit-scale Gaussian is resolved in few steps)
  tiny_config      f(base_config_file=None) -> the tiny variant (configs/tiny.py) of a
                   config file (default: the toy defaults)
  gaussian_data    (mean, std) = (1.0, 0.5): data N(mean, std^2 I), whose score, velocity,
                   marginals and density under every process are closed forms
                   (sde_lib.gaussian)
Slow tests carry @pytest.mark.slow and are left out by default (pyproject.toml).
"""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests import the packages from the checkout even without an editable install.
sys.path.insert(0, REPO)


def _share_compiled_programs() -> None:
  """One persistent XLA compilation cache for the whole suite: every pytest-xdist worker,
  every group of `make test` and every CLI subprocess (they inherit the environment).

  Most of the suite's CPU time is compiling: the same tiny programs (toy training steps,
  samplers, and the eager ops of building a network) are compiled again in each module,
  since `_free_compiled_programs` drops the in-memory caches. Measured on 2 cores:
  tests/test_conditional.py 56 s of CPU without the cache, 50 s with an empty one, 15 s
  with a warm one. Every program is cached (no minimum compile time or size). A size limit
  turns on jax's file lock, so that two workers never read an entry half written; without
  the `filelock` package (a dev extra) the cache stays off. The key holds the program,
  jax's version and the compile options, so an entry is never reused for anything else.
  Set JAX_COMPILATION_CACHE_DIR yourself to choose the folder, or to "" to turn it off.
  """
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  try:
    import filelock  # noqa: F401
  except ImportError:
    return
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(REPO, ".pytest_cache",
                                                         "jax-compilation-cache")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)


_share_compiled_programs()

PROCESSES = {
    "vp": lambda N=1000: __import__("sde_lib").VPSDE(beta_min=0.1, beta_max=20.0, N=N),
    "subvp": lambda N=1000: __import__("sde_lib").SubVPSDE(beta_min=0.1, beta_max=20.0, N=N),
    "ve": lambda N=1000: __import__("sde_lib").VESDE(sigma_min=0.01, sigma_max=4.0, N=N),
    "rf": lambda N=1000: __import__("sde_lib").RectifiedFlow(N=N),
}
GAUSSIAN_MEAN, GAUSSIAN_STD = 1.0, 0.5


@pytest.fixture
def process_table():
  return dict(PROCESSES)


@pytest.fixture
def tiny_config():
  from configs import tiny

  def make(base_config_file=None):
    base = base_config_file or os.path.join(REPO, "configs", "default_toy.py")
    return tiny.get_config(base)

  return make


@pytest.fixture
def gaussian_data():
  return GAUSSIAN_MEAN, GAUSSIAN_STD


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops JAX's compiled programs and traces after each test module. A pytest-xdist
  worker runs hundreds of modules in one process; without this their executables (some
  with large constants, e.g. Inception weights closed over by jit) accumulate until the
  2-core, 24 GB CI machine kills a worker (seen: one worker at 11.6 GB resident)."""
  yield
  import gc

  import jax
  jax.clear_caches()
  gc.collect()
