"""Fixed-seed fingerprints of every `--mode` of main.py, driven through the command line.

    python tests/fingerprint/record_fingerprints.py --out tests/fingerprint/fingerprints.json
        [--repo DIR] [--isolate] [--runs LABEL,LABEL,...]

Runs a fixed sequence of `main.py --config ... --workdir ... --mode ... --config.x=y`
commands (`PLAN`: tiny networks, a few steps, chained in a few workdirs: train once, then
sample, evaluate, ... from that checkpoint) on the tree at --repo (default: this file's
repository), and writes for each run the fingerprint of what it wrote:

  * every .npz: per array (sorted by name) the sha256 of its bytes and a float64 summary
    (sum, sum of squares, first 4 values), and one sha256 over all of them;
  * the numbers of the result JSON files (bpd/NLL, loss, FID, ...; timings left out);
  * every new checkpoint step: the same per-array record of its `state` arrays (read with
    orbax, no project code), and one sha256 over the sorted per-array hashes (independent
    of the tree's key names).

Outputs are named by role (`<run label>/<file name>`, or `<run label>/checkpoint`), never
by result-folder names. The inputs it needs (a tiny CIFAR-10 in its binary format, random
Inception weights as an .npz, a fake score_sde checkpoint) are written here with fixed
seeds; the two weight layouts (names and shapes) are stored in the output's "inputs" and
reused when it reads an existing fingerprint file (--shapes-from), so a rerun needs no
project code to write them.

By default all runs share ONE python process (`--isolate`: one `python main.py` process
per run): main.main is called through absl for each argv in turn, with absl's flags reset
and the config override flags removed between runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REPO = os.path.dirname(os.path.dirname(HERE))
FORMAT = 1

# ----------------------------------------------------------------------------- the plan

TOY_CONFIG = "configs/tiny.py:configs/toy/two_gaussians_vpsde_classifier.py"
RF_CONFIG = "configs/tiny.py:configs/toy/two_gaussians_rf.py"
IMAGE_CONFIG = "configs/tiny.py:configs/vp/cifar10_ddpmpp_continuous.py"

# Settings every run of a workdir shares (so later modes see the training run's config).
TOY = {
    "training.n_iters": 20, "training.batch_size": 64, "training.n_jitted_steps": 10,
    "training.log_freq": 10, "training.snapshot_freq": 20,
    "training.snapshot_freq_for_preemption": 20, "training.eval_freq": 0,
    "optim.warmup": 2, "model.ema_rate": 0.9, "model.num_scales": 20,
    "eval.batch_size": 16, "eval.num_samples": 16, "eval.num_eval_points": 16,
    "eval.rtol": 1e-3, "eval.atol": 1e-3, "sampling.rtol": 1e-3, "sampling.atol": 1e-3,
    "classifier.training.n_iters": 20, "classifier.training.batch_size": 64,
    "classifier.training.n_jitted_steps": 10, "classifier.training.log_freq": 10,
    "classifier.training.snapshot_freq": 20,
    "classifier.training.snapshot_freq_for_preemption": 20, "classifier.optim.warmup": 2,
    "classifier.model.nf": 16, "classifier.model.num_layers": 2,
    "classifier.model.embedding_dim": 16,
}
RF = {
    "training.n_iters": 20, "training.batch_size": 64, "training.n_jitted_steps": 10,
    "training.log_freq": 10, "training.snapshot_freq": 20,
    "training.snapshot_freq_for_preemption": 20, "training.eval_freq": 0,
    "optim.warmup": 2, "model.ema_rate": 0.9, "sampling.ode_steps": 10,
    "sampling.rtol": 1e-3, "sampling.atol": 1e-3,
    "eval.batch_size": 16, "eval.num_samples": 16, "eval.rf_nfe": "(1,2)",
    "eval.straightness_steps": 10,
    "reflow.num_pairs": 16, "reflow.shard_size": 8, "reflow.rtol": 1e-3,
    "reflow.atol": 1e-3,
}
# CIFAR-10 at its native 32x32 (the loader reads no other size); the tiny network.
IMAGE = {
    "data.image_size": 32, "training.batch_size": 4, "training.n_iters": 4,
    "training.n_jitted_steps": 2, "training.log_freq": 2, "training.eval_freq": 0,
    "training.snapshot_sampling": False, "training.snapshot_freq": 4,
    "training.snapshot_freq_for_preemption": 4, "optim.warmup": 0, "optim.lr": 2e-3,
    "model.ema_rate": 0.9, "model.num_scales": 25,
    "sampling.predictor": "reverse_diffusion", "sampling.corrector": "none",
    "eval.batch_size": 4, "eval.num_samples": 4, "eval.bpd_num_repeats": 1,
    "eval.rtol": 1e-2, "eval.atol": 1e-2, "eval.stats_split": "test",
    "eval.begin_ckpt": 0, "eval.end_ckpt": 0,  # the latest checkpoint
    "eval.enable_bpd": True,
}


def _run(label: str, workdir: str, config: str, mode: str, common: dict,
         **extra: Any) -> dict:
  return {"label": label, "workdir": workdir, "config": config, "mode": mode,
          "overrides": {**common, **extra}}


def plan(inputs: dict[str, str]) -> list[dict]:
  """The runs, in order; workdirs are names under the work root; `inputs` holds the
  paths of the written inputs (data_dir, inception, score_sde checkpoint)."""
  image = {**IMAGE, "data.data_dir": inputs["data_dir"],
           "eval.inception_path": inputs["inception"]}
  toy = lambda label, mode, **kw: _run(label, "toy", TOY_CONFIG, mode, TOY, **kw)
  rf = lambda label, mode, **kw: _run(label, "rf", RF_CONFIG, mode, RF, **kw)
  img = lambda label, mode, **kw: _run(label, "image", IMAGE_CONFIG, mode, image, **kw)
  return [
      toy("toy/train", "train"),
      toy("toy/sample_pc", "sample", **{"sampling.method": "pc"}),
      toy("toy/sample_ode", "sample", **{"sampling.method": "ode"}),
      toy("toy/sample_sde", "sample", **{"sampling.method": "sde"}),
      toy("toy/sample_fast", "sample", **{"sampling.method": "fast"}),
      toy("toy/sample_inpaint", "sample", **{"sampling.task": "inpaint"}),
      toy("toy/eval", "eval"),
      toy("toy/demo", "demo"),
      toy("toy/train_classifier", "train_classifier"),
      toy("toy/sample_class", "sample", **{"sampling.task": "class",
                                           "sampling.class_labels": "1,0",
                                           "sampling.classifier_scale": 1.0}),
      rf("rf/train", "train"),
      rf("rf/reflow_data", "reflow_data"),
      rf("rf/rf_eval", "rf_eval"),
      img("image/train", "train"),
      img("image/sample_pc", "sample"),
      img("image/sample_inpaint", "sample", **{"sampling.task": "inpaint",
                                               "sampling.mask": "center"}),
      img("image/sample_colorize", "sample", **{"sampling.task": "colorize"}),
      img("image/eval", "eval"),
      img("image/stats", "stats"),
      img("image/sample_quality", "sample_quality"),
      _run("import/import", "import", IMAGE_CONFIG, "import", image,
           **{"eval.import_path": inputs["score_sde"]}),
  ]


def argv_of(run: dict, root: str) -> list[str]:
  argv = ["main.py", "--config", run["config"], "--workdir",
          os.path.join(root, run["workdir"]), "--mode", run["mode"],
          "--compilation_cache_dir="]
  for field, value in run["overrides"].items():
    argv.append(f"--config.{field}={value}")
  return argv


# ----------------------------------------------------------------------------- inputs

N_TEST, N_PER_TRAIN_FILE = 8, 4
CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
               "test": ["test_batch.bin"]}


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
  """n structured RGB images uint8 (n, 32, 32, 3): a gradient between two random colours
  along a random direction, with a square of a third colour."""
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  out = np.empty((n, 32, 32, 3), np.uint8)
  for i in range(n):
    a, b, c = rng.uniform(0, 255, (3, 3))
    angle = rng.uniform(0, 2 * np.pi)
    s = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)
    img = (1 - s)[..., None] * a + s[..., None] * b
    top, left = rng.integers(2, 18, 2)
    img[top:top + 12, left:left + 12] = c
    out[i] = np.round(img).astype(np.uint8)
  return out


def write_cifar10(root: str) -> None:
  """A tiny CIFAR-10 in its binary format under root/cifar-10-batches-bin/: 4 images per
  training file, 8 test images; a record is the label byte, then the R, G, B planes."""
  rng = np.random.default_rng(0)
  folder = os.path.join(root, CIFAR_FOLDER)
  os.makedirs(folder)
  for split, names in CIFAR_FILES.items():
    for name in names:
      n = N_TEST if split == "test" else N_PER_TRAIN_FILE
      images = _images(n, rng)
      labels = rng.integers(0, 10, n).astype(np.uint8)
      chw = images.transpose(0, 3, 1, 2).reshape(n, -1)
      with open(os.path.join(folder, name), "wb") as f:
        f.write(np.concatenate([labels[:, None], chw], axis=1).tobytes())


def write_inception(path: str, shapes: list) -> None:
  """Random weights in pytorch-fid's state-dict layout (names and shapes from `shapes`):
  conv kernels OIHW ~ N(0, 2 / fan_in), BatchNorm weight and running_var ~ U(0.5, 1.5),
  fc ~ N(0, 1 / 2048), the rest N(0, 0.1^2); each BatchNorm gets num_batches_tracked."""
  rng = np.random.default_rng(0)
  out: dict[str, np.ndarray] = {}
  for name, shape in shapes:
    shape = tuple(shape)
    if name.endswith("conv.weight"):
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif name.endswith("running_var") or name.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name == "fc.weight":
      value = rng.standard_normal(shape, np.float32) * np.float32(2048 ** -0.5)
    else:
      value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    out[name] = value
    if name.endswith("running_var"):
      out[name[:-len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
  with open(path, "wb") as f:
    np.savez(f, **out)


def write_score_sde(path: str, shapes: list) -> None:
  """score_sde's checkpoint_N (flax msgpack of its train state) for the linen parameter
  tree `shapes` ([("a/b/kernel", shape), ...]): kernels N(0, 1 / fan_in), GroupNorm
  scales 1 + N(0, 0.02^2), everything else N(0, 0.02^2); the non-EMA target is the EMA
  weights + 1 (importing those instead shows)."""
  from flax import serialization
  rng = np.random.default_rng(1)
  ema: dict = {}
  for name, shape in shapes:
    shape = tuple(shape)
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      value = rng.standard_normal(shape) / np.sqrt(fan_in)
    elif leaf == "scale":
      value = 1.0 + 0.02 * rng.standard_normal(shape)
    else:
      value = 0.02 * rng.standard_normal(shape)
    node = ema
    *scopes, leaf = name.split("/")
    for s in scopes:
      node = node.setdefault(s, {})
    node[leaf] = value.astype(np.float32)

  def plus_one(tree):
    return {k: plus_one(v) if isinstance(v, dict) else v + np.float32(1.0)
            for k, v in tree.items()}

  state = {"step": 3, "optimizer": {"target": plus_one(ema), "state": {"step": 3}},
           "lr": 2e-4, "model_state": {}, "ema_rate": 0.999, "params_ema": ema,
           "rng": np.zeros(2, np.uint32)}
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(state))


# Run at record time only, on the recorded tree: the two weight layouts the inputs need.
_SHAPES_PROGRAM = r"""
import json, sys
from ml_collections import config_flags
from absl import flags
import numpy as np
from flax import nnx
sys.argv = ["x", "--config", sys.argv[1]] + sys.argv[2:]
config_flags.DEFINE_config_file("config", None, "")
flags.FLAGS(sys.argv)
config = flags.FLAGS.config
import models
from models import score_sde_import as ssi
from evaluation import inception
net = models.get_model(config, nnx.Rngs(0))
flat = []
def walk(prefix, tree):
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, dict):
      walk(prefix + k + "/", v)
    else:
      flat.append([prefix + k, list(np.shape(v))])
