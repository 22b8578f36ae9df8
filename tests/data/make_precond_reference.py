"""Writes tests/data/precond_reference.npz: network and score-function outputs of tiny
networks, computed by the code from BEFORE the preconditioning module existed,
when every backbone centered its input and divided by sigma itself.

How it was produced (from a checkout of the old code at /work/ref, commit dfdcbd0):

    cd /work/ref && /work/main/.venv/bin/python \
        /work/main/tests/data/make_precond_reference.py /work/main/tests/data/precond_reference.npz

The script imports `models`, `sde_lib` and `configs` from the working directory, so the
same functions (`CASES`, `outputs`) run against the old code here and against the new
code in tests/test_models.py::test_outputs_equal_the_code_before_preconditioning. Both
build each network abstractly and fill every variable from numpy with `fill_variables`,
whose values depend only on the variable's path inside the backbone (a leading
"backbone" level is ignored), so old and new networks get identical parameters without
compiling any random initializer.

Per case the file holds "<case>/net" = net(x, labels) (score_sde's model.apply),
"<case>/<mode>" = get_score_fn(sde, net, continuous=...)(x, t) for each mode, and
"<case>/n_params", "<case>/n_vars" (parameter / all-variable counts). x is not stored:
`inputs` rebuilds it from a numpy seed.
"""
from __future__ import annotations

import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Times where t (N - 1) and (T - t)(N - 1) are exact in float32 for N = 1001, so discrete
# label rounding rules cannot differ on them: 250 and 750.
T_EVAL = (0.25, 0.75)
N_DISCRETE = 1001


def _image(c, nf, image_size=8):
  c.model.nf = nf
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.data.image_size = image_size
  c.model.num_scales = N_DISCRETE
  c.model.dtype = "float32"
  return c


def _config(case: str):
  """The config of `case`: a score_sde config file, shrunk."""
  if case == "ncsnpp_ve_continuous":
    from configs.ve.cifar10_ncsnpp_continuous import get_config
    return _image(get_config(), 16)
  if case == "ncsnpp_ve_discrete":
    from configs.ve.cifar10_ncsnpp import get_config
    return _image(get_config(), 16)
  if case == "ddpmpp_vp":
    from configs.vp.cifar10_ddpmpp_continuous import get_config
    return _image(get_config(), 16)
  if case == "ddpm_vp":
    from configs.vp.ddpm.cifar10 import get_config
    return _image(get_config(), 32)  # GroupNorm with 32 groups
  if case == "ddpm_ve_discrete":  # score_sde's configs/ve/cifar10_ddpm.py: SMLD with DDPM
    from configs.vp.ddpm.cifar10 import get_config
    c = _image(get_config(), 32)
    c.training.sde, c.training.continuous = "vesde", False
    c.data.centered, c.model.scale_by_sigma = False, True
    return c
  if case in ("ncsnv2_discrete", "ncsnv2_continuous", "ncsn_discrete"):
    from configs.ve.ncsnv2.cifar10 import get_config
    c = get_config()
    c.model.nf, c.data.image_size, c.model.num_scales = 16, 8, N_DISCRETE
    c.model.dtype = "float32"
    c.training.continuous = case == "ncsnv2_continuous"
    if case == "ncsn_discrete":
      c.model.name = "ncsn"
    return c
  if case in ("mlp_ve_continuous", "mlp_vp"):
    from configs.default_toy import get_config
    c = get_config()
    if case == "mlp_ve_continuous":
      from configs.toy.checkerboard_vesde import get_config
      c = get_config()
    c.model.nf, c.model.num_layers = 32, 2
    return c
  raise KeyError(case)


# case: (labels given to net(x, labels), score-function modes)
CASES = {
    "ncsnpp_ve_continuous": ((0.05, 20.0), ("continuous",)),
    "ncsnpp_ve_discrete": ((250.0, 750.0), ("discrete",)),
    "ddpmpp_vp": ((249.75, 749.25), ("continuous", "discrete")),
    "ddpm_vp": ((250.0, 750.0), ("continuous", "discrete")),
    "ddpm_ve_discrete": ((250.0, 750.0), ("discrete",)),
    "ncsnv2_discrete": ((250.0, 750.0), ("discrete",)),
    "ncsnv2_continuous": ((0.05, 20.0), ("continuous",)),
    "ncsn_discrete": ((250.0, 750.0), ("discrete",)),
    "mlp_ve_continuous": ((0.05, 5.0), ("continuous",)),
    "mlp_vp": ((249.75, 749.25), ("continuous",)),
}


