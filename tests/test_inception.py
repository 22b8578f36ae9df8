"""The JAX FID Inception (evaluation/inception.py) against independent re-statements.

- Preprocessing: the bilinear resize against a float64 numpy re-statement of aten's
  upsample_bilinear2d (align_corners=False) index rule, gathering the four neighbours,
  for up-, down- and odd-size resizes (tolerance 1e-6, float32 vs float64; the matrix form
  1e-12), plus PyTorch outputs worked out by hand ([0, 1] -> [0, .25, .75, 1]; 4 -> 2 averages pairs, no antialiasing).
- Pools: the count_include_pad=False average pool and the padded max pool against
  brute-force loops (1e-6).
- The whole network: random weights (`inception.random_state_dict`, pytorch-fid's names and
  OIHW layout) written as .npz and as .pth (models.pth's writer, zip and legacy formats),
  loaded, run on a batch of 2 uint8 32x32 images, and compared with a float64 numpy NCHW
  forward written here from pytorch-fid's module definitions (conv = cross-correlation on
  OIHW kernels, torch padding, concatenation order of the branches). JAX runs float32 at
  HIGHEST precision through ~95 layers: agreement to 1e-5 of the largest output (measured
  ~7e-7).
- Names and sizes: 472 arrays, and 23,850,960 trainable parameters = torchvision's
  documented inception_v3 count 27,161,264 - 3,326,696 (AuxLogits: 1x1 conv 768->128 + BN,
  5x5 conv 128->768 + BN, fc 768->1000) + 16,392 (8 more classes: 8 x 2048 + 8).
One compile of the network per input shape (module-scoped fixtures; ~10 s on a CPU).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import inception
from common.errors import UserError

# ------------------------------------------------------------------ float64 references


def _torch_bilinear_1d_index(in_size, out_size, i):
  """aten area_pixel_compute_source_index + upsample_bilinear2d, one output index."""
  scale = in_size / out_size
  src = scale * (i + 0.5) - 0.5
  if src < 0:
    src = 0.0
  i0 = int(src)
  i1 = i0 + (1 if i0 < in_size - 1 else 0)
  lam1 = src - i0
  return i0, i1, 1.0 - lam1, lam1


def _ref_resize(x, out_h, out_w):
  """x (B, H, W, C) float64 -> F.interpolate(bilinear, align_corners=False): aten's
  per-index rule above, evaluated as gathers of the four neighbours."""
  _, h, w, _ = x.shape
  y0, y1, ly0, ly1 = (np.array(v) for v in zip(
      *[_torch_bilinear_1d_index(h, out_h, i) for i in range(out_h)]))
  x0, x1, lx0, lx1 = (np.array(v)[None, :, None] for v in zip(
      *[_torch_bilinear_1d_index(w, out_w, i) for i in range(out_w)]))
  rows0, rows1 = x[:, y0], x[:, y1]  # (B, out_h, W, C)
  ly0, ly1 = ly0[None, :, None, None], ly1[None, :, None, None]
  return (ly0 * (lx0 * rows0[:, :, x0[0, :, 0]] + lx1 * rows0[:, :, x1[0, :, 0]])
          + ly1 * (lx0 * rows1[:, :, x0[0, :, 0]] + lx1 * rows1[:, :, x1[0, :, 0]]))


def _conv(x, w, stride=1, pad=(0, 0)):
  """NCHW cross-correlation with OIHW kernel w, torch's symmetric zero padding; im2col."""
  ph, pw = pad
  x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  o, i, kh, kw = w.shape
  b, _, h, wd = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  cols = np.empty((b, i, kh, kw, oh, ow))
  for dy in range(kh):
    for dx in range(kw):
      cols[:, :, dy, dx] = x[:, :, dy:dy + stride * oh:stride, dx:dx + stride * ow:stride]
  out = w.reshape(o, i * kh * kw) @ cols.reshape(b, i * kh * kw, oh * ow)
  return out.reshape(b, o, oh, ow)


def _pool(x, size, stride, pad, kind):
  """NCHW max pool (-inf padding) or average pool over the valid pixels only."""
  b, c, h, w = x.shape
  oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
  out = np.empty((b, c, oh, ow))
  for r in range(oh):
    for q in range(ow):
      y0, x0 = r * stride - pad, q * stride - pad
      win = x[:, :, max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)]
      out[:, :, r, q] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
  return out