walk("", ssi.export_linen_params(net))
print(json.dumps({"score_sde_linen": flat,
                  "inception": [[k, list(v)] for k, v in inception.torch_shapes().items()]}))
"""


def introspect_shapes(repo: str) -> dict:
  argv = [a for a in argv_of({"config": IMAGE_CONFIG, "workdir": "x", "mode": "import",
                              "overrides": {k: v for k, v in IMAGE.items()}}, "/")
          if a.startswith("--config.")]
  out = subprocess.run([sys.executable, "-c", _SHAPES_PROGRAM, IMAGE_CONFIG, *argv],
                       cwd=repo, env=_env(repo), capture_output=True, text=True,
                       check=False)
  if out.returncode != 0:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def write_inputs(directory: str, shapes: dict) -> dict[str, str]:
  data_dir = os.path.join(directory, "data")
  write_cifar10(data_dir)
  inception = os.path.join(directory, "fid_inception.npz")
  write_inception(inception, shapes["inception"])
  score_sde = os.path.join(directory, "checkpoint_3")
  write_score_sde(score_sde, shapes["score_sde_linen"])
  return {"data_dir": data_dir, "inception": inception, "score_sde": score_sde}


# ----------------------------------------------------------------------------- fingerprints

# JSON fields that are not results: timings, paths, hashes of settings.
_SKIP_KEY_PARTS = ("time", "second", "per_sec", "elapsed", "wall", "duration", "path",
                   "date")


def array_record(a: np.ndarray) -> dict:
  """sha256 of the array's dtype, shape and bytes, and a float64 summary."""
  a = np.ascontiguousarray(a)
  h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
  h.update(a.tobytes())
  rec: dict[str, Any] = {"sha256": h.hexdigest(), "dtype": a.dtype.str,
                         "shape": list(a.shape)}
  if a.dtype.kind in "fiub":
    f = a.astype(np.float64).ravel()
    rec["sum"] = float(f.sum()) if f.size else 0.0
    rec["sumsq"] = float((f * f).sum()) if f.size else 0.0
    rec["first"] = [float(v) for v in f[:4]]
  return rec


