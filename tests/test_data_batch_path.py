"""The loader's per-batch path made cheaper for 256 px images (data/iterator.py `_to_float`,
data/transforms.py mirroring, ArrayRecordImages.read_into, the grain batch reader) gives
bit for bit the reference functions' results (transforms.to_float, transforms.dequantize
with `_noise`, transforms.horizontal_flip) and the in-memory iterator's batches."""
import numpy as np
import pytest

from data import array_record, grain_pipeline, iterator, sources, transforms
from test_grain_pipeline import _write_shards

RNG = np.random.default_rng(5)


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 4, 4, 1), (2, 3, 6, 4), (5, 128, 128, 4)])
def test_to_float_is_bitwise_the_reference_functions(shape):
  """Every pixel value 0..255 (k / 255 is not k * (1 / 255) for all k), and
  dequantization at several stream offsets, equal to transforms' functions bitwise; the
  last shape (65,536 values per example) draws its noise in two runs of examples."""
  images = RNG.integers(0, 256, shape, dtype=np.uint8)
  images.reshape(-1)[:256] = np.arange(256)[:images.size]
  np.testing.assert_array_equal(_bits(iterator._to_float(images, False, 0, 2, 0, 0)),
                                _bits(transforms.to_float(images)))
  for seed, step, start in ((0, 0, 0), (3, 17, 2), (9, 2 ** 40, 11)):
    want = transforms.dequantize(images, iterator._noise(seed, 2, step, start, images.shape))
    out = np.full(images.shape, np.nan, np.float32)
    got = iterator._to_float(images, True, seed, 2, step, start, out=out)
    assert got is out
    np.testing.assert_array_equal(_bits(got), _bits(want))
    k = images.astype(np.float64)
    assert np.all(got >= k / 256) and np.all(got < (k + 1) / 256)


def test_noise_clip_near_one_is_kept(monkeypatch):
  """A stream of all-ones outputs (u = 1 - 2^-24, which k + u would round up to k + 1)
  is lowered to 1 - 2^-16 as transforms.dequantize does: pixel 255 stays below 1.0."""
  class Ones:
    def advance(self, n):
      pass

    def random_raw(self, n):
      return np.full(n, np.iinfo(np.uint64).max, np.uint64)

  monkeypatch.setattr(iterator, "_bit_generator", lambda *args: Ones())
  k = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  got = iterator._to_float(k, True, 0, 2, 0, 0)
  want = transforms.dequantize(k, np.full(k.shape, 1 - 2.0 ** -24, np.float32))
  np.testing.assert_array_equal(_bits(got), _bits(want))
  assert got.max() < 1.0 and np.all(np.floor(got * 256) == k)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_mirroring_equals_horizontal_flip(channels):
  images = RNG.integers(0, 256, (6, 5, 7, channels), dtype=np.uint8)
  flip = np.array([True, False, True, True, False, False])
  want = transforms.horizontal_flip(images, flip)
  got = transforms.mirror_in_place(images.copy(), flip)
  np.testing.assert_array_equal(got, want)
  out = np.empty_like(images[0])
  transforms.mirror_into(out, images[0])
  np.testing.assert_array_equal(out, images[0, :, ::-1])


def test_shards_read_into_mirrors_while_decoding(tmp_path):
  x = RNG.integers(0, 256, (11, 6, 5, 3), dtype=np.uint8)
  y = RNG.integers(0, 10, 11).astype(np.int32)
  _write_shards(tmp_path, x, y, per_shard=4)
  source = array_record.ArrayRecordImages(str(tmp_path))
  idx = np.array([10, 0, 4, 3, 7, 8])
  flip = np.array([True, True, False, True, False, True])
  out = np.empty((6, 6, 5, 3), np.uint8)
  labels = source.read_into(idx, out, flip)
  np.testing.assert_array_equal(out, transforms.horizontal_flip(x[idx], flip))
  np.testing.assert_array_equal(labels, y[idx])
  images, labels = source.read(idx)
  np.testing.assert_array_equal(images, x[idx])
  np.testing.assert_array_equal(labels, y[idx])


@pytest.mark.parametrize("dequantize", [False, True])
@pytest.mark.parametrize("kind", ["shards", "memory-mapped npz"])
def test_grain_reader_equals_the_in_memory_iterator(tmp_path, kind, dequantize):
  """The grain pipeline (flips on; no workers: tests/test_grain_pipeline.py runs them) over
  shards (read_into) and over a memory-mapped .npz (read, then mirrored in place): the
  in-memory iterator's batches and labels bitwise, for 2 epochs of each of 2 processes."""
  x = RNG.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
  y = RNG.integers(0, 10, 20).astype(np.int32)
  if kind == "shards":
    _write_shards(tmp_path, x, y, per_shard=6)
    source = array_record.ArrayRecordImages(str(tmp_path))
  else:
    np.savez(tmp_path / "train.npz", images=x, labels=y)
    source = sources.NpzSource(str(tmp_path / "train.npz"))
    assert source.mapped is not None
  for shard in range(2):
    kw = dict(random_flip=True, uniform_dequantization=dequantize)
    ref = iterator.BatchIterator(x, 4, 2, process_index=shard, process_count=2, **kw)
    with grain_pipeline.GrainBatches(source, 4, 2, shard_index=shard, shard_count=2,
                                     num_workers=0, with_labels=True, **kw) as it:
      for _ in range(10):
        idx = ref.indices(ref.epoch, ref.index)
        got = next(it)
        assert got["image"].dtype == np.float32
        np.testing.assert_array_equal(_bits(got["image"]), _bits(next(ref)))
        np.testing.assert_array_equal(got["label"], y[idx])
    # The workers' element: uint8 pixels, flipped, without dequantization (k / 255 is
    # taken once per batch in the parent), float32 with it.
    assert it.reader(0)["image"].dtype == (np.float32 if dequantize else np.uint8)