def _sde(config):
  import sde_lib
  c = config.model
  name = config.training.sde
  if name == "vesde":
    return sde_lib.VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max, N=N_DISCRETE)
  if name == "vpsde":
    return sde_lib.VPSDE(beta_min=c.beta_min, beta_max=c.beta_max, N=N_DISCRETE)
  raise KeyError(name)


def _path_key(path) -> str:
  parts = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
  if parts and parts[0] == "backbone":
    parts = parts[1:]
  return "/".join(parts)


def fill_variables(module: nnx.Module) -> nnx.Module:
  """Fills every variable of `module` (built abstractly) in place and returns it.

  Values depend on the path only (crc32 of it seeds numpy): the conditional norms' class
  embeddings and 1-D scale-like variables (GroupNorm scale, InstanceNorm++ gamma and
  alpha) ~ 1 + N(0, 0.1^2); other arrays with >= 2 axes ~ N(0, 1/fan_in); the Fourier
  weights W ~ N(0, 1), so the Fourier features vary across labels; other 1-D variables
  (biases, beta) ~ N(0, 0.1^2).
  """
  def fill(path, leaf):
    key = _path_key(path)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    shape = leaf.shape
    last = key.rsplit("/", 1)[-1]
    if last == "embed":  # conditional norms: per-class (gamma, alpha, beta) near 1
      v = 1.0 + 0.1 * rng.normal(size=shape)
    elif len(shape) >= 2:
      v = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif last in ("scale", "gamma", "alpha"):
      v = 1.0 + 0.1 * rng.normal(size=shape)
    elif last == "W":
      v = rng.normal(size=shape)
    else:
      v = 0.1 * rng.normal(size=shape)
    return jnp.asarray(v, leaf.dtype)

  state = nnx.state(module)
  nnx.update(module, jax.tree_util.tree_map_with_path(fill, state))
  return module


def inputs(case: str, config):
  """x: (2, H, W, C) in [0, 1] (or [-1, 1] if config.data.centered), or (2, D) toy data."""
  rng = np.random.default_rng(7)
  if case.startswith("mlp"):
    return jnp.asarray(rng.normal(size=(2, int(config.data.dim))), jnp.float32)
  size, ch = int(config.data.image_size), int(config.data.num_channels)
  x = rng.uniform(size=(2, size, size, ch))
  if config.data.centered:
    x = 2 * x - 1
  return jnp.asarray(x, jnp.float32)


def build(case: str):
  import models
  config = _config(case)
  net = fill_variables(nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0))))
  return config, net


def outputs(case: str) -> dict[str, np.ndarray]:
  """{"net": net(x, labels), <mode>: get_score_fn(...)(x, t), "n_params", "n_vars"}."""
  import models
  config, net = build(case)
  sde = _sde(config)
  labels_values, modes = CASES[case]
  x = inputs(case, config)
  labels = jnp.asarray(labels_values, jnp.float32)
  t = jnp.asarray(T_EVAL, jnp.float32)
  graphdef, state = nnx.split(net)

  @jax.jit
  def run(state):
    model = nnx.merge(graphdef, state)
    out = {"net": model(x, labels, train=False)}
    for mode in modes:
      fn = models.get_score_fn(sde, model, continuous=mode == "continuous")
      out[mode] = fn(x, t)
    return out

  out = {k: np.asarray(v) for k, v in run(state).items()}
  size = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  out["n_params"] = np.asarray(size(nnx.state(net, nnx.Param)))
  out["n_vars"] = np.asarray(size(nnx.state(net)))
  return out


def main(path: str) -> None:
  arrays = {}
  for case in CASES:
    for name, value in outputs(case).items():
      arrays[f"{case}/{name}"] = value
    print(case, "done", flush=True)
  np.savez_compressed(path, **arrays)


if __name__ == "__main__":
  sys.path.insert(0, ".")
  main(sys.argv[1])
