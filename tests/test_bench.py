"""The benchmark scripts (bench/) run end to end at tiny size on the CPU and write
complete records. No timing thresholds: these check the plumbing, not the speed.

The fast tests use the toy MLP config (an NCSN++ compile takes about a minute on a
loaded 2-core CPU even at 4x4 pixels); the tests marked slow (`pytest -m slow`) also run
the tiny DDPM++ and NCSN++ training steps and the DDPM++ sampler and likelihood.
"""
import json
import math
import os

import pytest

from bench import common, compile_cache, likelihood, sampler, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "configs", "default_toy.py")
DDPMPP = os.path.join(REPO, "configs", "vp", "cifar10_ddpmpp_continuous.py")
NCSNPP = os.path.join(REPO, "configs", "ve", "cifar10_ncsnpp_continuous.py")
slow = pytest.mark.slow  # the tiny image-network runs (pyproject.toml)

ENV_FIELDS = {"jax": str, "jaxlib": str, "flax": str, "backend": str, "device_kind": str,
              "n_devices": int, "date": str}


def _read_single(out, name):
  with open(os.path.join(out, f"{name}.jsonl")) as f:
    lines = f.read().splitlines()
  assert len(lines) == 1
  return json.loads(lines[0])


def _check(record, out, name, fields):
  """The returned record is the one written, with every field of the right type."""
  assert _read_single(out, name) == json.loads(json.dumps(record))
  assert record["figure"] == name
  for field, kind in {**fields, **ENV_FIELDS}.items():
    assert isinstance(record[field], kind), (field, record[field])
  assert record["backend"] == "cpu"
  for value in record["call_ms"]:
    assert value > 0
  if "first_compile_s" in record:
    assert record["first_compile_s"] > 0


def _positive_finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_train_step(record, out, batch, n_jitted_steps):
  _check(record, out, "train_step", {
      "ms_per_step": float, "images_per_s": float, "flops_per_step": float,
      "first_compile_s": float, "batch": int, "n_jitted_steps": int, "call_ms": list,
      "peak_flops_precision": str, "loss_finite": bool})
  assert record["batch"] == batch and record["n_jitted_steps"] == n_jitted_steps
  assert _positive_finite(record["ms_per_step"])
  assert record["images_per_s"] == pytest.approx(batch / record["ms_per_step"] * 1e3)
  assert _positive_finite(record["flops_per_step"])  # from XLA's cost analysis
  # No peak-FLOPs entry for a CPU: MFU is null, not a made-up number.
  assert record["peak_flops"] is None and record["mfu"] is None
  assert record["peak_memory_bytes"] is None or record["peak_memory_bytes"] > 0
  assert record["loss_finite"]
  assert len(record["call_ms"]) == record["iters"]


def test_train_step_toy(tmp_path):
  """Both records are complete, and a 3-step scan reports the FLOPs of one step (from a
  compiled one-step program: XLA counts a loop body once), those of a 1-step run."""
  # batch 8 divides the device count of an 8-device CPU test run as well
  args = ["--config", TOY, "--tiny", "--batch", "8", "--warmup", "1", "--iters", "2"]
  one = train_step.main(args + ["--out", str(tmp_path / "a"), "--n_jitted_steps", "1"])
  three = train_step.main(args + ["--out", str(tmp_path / "b"), "--n_jitted_steps", "3"])
  _check_train_step(one, str(tmp_path / "a"), batch=8, n_jitted_steps=1)
  _check_train_step(three, str(tmp_path / "b"), batch=8, n_jitted_steps=3)
  assert one["tiny"] and one["model"] == "mlp" and one["dtype"] == "float32"
  assert three["flops_per_step"] == pytest.approx(one["flops_per_step"], rel=1e-3)


def test_results_append(tmp_path):
  out = str(tmp_path)
  common.emit({"figure": "x", "v": 1}, "x", out)
  common.emit({"figure": "x", "v": 2}, "x", out)
  with open(tmp_path / "x.jsonl") as f:
    assert [json.loads(l)["v"] for l in f] == [1, 2]