class _RefNet:
  """pytorch-fid's fid_inception_v3() forward, float64 NCHW, straight from a state dict."""

  def __init__(self, sd):
    self.sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}

  def basic(self, name, x, stride=1, pad=(0, 0)):
    s = self.sd
    y = _conv(x, s[name + ".conv.weight"], stride, pad)
    scale = s[name + ".bn.weight"] / np.sqrt(s[name + ".bn.running_var"] + 1e-3)
    y = (y - s[name + ".bn.running_mean"][:, None, None]) * scale[:, None, None]
    return np.maximum(y + s[name + ".bn.bias"][:, None, None], 0.0)

  def block_a(self, n, x):
    b1 = self.basic(n + ".branch1x1", x)
    b5 = self.basic(n + ".branch5x5_2", self.basic(n + ".branch5x5_1", x), pad=(2, 2))
    b3 = self.basic(n + ".branch3x3dbl_1", x)
    b3 = self.basic(n + ".branch3x3dbl_2", b3, pad=(1, 1))
    b3 = self.basic(n + ".branch3x3dbl_3", b3, pad=(1, 1))
    bp = self.basic(n + ".branch_pool", _pool(x, 3, 1, 1, "avg"))
    return np.concatenate([b1, b5, b3, bp], 1)

  def block_b(self, n, x):
    b3 = self.basic(n + ".branch3x3", x, stride=2)
    bd = self.basic(n + ".branch3x3dbl_1", x)
    bd = self.basic(n + ".branch3x3dbl_2", bd, pad=(1, 1))
    bd = self.basic(n + ".branch3x3dbl_3", bd, stride=2)
    return np.concatenate([b3, bd, _pool(x, 3, 2, 0, "max")], 1)

  def block_c(self, n, x):
    b1 = self.basic(n + ".branch1x1", x)
    b7 = self.basic(n + ".branch7x7_1", x)
    b7 = self.basic(n + ".branch7x7_2", b7, pad=(0, 3))
    b7 = self.basic(n + ".branch7x7_3", b7, pad=(3, 0))
    bd = self.basic(n + ".branch7x7dbl_1", x)
    for k, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
      bd = self.basic(f"{n}.branch7x7dbl_{k}", bd, pad=pad)
    bp = self.basic(n + ".branch_pool", _pool(x, 3, 1, 1, "avg"))
    return np.concatenate([b1, b7, bd, bp], 1)

  def block_d(self, n, x):
    b3 = self.basic(n + ".branch3x3_2", self.basic(n + ".branch3x3_1", x), stride=2)
    b7 = self.basic(n + ".branch7x7x3_1", x)
    b7 = self.basic(n + ".branch7x7x3_2", b7, pad=(0, 3))
    b7 = self.basic(n + ".branch7x7x3_3", b7, pad=(3, 0))
    b7 = self.basic(n + ".branch7x7x3_4", b7, stride=2)
    return np.concatenate([b3, b7, _pool(x, 3, 2, 0, "max")], 1)

  def block_e(self, n, x, pool):
    b1 = self.basic(n + ".branch1x1", x)
    b3 = self.basic(n + ".branch3x3_1", x)
    b3 = np.concatenate([self.basic(n + ".branch3x3_2a", b3, pad=(0, 1)),
                         self.basic(n + ".branch3x3_2b", b3, pad=(1, 0))], 1)
    bd = self.basic(n + ".branch3x3dbl_2", self.basic(n + ".branch3x3dbl_1", x), pad=(1, 1))
    bd = np.concatenate([self.basic(n + ".branch3x3dbl_3a", bd, pad=(0, 1)),
                         self.basic(n + ".branch3x3dbl_3b", bd, pad=(1, 0))], 1)
    bp = self.basic(n + ".branch_pool", _pool(x, 3, 1, 1, pool))
    return np.concatenate([b1, b3, bd, bp], 1)

  def __call__(self, images_uint8):
    x = _ref_resize(images_uint8.astype(np.float64) / 255.0, 299, 299)
    x = (2.0 * x - 1.0).transpose(0, 3, 1, 2)
    x = self.basic("Conv2d_1a_3x3", x, stride=2)
    x = self.basic("Conv2d_2a_3x3", x)
    x = self.basic("Conv2d_2b_3x3", x, pad=(1, 1))
    x = _pool(x, 3, 2, 0, "max")
    x = self.basic("Conv2d_4a_3x3", self.basic("Conv2d_3b_1x1", x))
    x = _pool(x, 3, 2, 0, "max")
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
      x = self.block_a(n, x)
    x = self.block_b("Mixed_6a", x)
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      x = self.block_c(n, x)
    x = self.block_d("Mixed_7a", x)
    x = self.block_e("Mixed_7b", x, "avg")
    x = self.block_e("Mixed_7c", x, "max")
    pool3 = x.mean(axis=(2, 3))
    return pool3, pool3 @ self.sd["fc.weight"].T + self.sd["fc.bias"]


