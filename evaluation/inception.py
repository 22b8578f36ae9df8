"""The FID Inception-v3 in JAX: pytorch-fid's port of TensorFlow's `inception-2015-12-05`
graph, the network that defines FID, KID and IS, as a Flax NNX module (NHWC) whose
parameter paths are the PyTorch state-dict names, so that `load` reads pytorch-fid's
weights file unchanged; `preprocess` is pytorch-fid's input pipeline.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import io
from common.errors import MissingFileError, UserError

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
CONFIG_FIELD = "config.eval.inception_path"
INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------- layers


class _Conv(nnx.Module):
  """Bias-free 2-D convolution; `weight` is HWIO (PyTorch's OIHW transposed)."""

  def __init__(self, cin: int, cout: int, kernel, stride, padding):
    kh, kw = _pair(kernel)
    self.weight = nnx.Param(jnp.zeros((kh, kw, cin, cout), jnp.float32))
    self.stride = _pair(stride)
    ph, pw = _pair(padding)
    self.padding = ((ph, ph), (pw, pw))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, self.weight[...], window_strides=self.stride, padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)


class _BatchNorm(nnx.Module):
  """Inference BatchNorm: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

  def __init__(self, c: int):
    self.weight = nnx.Param(jnp.ones((c,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
    self.running_mean = nnx.BatchStat(jnp.zeros((c,), jnp.float32))
    self.running_var = nnx.BatchStat(jnp.ones((c,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + BN_EPS)
    return x * scale + (self.bias[...] - self.running_mean[...] * scale)


class BasicConv2d(nnx.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps=0.001) -> ReLU."""

  def __init__(self, cin: int, cout: int, kernel=1, stride=1, padding=0):
    self.conv = _Conv(cin, cout, kernel, stride, padding)
    self.bn = _BatchNorm(cout)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def _max_pool(x: jax.Array, size: int, stride: int, pad: int) -> jax.Array:
  """F.max_pool2d(kernel_size=size, stride=stride, padding=pad): padding is -inf."""
  p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1), p)


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  """F.avg_pool2d(kernel_size=3, stride=1, padding=1, count_include_pad=False), NHWC:
  each output is the mean over the window's pixels inside the image (4, 6 or 9), as
  TensorFlow's average pool computes it (the FID blocks' patch)."""
  p = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, p)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, p)
  return total / count


# --------------------------------------------------------------------------- blocks


class InceptionA(nnx.Module):
  """Mixed_5b/c/d (FIDInceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(excl. pad)-1x1."""

  def __init__(self, cin: int, pool_features: int):
    self.branch1x1 = BasicConv2d(cin, 64, 1)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, 1)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a (torchvision InceptionB, unpatched): grid reduction 35 -> 17."""

  def __init__(self, cin: int):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2, 0)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b..e (FIDInceptionC): factorized 7x7 branches, avgpool excluding padding."""

  def __init__(self, cin: int, channels_7x7: int):
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(cin, 192, 1)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a (torchvision InceptionD, unpatched): grid reduction 17 -> 8."""

  def __init__(self, cin: int):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2, 0)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b (FIDInceptionE_1, pool="avg": average pool excluding padding) and Mixed_7c
  (FIDInceptionE_2, pool="max": 3x3/1 max pool, padding 1)."""

  def __init__(self, cin: int, pool: str):
    if pool not in ("avg", "max"):
      raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = avg_pool_exclude_pad(x) if self.pool == "avg" else _max_pool(x, 3, 1, 1)
    return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class _Linear(nnx.Module):
  """torch.nn.Linear: y = x W^T + b with W (out, in) kept in PyTorch's layout."""

  def __init__(self, cin: int, cout: int):
    self.weight = nnx.Param(jnp.zeros((cout, cin), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x):
    return jnp.dot(x, self.weight[...].T, precision=_HIGHEST) + self.bias[...]


# --------------------------------------------------------------------------- network


class InceptionV3(nnx.Module):
  """pytorch-fid's `fid_inception_v3()` (eval mode) in NHWC; parameters start at zero
  (BatchNorm at identity) and are meant to be filled by `load` / `from_state_dict`.

  `__call__(images)`: uint8 (or integer-valued) images (B, H, W, 3) in [0, 255], any H, W
  -> (pool3 (B, 2048), logits (B, 1008)), float32. `forward(x)`: the network alone on
  x (B, 299, 299, 3) in [-1, 1].

  FID, KID and IS are defined by one particular network: the Inception-v3 graph
  `inception-2015-12-05` that TensorFlow's FID code (Heusel et al. 2017) and TF-GAN run.
  pytorch-fid (mseitzer/pytorch-fid, `src/pytorch_fid/inception.py`) ported it to PyTorch
  as `fid_inception_v3()`: torchvision's `Inception3` layout with 1008 output classes, no
  auxiliary head, and four blocks patched to match the TF graph:

  - `FIDInceptionA` (Mixed_5b/c/d), `FIDInceptionC` (Mixed_6b..e), `FIDInceptionE_1`
    (Mixed_7b): the pool branch is a 3x3/1 average pool that divides by the number of
    *valid* pixels (`count_include_pad=False`), as TF's average pool does;
  - `FIDInceptionE_2` (Mixed_7c): the pool branch is a 3x3/1 *max* pool (padding 1).

  Every convolution is torchvision's `BasicConv2d`: conv without bias, BatchNorm with
  eps = 0.001 (inference: running statistics), ReLU. The attribute paths are the PyTorch
  state-dict names (`Mixed_5b.branch1x1.conv.weight` is `net.Mixed_5b.branch1x1.conv.weight`),
  and PyTorch's OIHW kernels are transposed to HWIO when loaded. Outputs: pool3, the 2048
  averages of the last block (the FID/KID features), and the 1008 logits of the final
  linear layer (IS). Convolutions and matmuls run at full float32 precision
  (`precision=HIGHEST`; not TF32 on GPU).
  """

  def __init__(self):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
    self.Mixed_5b = InceptionA(192, pool_features=32)
    self.Mixed_5c = InceptionA(256, pool_features=64)
    self.Mixed_5d = InceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, channels_7x7=128)
    self.Mixed_6c = InceptionC(768, channels_7x7=160)
    self.Mixed_6d = InceptionC(768, channels_7x7=160)
    self.Mixed_6e = InceptionC(768, channels_7x7=192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280, pool="avg")
    self.Mixed_7c = InceptionE(2048, pool="max")
    self.fc = _Linear(NUM_FEATURES, NUM_CLASSES)

  def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x (B, 299, 299, 3) in [-1, 1] -> (pool3 (B, 2048), logits (B, 1008))."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))   # 147 x 147 x 64
    x = _max_pool(x, 3, 2, 0)                                            # 73 x 73 x 64
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                        # 71 x 71 x 192
    x = _max_pool(x, 3, 2, 0)                                            # 35 x 35 x 192
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)                                                       # 8 x 8 x 2048
    pool3 = jnp.mean(x, axis=(1, 2))
    # Dropout is the identity in eval mode; pytorch-fid's fc has 1008 outputs.
    return pool3, self.fc(pool3)

  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.forward(preprocess(images))