def arrays_record(arrays: dict[str, np.ndarray]) -> dict:
  numeric = {k: v for k, v in arrays.items() if np.asarray(v).dtype.kind in "fiub"}
  recs = {k: array_record(np.asarray(numeric[k])) for k in sorted(numeric)}
  h = hashlib.sha256()
  for k in sorted(recs):
    h.update(k.encode() + recs[k]["sha256"].encode())
  return {"sha256": h.hexdigest(), "arrays": recs}


def npz_record(path: str) -> dict:
  with np.load(path, allow_pickle=False) as d:
    return arrays_record({k: d[k] for k in d.files})


def checkpoint_record(step_dir: str) -> dict:
  """The step's `state` arrays, read with orbax; one sha256 over the sorted per-array
  hashes (not the names), so a renamed tree with the same arrays matches."""
  import jax
  import orbax.checkpoint as ocp
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"))
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat[name] = np.asarray(leaf)
  recs = {k: array_record(v) for k, v in sorted(flat.items())}
  h = hashlib.sha256()
  for digest in sorted(r["sha256"] for r in recs.values()):
    h.update(digest.encode())
  return {"sha256": h.hexdigest(), "arrays": recs}


def json_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
  """Numeric leaves (bools excluded) of a JSON value, keyed by their path; fields whose
  name mentions a time, path or date are skipped."""
  out: dict[str, float] = {}
  if isinstance(obj, dict):
    for k, v in obj.items():
      if any(part in str(k).lower() for part in _SKIP_KEY_PARTS):
        continue
      out.update(json_numbers(v, f"{prefix}{k}."))
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      out.update(json_numbers(v, f"{prefix}{i}."))
  elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
    out[prefix.rstrip(".")] = float(obj)
  return out