# ------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("in_hw,out_hw", [((32, 32), (299, 299)), ((64, 40), (17, 17)),
                                          ((7, 9), (5, 4)), ((13, 3), (4, 8))])
def test_resize_matches_torch_rule(in_hw, out_hw):
  x = np.random.default_rng(0).uniform(size=(2,) + in_hw + (3,))
  ref = _ref_resize(x, *out_hw)
  mh = inception.bilinear_matrix(in_hw[0], out_hw[0])
  mw = inception.bilinear_matrix(in_hw[1], out_hw[1])
  np.testing.assert_allclose(np.einsum("ph,bhwc,qw->bpqc", mh, x, mw), ref, atol=1e-12)
  if out_hw[0] == out_hw[1]:
    got = np.asarray(inception.resize_bilinear(jnp.asarray(x, jnp.float32), out_hw[0]))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_resize_hand_worked_torch_values():
  """F.interpolate(align_corners=False): [0, 1] -> [0, 1/4, 3/4, 1] (edges clamp);
  4 -> 2 takes the mean of each pair (two taps; an antialiasing filter would not)."""
  up = inception.bilinear_matrix(2, 4) @ np.array([0.0, 1.0])
  np.testing.assert_allclose(up, [0.0, 0.25, 0.75, 1.0], atol=1e-15)
  down = inception.bilinear_matrix(4, 2) @ np.array([1.0, 3.0, 10.0, 30.0])
  np.testing.assert_allclose(down, [2.0, 20.0], atol=1e-15)
  # jax.image.resize antialiases when downsampling: not pytorch-fid's rule.
  jax_down = jax.image.resize(jnp.array([1.0, 3.0, 10.0, 30.0]), (2,), "bilinear")
  assert not np.allclose(np.asarray(jax_down), [2.0, 20.0], atol=1e-3)
  np.testing.assert_array_equal(inception.bilinear_matrix(5, 5), np.eye(5))


def test_preprocess_range():
  img = np.zeros((1, 299, 299, 3), np.uint8)
  img[0, :, :150] = 255
  x = np.asarray(inception.preprocess(jnp.asarray(img)))
  assert x.shape == (1, 299, 299, 3) and x.dtype == np.float32
  assert x[0, 0, 0, 0] == 1.0 and x[0, 0, 298, 0] == -1.0


def test_float_images_are_refused():
  with pytest.raises(ValueError, match="uint8"):
    inception.preprocess(jnp.zeros((1, 8, 8, 3), jnp.float32))


def test_pools_match_brute_force():
  x = np.random.default_rng(1).normal(size=(2, 5, 6, 3))
  nchw = x.transpose(0, 3, 1, 2)
  got = np.asarray(inception.avg_pool_exclude_pad(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), _pool(nchw, 3, 1, 1, "avg"),
                             rtol=1e-6, atol=1e-6)
  got = np.asarray(inception._max_pool(jnp.asarray(x, jnp.float32), 3, 1, 1))
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), _pool(nchw, 3, 1, 1, "max"),
                             rtol=1e-6)
  got = np.asarray(inception._max_pool(jnp.asarray(x, jnp.float32), 3, 2, 0))
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), _pool(nchw, 3, 2, 0, "max"),
                             rtol=1e-6)


# ------------------------------------------------------------------ names and weights


def test_state_dict_names_and_sizes():
  shapes = inception.torch_shapes()
  assert len(shapes) == 94 * 5 + 2  # 94 BasicConv2d (conv + 4 BN arrays) + fc
  trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                  if not k.endswith(("running_mean", "running_var")))
  assert trainable == 27_161_264 - 3_326_696 + 16_392
  assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_6e.branch7x7dbl_4.conv.weight"] == (192, 192, 7, 1)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["Mixed_7b.branch3x3dbl_1.bn.running_var"] == (448,)
  assert not any("AuxLogits" in k for k in shapes)