# --------------------------------------------------------------------------- preprocessing


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix of PyTorch's 1-D bilinear interpolation with
  align_corners=False and no antialiasing (aten's upsample_bilinear2d):

    src(i) = max(0, (i + 1/2) * in_size / out_size - 1/2),   i0 = floor(src),
    i1 = min(i0 + 1, in_size - 1),  out[i] = (1 - (src - i0)) in[i0] + (src - i0) in[i1].

  Downsampling uses the same two taps (no low-pass filter), unlike jax.image.resize.
  """
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = src - i0
  m = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - lam)
  np.add.at(m, (rows, i1), lam)
  return m


def resize_bilinear(x: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """x (B, H, W, C) float -> (B, size, size, C): torch F.interpolate(mode='bilinear',
  align_corners=False) as two matrix products (separable, exact float32 matmuls)."""
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x  # the rule is the identity at scale 1 (src(i) = i)
  mh = jnp.asarray(bilinear_matrix(h, size), x.dtype)
  mw = jnp.asarray(bilinear_matrix(w, size), x.dtype)
  x = jnp.einsum("ph,bhwc->bpwc", mh, x, precision=_HIGHEST)
  return jnp.einsum("qw,bpwc->bpqc", mw, x, precision=_HIGHEST)


def preprocess(images: jax.Array) -> jax.Array:
  """pytorch-fid's input pipeline: uint8 (B, H, W, 3) in [0, 255] -> x / 255 -> bilinear
  resize to 299 x 299 (align_corners=False) -> 2x - 1, float32 (B, 299, 299, 3).

  This is pytorch-fid's preprocessing exactly: the resize is PyTorch's `F.interpolate`
  rule with `align_corners=False`, without antialiasing, also when downsampling.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.integer):
    # A float image in [0, 1] would silently be read as almost black.
    raise ValueError(f"images must be uint8 in [0, 255], got dtype {images.dtype}; "
                     "quantize samples first (sample_quality.quantize)")
  x = images.astype(jnp.float32) / 255.0
  return 2.0 * resize_bilinear(x) - 1.0


# --------------------------------------------------------------------------- weights


def _abstract() -> InceptionV3:
  return nnx.eval_shape(InceptionV3)