# JSON files that hold results (the workdir layout and the modes' docstrings).
RESULT_JSON = ("bpd_summary.json", "loss.json", "demo_summary.json", "rf_eval.json",
               "metrics.jsonl", "bpd_batches.jsonl", "import.json")


def _is_result_json(name: str) -> bool:
  return name in RESULT_JSON or (name.startswith("result_") and name.endswith(".json"))


def json_record(path: str) -> dict:
  with open(path) as f:
    if path.endswith(".jsonl"):
      values = [json.loads(line) for line in f if line.strip()]
    else:
      values = json.load(f)
  return {"numbers": json_numbers(values)}


def _listing(root: str) -> dict[str, tuple[float, int]]:
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      p = os.path.join(dirpath, name)
      try:
        st = os.stat(p)
      except FileNotFoundError:
        continue
      out[p] = (st.st_mtime_ns, st.st_size)
  return out


def _checkpoint_steps(root: str) -> set[str]:
  found = set()
  for dirpath, dirnames, _ in os.walk(root):
    if os.path.basename(dirpath) == "checkpoints":
      found.update(os.path.join(dirpath, d) for d in dirnames if d.isdigit())
      dirnames[:] = []
  return found


def fingerprint_outputs(label: str, workdir: str, before: dict, ckpts_before: set) -> dict:
  """The records of the files a run wrote or changed in workdir, named by role."""
  after = _listing(workdir)
  changed = sorted(p for p, v in after.items() if before.get(p) != v)
  out: dict[str, dict] = {}

  def add(role: str, rec: dict) -> None:
    name, i = role, 1
    while name in out:  # several files of one kind: numbered in content order below
      i += 1
      name = f"{role}#{i}"
    out[name] = rec

  records = []
  for p in changed:
    base = os.path.basename(p)
    if "/checkpoints/" in p:
      continue
    if base.endswith(".npz"):
      records.append((f"{label}/{base}", npz_record(p)))
    elif _is_result_json(base):
      if base.startswith("result_"):
        base = "result.json"  # result_<hash of the reference>.json
      sub = "classifier/" if f"{os.sep}classifier{os.sep}" in p else ""
      records.append((f"{label}/{sub}{base}", json_record(p)))
  for step_dir in sorted(_checkpoint_steps(workdir) - ckpts_before,
                         key=lambda d: (os.path.dirname(d), int(os.path.basename(d)))):
    kind = "classifier_checkpoint" if f"{os.sep}classifier{os.sep}" in step_dir \
        else "checkpoint"
    records.append((f"{label}/{kind}@{os.path.basename(step_dir)}",
                    checkpoint_record(step_dir)))
  # Same-named files of one run (e.g. chunk_00000.npz ... or per-shard pairs keep their
  # names; two samples.npz would not): ordered by role, then by content, not by folder.
  records.sort(key=lambda r: (r[0], json.dumps(r[1], sort_keys=True)))
  for role, rec in records:
    add(role, rec)
  return out