def test_missing_weights_file_names_file_source_and_field(tmp_path):
  path = str(tmp_path / "nope.pth")
  with pytest.raises(UserError) as e:
    inception.load(path)
  msg = str(e.value)
  assert path in msg and "pt_inception-2015-12-05-6726825d.pth" in msg
  assert "github.com/mseitzer/pytorch-fid/releases" in msg
  assert "config.eval.inception_path" in msg
  assert isinstance(e.value, FileNotFoundError)


def test_wrong_state_dict_is_a_user_error():
  sd = {k: np.zeros(s, np.float32) for k, s in inception.torch_shapes().items()}
  bad = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(UserError, match="AuxLogits.fc.weight"):
    inception.from_state_dict(bad)
  bad = dict(sd)
  del bad["Mixed_6a.branch3x3.conv.weight"]
  with pytest.raises(UserError, match="Mixed_6a.branch3x3.conv.weight"):
    inception.from_state_dict(bad)
  bad = dict(sd, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(UserError, match=r"fc.weight has shape \(1000, 2048\)"):
    inception.from_state_dict(bad)


# ------------------------------------------------------------------ the network


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  sd = inception.random_state_dict(seed=0)
  folder = tmp_path_factory.mktemp("inception")
  paths = {"npz": str(folder / "w.npz")}
  inception.save_npz(paths["npz"], sd)
  pth = pytest.importorskip("models.pth")
  paths["pth"] = str(folder / "w.pth")
  pth.save_pth(paths["pth"], sd)
  if hasattr(pth, "_save_legacy_pth"):  # the pre-1.6 stream pytorch-fid's file may use
    paths["legacy_pth"] = str(folder / "legacy.pth")
    pth._save_legacy_pth(paths["legacy_pth"], sd)
  return sd, paths


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def npz_outputs(weights, images):
  net = inception.load(weights[1]["npz"])
  return net, jax.device_get(net(images))


def test_pth_and_npz_load_the_same_arrays(weights, npz_outputs, images):
  """Each .pth loads the same state as the .npz, bit for bit, so the same outputs."""
  net_npz, (pool3, logits) = npz_outputs
  for fmt in ("pth", "legacy_pth"):
    if fmt not in weights[1]:
      continue
    net = inception.load(weights[1][fmt])
    a = jax.tree.leaves(net_npz.state)
    b = jax.tree.leaves(net.state)
    assert len(a) == len(b) == 472
    for x, y in zip(a, b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    p2, l2 = jax.device_get(net(images))
    np.testing.assert_array_equal(p2, pool3)
    np.testing.assert_array_equal(l2, logits)


def test_forward_matches_float64_reference(weights, npz_outputs, images):
  net, (pool3, logits) = npz_outputs
  assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
  assert pool3.dtype == np.float32 and logits.dtype == np.float32
  ref_pool3, ref_logits = _RefNet(weights[0])(images)
  assert np.all(ref_pool3 >= 0) and ref_pool3.std() > 0.1  # non-degenerate activations
  np.testing.assert_allclose(pool3, ref_pool3, rtol=0, atol=1e-5 * np.abs(ref_pool3).max())
  np.testing.assert_allclose(logits, ref_logits, rtol=0,
                             atol=1e-5 * np.abs(ref_logits).max())
  # The two images differ: a per-example mix-up or broadcast would show here.
  assert np.abs(pool3[0] - pool3[1]).max() > 1e-2 * np.abs(pool3).max()


def test_one_compile_per_shape(npz_outputs, images):
  net, _ = npz_outputs
  before = inception._apply._cache_size()
  net(images)
  net(images[::-1].copy())
  assert inception._apply._cache_size() == before


def test_bench_writes_a_complete_record(tmp_path):
  """bench/inception.py end to end at batch 1 on 8x8 inputs (plumbing, not speed)."""
  import json

  from bench import inception as bench_inception
  record = bench_inception.main(["--batch", "1", "--image_size", "8", "--iters", "1",
                                 "--warmup", "0", "--out", str(tmp_path)])
  with open(tmp_path / "inception.jsonl") as f:
    assert json.loads(f.read().splitlines()[-1]) == json.loads(json.dumps(record))
  assert record["batch"] == 1 and record["images_per_s"] > 0
  assert record["outputs_finite"] and record["flops_per_batch"] > 1e10  # ~11 GFLOP/image
  assert record["conv_precision"] == "float32 (HIGHEST)"
