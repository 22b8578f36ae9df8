"""Regenerates tests/data/score_sde_linen_names.json from yang-song/score_sde's own code.

Needs a checkout of https://github.com/yang-song/score_sde (not vendored here). Run
    python tests/data/make_score_sde_linen_names.py /path/to/score_sde
with this repo's Python env. The checkout's files are copied to a temporary folder and
patched only so that they import under today's flax without TensorFlow
(`import tensorflow as tf` -> `tf = None` in utils.py, `flax.optim.Optimizer` -> `Any` in
models/utils.py: both unused by model construction; NCSN's conv `bias_init` lambdas in
models/layers.py take the `dtype` argument today's flax passes). For each tiny config the script
initialises score_sde's linen network (model.init) and records every `params` leaf as
'<Module_k>/<...>/<leaf>' -> shape: exactly the `params_ema` tree of a score_sde
checkpoint for that config.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

TINY = {"model.nf": 16, "model.ch_mult": [1, 2], "model.num_res_blocks": 1,
        "model.attn_resolutions": [8], "data.image_size": 16}
CASES = {
    "ncsnpp_ve": ("configs.ve.cifar10_ncsnpp_continuous", TINY),
    "ddpmpp_vp": ("configs.vp.cifar10_ddpmpp_continuous", TINY),
    "ncsnpp_output_skip_cat": ("configs.ve.cifar10_ncsnpp_continuous", dict(
        TINY, **{"model.progressive": "output_skip", "model.progressive_input": "input_skip",
                 "model.progressive_combine": "cat"})),
    "ncsnpp_ddpm_blocks_residual": ("configs.ve.cifar10_ncsnpp_continuous", dict(
        TINY, **{"model.progressive": "residual", "model.progressive_input": "input_skip",
                 "model.progressive_combine": "sum", "model.resblock_type": "ddpm"})),
    "ddpm": ("configs.vp.ddpm.cifar10", dict(TINY, **{"model.nf": 32})),
    # NCSNv2: 16 px keeps every size's deepest stage at least 2x2.
    "ncsnv2_64": ("configs.ve.ncsnv2.cifar10", {"model.nf": 8, "data.image_size": 16}),
    "ncsnv2_128": ("configs.ve.ncsnv2.cifar10", {"model.name": "ncsnv2_128",
                                                 "model.nf": 4, "data.image_size": 16}),
    "ncsnv2_256": ("configs.ve.ncsnv2.cifar10", {"model.name": "ncsnv2_256",
                                                 "model.nf": 4, "data.image_size": 16}),
}

CHILD = r'''
import importlib, json, sys
sys.path.insert(0, ".")
import jax, numpy as np
cfg_mod, overrides = sys.argv[1], json.loads(sys.argv[2])
config = importlib.import_module(cfg_mod).get_config()
for k, v in overrides.items():
  a, b = k.split(".")
  setattr(getattr(config, a), b, tuple(v) if isinstance(v, list) else v)
from models import ncsnpp, ddpm, ncsnv2, utils as mutils
model = mutils._MODELS[config.model.name](config=config)
s, c = config.data.image_size, config.data.num_channels
x = np.zeros((2, s, s, c), np.float32)
labels = np.array([0.5, 7.0], np.float32)
if config.model.name.startswith("ncsn"):
  labels = np.array([0, 7], np.int32)  # NCSNv2 indexes its sigmas by label
params = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                    x, labels, train=False)["params"]
out = {}
def walk(t, pre):
  for k, v in t.items():
    n = f"{pre}/{k}" if pre else k
    walk(v, n) if hasattr(v, "items") else out.__setitem__(n, list(v.shape))
walk(params, "")
print(json.dumps(out))
'''


def main(score_sde: str):
  tmp = pathlib.Path(tempfile.mkdtemp())
  for name in ("models", "configs"):
    shutil.copytree(os.path.join(score_sde, name), tmp / name)
  for name in ("sde_lib.py", "utils.py"):
    shutil.copy(os.path.join(score_sde, name), tmp / name)
  u = tmp / "utils.py"
  u.write_text(u.read_text().replace("import tensorflow as tf", "tf = None"))
  m = tmp / "models" / "utils.py"
  m.write_text(m.read_text().replace("flax.optim.Optimizer", "Any"))
  lay = tmp / "models" / "layers.py"  # today's flax passes a dtype to bias_init
  lay.write_text(lay.read_text().replace("bias_init = lambda key, shape:",
                                         "bias_init = lambda key, shape, dtype=None:"))
  result = {}
  for case, (cfg, overrides) in CASES.items():
    out = subprocess.run([sys.executable, "-c", CHILD, cfg, json.dumps(overrides)],
                         cwd=tmp, check=True, capture_output=True, text=True).stdout
    result[case] = {"config": cfg, "overrides": overrides,
                    "params_ema": json.loads(out.strip().splitlines()[-1])}
  dest = pathlib.Path(__file__).with_name("score_sde_linen_names.json")
  with open(dest, "w") as f:
    f.write("{\n" + ",\n".join(
        json.dumps(k) + ": " + json.dumps(v, sort_keys=True, separators=(",", ":"))
        for k, v in sorted(result.items())) + "\n}\n")
  shutil.rmtree(tmp)


if __name__ == "__main__":
  main(sys.argv[1])