@functools.lru_cache(maxsize=1)
def torch_shapes() -> dict[str, tuple[int, ...]]:
  """State-dict names of pytorch-fid's `fid_inception_v3()` (without the BatchNorms'
  `num_batches_tracked` counters) and their PyTorch shapes (conv weights OIHW), sorted
  by name; derived from this module's structure, which mirrors pytorch-fid's."""
  _, state = nnx.split(_abstract())
  shapes = {}
  for path, leaf in nnx.to_flat_state(state):
    name = ".".join(str(p) for p in path)
    shape = tuple(leaf.get_value().shape)
    if name.endswith("conv.weight"):
      kh, kw, cin, cout = shape
      shape = (cout, cin, kh, kw)
    shapes[name] = shape
  return shapes


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights in pytorch-fid's state-dict layout (for tests and benchmarks).

  Conv kernels OIHW ~ N(0, 2 / fan_in) (He), so activations keep their scale through the
  ~95 ReLU layers; BatchNorm weight ~ U(0.5, 1.5), bias and running_mean ~ N(0, 0.1^2),
  running_var ~ U(0.5, 1.5); fc ~ N(0, 1 / 2048). Each BatchNorm also gets the int64
  `num_batches_tracked` scalar a PyTorch state dict carries.
  """
  rng = np.random.default_rng(seed)
  out: dict[str, np.ndarray] = {}
  for name, shape in torch_shapes().items():
    if name.endswith("conv.weight"):
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif name.endswith("running_var") or name.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name == "fc.weight":
      value = rng.standard_normal(shape, np.float32) * np.float32(NUM_FEATURES ** -0.5)
    else:
      value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    out[name] = value
    if name.endswith("running_var"):
      out[name[:-len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
  return out


def save_npz(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict (PyTorch names and layouts) as an uncompressed .npz
  (atomically, common.io.save_npz)."""
  io.save_npz(path, **{k: np.asarray(v) for k, v in state_dict.items()})


def from_state_dict(state_dict: Mapping[str, Any], source: str = "state dict"
                    ) -> InceptionV3:
  """An InceptionV3 holding `state_dict` (pytorch-fid's names; conv weights OIHW, which
  are transposed to HWIO). `num_batches_tracked` entries are ignored; a missing,
  unexpected or misshapen array raises UserError naming it (`source` names the file)."""
  expected = torch_shapes()
  given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  missing = [k for k in expected if k not in given]
  unexpected = [k for k in given if k not in expected]
  if missing or unexpected:
    raise UserError(
        f"{source} is not pytorch-fid's FID Inception state dict ({WEIGHTS_FILE}): "
        f"{len(missing)} arrays missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
        f"(e.g. {unexpected[:3]})")
  arrays = {}
  for name, shape in expected.items():
    value = np.asarray(given[name])
    if value.shape != shape:
      raise UserError(f"{source}: {name} has shape {value.shape}, expected {shape}")
    value = value.astype(np.float32)
    if name.endswith("conv.weight"):
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    arrays[name] = value

  graphdef, state = nnx.split(_abstract())
  flat = []
  for path, leaf in nnx.to_flat_state(state):
    name = ".".join(str(p) for p in path)
    flat.append((path, leaf.replace(jnp.asarray(arrays[name]))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The arrays of a `.pth` (read by models.pth's allow-list reader: no pickle code runs)
  or `.npz` weights file. A missing file raises MissingFileError saying where to get it."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingFileError(
        f"Inception weights file {path!r} not found: download pytorch-fid's {WEIGHTS_FILE} "
        f"from {WEIGHTS_URL} (or an .npz of the same arrays) and set {CONFIG_FIELD} to "
        "its path")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if path.endswith(".pth") or path.endswith(".pt"):
    from models import pth  # the allow-list torch-zip reader (no torch, no pickle code)
    return dict(pth.load_pth(path))
  raise UserError(f"Inception weights file {path!r}: expected a .pth or .npz file")


# --------------------------------------------------------------------------- the loaded net


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, images):
  return nnx.merge(graphdef, state)(images)


class Inception:
  """A loaded FID Inception: `net(images)` runs the jitted forward on uint8 images
  (B, H, W, 3) and returns (pool3 (B, 2048), logits (B, 1008)) float32.

  For use inside a larger jitted/sharded program: `net.graphdef`, `net.state` and the pure
  `Inception.apply(graphdef, state, images)` (= `nnx.merge(graphdef, state)(images)`).
  Compiles once per input shape; networks with the same structure share the compilation.
  """

  def __init__(self, module: InceptionV3):
    self.graphdef, self.state = nnx.split(module)

  @staticmethod
  def apply(graphdef, state, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return nnx.merge(graphdef, state)(images)

  @property
  def module(self) -> InceptionV3:
    return nnx.merge(self.graphdef, self.state)

  def __call__(self, images) -> tuple[jax.Array, jax.Array]:
    return _apply(self.graphdef, self.state, jnp.asarray(images))


def load(path: str) -> Inception:
  """pytorch-fid's FID Inception from `path`: its `pt_inception-2015-12-05-6726825d.pth`
  (or any `.pth` of `fid_inception_v3()`'s state dict) or an `.npz` of the same arrays
  under the same names (conv weights OIHW). Usage:

      net = inception.load("pt_inception-2015-12-05-6726825d.pth")   # or an .npz
      pool3, logits = net(images_uint8)      # (B, H, W, 3) -> (B, 2048), (B, 1008)
  """
  return Inception(from_state_dict(read_state_dict(path), source=os.fspath(path)))