def test_sampler_toy(tmp_path):
  out = str(tmp_path)
  # 25 levels: the VP toy's DDPM chain needs beta_max / N < 1 (beta_max = 20).
  record = sampler.main(["--config", TOY, "--tiny", "--num_scales", "25", "--out", out,
                         "--warmup", "1", "--iters", "2"])
  _check(record, out, "sampler", {"nfe": int, "ms_per_nfe": float,
                                  "ms_per_sample_call": float, "num_scales": int})
  # reverse diffusion + one Langevin step: two model evaluations per grid point
  assert record["nfe"] == 50
  assert _positive_finite(record["ms_per_nfe"])
  assert record["ms_per_nfe"] == pytest.approx(record["ms_per_sample_call"] / 50)


def test_likelihood_toy(tmp_path):
  out = str(tmp_path)
  record = likelihood.main(["--config", TOY, "--tiny", "--out", out, "--rtol", "1e-2",
                            "--atol", "1e-2", "--warmup", "0", "--iters", "2"])
  _check(record, out, "likelihood", {"nfe": int, "ms_per_nfe": float,
                                     "ms_per_solve": float, "bpd_finite": bool})
  assert record["trace"] == "rademacher" and record["bpd_finite"]
  # Hairer's first step (2 evaluations) and 6 per accepted/rejected tsit5 step
  assert record["nfe"] >= 8
  assert record["ms_per_nfe"] == pytest.approx(record["ms_per_solve"] / record["nfe"])


@slow  # in make test-slow (CI): tens of seconds
def test_compile_cache_toy(tmp_path):
  out = str(tmp_path / "out")
  cache = str(tmp_path / "cache")
  record = compile_cache.main(["--config", TOY, "--tiny", "--out", out,
                               "--cache_dir", cache])
  assert _read_single(out, "compile_cache") == record
  for field in ("cold_compile_s", "cached_compile_s", "cold_process_wall_s",
                "cached_process_wall_s"):
    assert _positive_finite(record[field]), field
  # The first run wrote the cache that the second read; the subprocesses' own records
  # went elsewhere.
  assert record["cache_entries_after_first_run"] > 0
  assert os.listdir(out) == ["compile_cache.jsonl"]


def test_compile_cache_refuses_a_warm_cache(tmp_path):
  (tmp_path / "cache").mkdir()
  (tmp_path / "cache" / "entry").write_text("x")
  with pytest.raises(ValueError, match="not empty"):
    compile_cache.main(["--config", TOY, "--tiny", "--out", str(tmp_path),
                        "--cache_dir", str(tmp_path / "cache")])


def test_set_overrides_and_tiny(tmp_path):
  args = train_step.parser().parse_args(
      ["--config", DDPMPP, "--tiny", "--set", "model.nf=8", "--set",
       "model.ch_mult=(1,)", "--dtype", "bfloat16"])
  config = common.load_config(args)
  assert config.model.nf == 8 and tuple(config.model.ch_mult) == (1,)
  assert config.model.num_res_blocks == 1 and config.data.image_size == 8
  assert config.model.dtype == "bfloat16" and args.batch == common.TINY_BATCH
  full = common.load_config(train_step.parser().parse_args(["--config", DDPMPP]))
  assert full.model.nf == 128 and full.training.batch_size == 128
  with pytest.raises(KeyError):
    common.load_config(train_step.parser().parse_args(
        ["--config", DDPMPP, "--set", "model.no_such_field=1"]))


def test_peak_flops_table():
  class Dev:
    def __init__(self, kind, platform="gpu"):
      self.device_kind, self.platform = kind, platform

  h100 = Dev("NVIDIA H100 80GB HBM3")
  assert common.peak_flops(h100, "bfloat16") == 989e12
  assert common.peak_flops(h100, "tf32") == 494e12
  assert common.peak_flops(h100, "float32") == 67e12
  assert common.peak_flops(Dev("cpu", "cpu"), "float32") is None
  assert common.matmul_precision_key("bfloat16", h100) == "bfloat16"
  assert common.matmul_precision_key("float32", Dev("cpu", "cpu")) == "float32"