# ----------------------------------------------------------------------------- running

def _env(repo: str) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = repo
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run on this machine
  return env


def drive(spec_path: str) -> None:
  """In the child process (cwd = the repo): every run of the spec through main.py's
  absl entry point, one after another; writes the fingerprints to spec["out"]."""
  with open(spec_path) as f:
    spec = json.load(f)
  repo, root = spec["repo"], spec["root"]
  sys.path.insert(0, repo)
  os.chdir(repo)
  results: dict[str, Any] = {"runs": {}, "outputs": {}}
  isolate = spec["isolate"]
  if not isolate:
    import main as main_module
    from absl import app, flags
    if not os.path.abspath(main_module.__file__).startswith(os.path.abspath(repo) + os.sep):
      raise RuntimeError(f"main imported from {main_module.__file__}, not from {repo}")
    flags_ = flags.FLAGS
  for run in spec["runs"]:
    workdir = os.path.join(root, run["workdir"])
    os.makedirs(workdir, exist_ok=True)
    before, ckpts = _listing(workdir), _checkpoint_steps(workdir)
    argv = argv_of(run, root)
    t0, c0 = time.time(), time.process_time()
    if isolate:
      proc = subprocess.run([sys.executable, *argv], cwd=repo, env=_env(repo),
                            capture_output=True, text=True, check=False)
      code, tail = proc.returncode, proc.stderr[-2000:]
    else:
      for name in [n for n in list(flags_) if n.startswith("config.")]:
        delattr(flags_, name)  # override flags bound to the previous run's config
      flags_.unparse_flags()
      sys.argv = list(argv)  # config_flags reads the overrides from sys.argv
      parser = getattr(main_module, "parse_flags", None)
      kwargs = {"flags_parser": parser} if parser else {}
      tail = ""
      try:
        app.run(main_module.main, argv=argv, **kwargs)
        code = 0
      except SystemExit as e:
        code = 0 if e.code in (None, 0) else e.code
      except Exception:  # a crash of one mode: recorded, the next runs go on
        code, tail = 1, traceback.format_exc()[-2000:]
    results["runs"][run["label"]] = {"argv": argv[1:], "exit": code,
                                     "wall_s": round(time.time() - t0, 2),
                                     "cpu_s": round(time.process_time() - c0, 2)}
    print(f"[fingerprint] {run['label']}: exit {code}, "
          f"{time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    if code != 0:
      results["runs"][run["label"]]["stderr_tail"] = tail
      continue
    results["outputs"].update(fingerprint_outputs(run["label"], workdir, before, ckpts))
  with open(spec["out"], "w") as f:
    json.dump(results, f)


def record(repo: str, shapes: dict, *, isolate: bool = False,
           labels: list[str] | None = None, keep: str | None = None) -> dict:
  """Writes the inputs, runs the plan (or the runs named in `labels` and the runs of
  their workdirs before them) on `repo` in a child process, returns the fingerprints."""
  import jax
  tmp = keep or tempfile.mkdtemp(prefix="fingerprint_")
  try:
    inputs = write_inputs(os.path.join(tmp, "inputs"), shapes)
    runs = plan(inputs)
    if labels:
      wanted_dirs = {r["workdir"] for r in runs if r["label"] in labels}
      runs = [r for r in runs if r["workdir"] in wanted_dirs]
    spec = {"repo": os.path.abspath(repo), "root": os.path.join(tmp, "work"),
            "runs": runs, "isolate": isolate, "out": os.path.join(tmp, "result.json")}
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_drive", spec_path],
                          cwd=repo, env=_env(os.path.abspath(repo)), check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"the driver failed with exit code {proc.returncode}")
    with open(spec["out"]) as f:
      result = json.load(f)
    result.update({"format": FORMAT, "jax_version": jax.__version__,
                   "numpy_version": np.__version__, "inputs": shapes,
                   "total_wall_s": round(time.time() - t0, 1)})
    return result
  finally:
    if keep is None:
      shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", help="where to write the fingerprints (JSON)")
  p.add_argument("--repo", default=DEFAULT_REPO, help="the tree to run (default: this one)")
  p.add_argument("--isolate", action="store_true", help="one main.py process per run")
  p.add_argument("--runs", default="", help="comma-separated run labels (and their "
                 "workdirs' earlier runs); default all")
  p.add_argument("--shapes-from", default="",
                 help="a fingerprint file whose 'inputs' layouts to reuse (default: ask "
                      "the tree at --repo)")
  p.add_argument("--keep", default=None, help="run in this directory and keep it")
  p.add_argument("--_drive", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._drive:
    drive(args._drive)
    return
  if not args.out:
    p.error("--out is required")
  if args.shapes_from:
    with open(args.shapes_from) as f:
      shapes = json.load(f)["inputs"]
  else:
    shapes = introspect_shapes(args.repo)
  result = record(args.repo, shapes, isolate=args.isolate,
                  labels=[s for s in args.runs.split(",") if s], keep=args.keep)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
  failed = [k for k, v in result["runs"].items() if v["exit"] != 0]
  print(f"wrote {args.out}: {len(result['outputs'])} outputs from {len(result['runs'])} "
        f"runs in {result['total_wall_s']}s" + (f"; FAILED: {failed}" if failed else ""))


if __name__ == "__main__":
  main()
