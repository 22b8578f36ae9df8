"""--cpu_devices / common.cpu_devices: one JAX CPU device per core on request, checked
values, and main.py's batch check made against the devices the run will have."""
import os
import subprocess
import sys

import pytest

from common import cpu_devices
from common.errors import UserError
from inprocess_cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ("--config", "configs/tiny.py:configs/default_toy.py")


def test_parse_values():
  assert cpu_devices.parse_cpu_devices("auto") == cpu_devices.available_cores() >= 1
  assert cpu_devices.parse_cpu_devices(" AUTO ") == cpu_devices.available_cores()
  assert cpu_devices.parse_cpu_devices("3") == 3
  assert cpu_devices.parse_cpu_devices(4) == 4
  for bad in ("0", "-2", "two", "", "1.5"):
    with pytest.raises(UserError, match=f"--cpu_devices = {bad!r}: expected 'auto'"):
      cpu_devices.parse_cpu_devices(bad)


def test_too_late_is_a_user_error():
  import jax
  jax.devices()  # this process's backends are started
  with pytest.raises(UserError, match="must be set before JAX starts its backends"):
    cpu_devices.set_cpu_devices(2)


def test_set_in_a_fresh_process():
  code = ("from common.cpu_devices import set_cpu_devices; import jax; "
          "print(set_cpu_devices('3'), jax.device_count(), jax.default_backend())")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["3", "3", "cpu"]


def test_main_checks_the_batch_against_those_devices(tmp_path):
  """main.py in a fresh process: with --cpu_devices 3 the training batch of 8 does not
  divide over the devices, which `--mode check` reports in one line, exit code 2, before
  anything is written (so the flag took effect before JAX started)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  bad = subprocess.run([sys.executable, "main.py", *TOY, "--workdir", str(tmp_path / "w"),
                        "--mode", "check", "--cpu_devices", "3",
                        "--config.training.batch_size=8", "--compilation_cache_dir="],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2, bad.stderr
  assert "batch_size = 8 must be divisible by the number of devices (3)" in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()


def test_main_bad_value_is_one_line(tmp_path):
  code, err = run_cli(*TOY, "--workdir", str(tmp_path), "--mode", "check",
                      "--cpu_devices", "many")
  assert code == 2
  assert err.strip() == ("error: --cpu_devices = 'many': expected 'auto' (one device per "
                         f"CPU core, {cpu_devices.available_cores()} here) or a positive "
                         "integer")
  assert not os.listdir(tmp_path)