def test_cost_flops_list_or_dict():
  class C:
    def __init__(self, analysis):
      self.analysis = analysis

    def cost_analysis(self):
      return self.analysis

  assert common.cost_flops(C({"flops": 3.0})) == 3.0
  assert common.cost_flops(C([{"flops": 3.0}, {"flops": 2.0}])) == 5.0
  assert common.cost_flops(C(None)) is None
  assert common.cost_flops(C([{}])) is None


@slow
@pytest.mark.parametrize("config", [DDPMPP, NCSNPP])
def test_train_step_image_networks(tmp_path, config):
  out = str(tmp_path)
  record = train_step.main(["--config", config, "--tiny", "--batch", "8", "--out", out,
                            "--warmup", "1", "--iters", "2", "--dtype", "bfloat16"])
  _check_train_step(record, out, batch=8, n_jitted_steps=1)
  assert record["model"] == "ncsnpp" and record["dtype"] == "bfloat16"


@slow
def test_sampler_and_likelihood_ddpmpp(tmp_path):
  out = str(tmp_path)
  s = sampler.main(["--config", DDPMPP, "--tiny", "--num_scales", "2", "--out", out,
                    "--warmup", "0", "--iters", "1", "--dtype", "bfloat16"])
  assert s["nfe"] == 4 and _positive_finite(s["ms_per_nfe"])
  l = likelihood.main(["--config", DDPMPP, "--tiny", "--out", out, "--warmup", "0",
                       "--iters", "1", "--rtol", "1e-2", "--atol", "1e-2"])
  assert l["nfe"] >= 8 and l["bpd_finite"] and _positive_finite(l["ms_per_nfe"])


@slow  # in make test-slow (CI): tens of seconds
def test_ncsnpp_cpu_tiny(tmp_path):
  """bench/ncsnpp_cpu.py (the CPU figure in BENCHMARKS.md) runs and records finite times."""
  from bench import ncsnpp_cpu
  record = ncsnpp_cpu.main(["--tiny", "--out", str(tmp_path), "--warmup", "0",
                            "--iters", "1"])
  for field in ("forward_ms", "train_step_ms", "forward_cpu_ms", "train_step_cpu_ms"):
    assert _positive_finite(record[field]), field
  assert record["threads"] >= 1


@slow  # in make test-slow (CI): tens of seconds
def test_fast_samplers_toy_records_paired_chunks(tmp_path):
  """bench/fast_samplers.py end to end on a toy model trained 30 steps: the PC and
  adaptive ODE references and two methods at NFE 5, 600 samples in 3 chunks of 200
  against a 4,000-point reference; each record has its chunk distances (their mean is
  `sw`), the floor's chunks, and the NFE the sampler reports. An unknown --methods label
  is one UserError naming the choices."""
  from bench import fast_samplers
  from sde_lib import UserError
  out = str(tmp_path / "out")
  fast_samplers.main(["--config", "configs/default_toy.py", "--workdir",
                      str(tmp_path / "w"), "--train_steps", "30", "--n", "600",
                      "--chunk", "200", "--nfes", "5", "--pc_steps", "20",
                      "--methods", "ddim,dpm_solver++-2M", "--out", out])
  with open(os.path.join(out, "fast_samplers.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["sampler"] for r in records] == ["pc-20", "ode-adaptive", "ddim",
                                             "dpm_solver++-2M"]
  assert [r["nfe"] for r in records][:1] == [40] and records[2]["nfe"] == 5
  for r in records:
    assert len(r["sw_chunks"]) == 3 and len(r["floor_chunks"]) == 3
    assert math.isclose(r["sw"], sum(r["sw_chunks"]) / 3, rel_tol=1e-9)
    assert r["finite"] and r["n_reference"] == 4000 and r["train_steps"] == 30
  with pytest.raises(UserError, match="choices: ddim"):
    fast_samplers.main(["--config", "configs/default_toy.py", "--workdir",
                        str(tmp_path / "w"), "--methods", "ddim,heun", "--out", out])
