"""FID, KID, IS and the feature statistics (evaluation/sample_quality.py) against
independent references and closed forms, on random features (no network here).

- FID vs pytorch-fid's `calculate_frechet_distance` (scipy.linalg.sqrtm, complex part
  dropped), restated below: d = 64 features from 3 different distributions, rtol 1e-8.
- FID closed forms: N(0, I) vs N(mu, I) gives |mu|^2 (exact statistics: 1e-10; 200k
  samples per set in d = 4: within 5 %); diagonal covariances give sum (sqrt a - sqrt b)^2.
- FID of two independent n-sample sets of N(0, I_d) is the estimator's bias, which tends to
  0 like 1/n: E[FID] ~= 2 d / n (means) + d (d + 1) / (2 (n - 1)) (the Bures term is
  |S_a - S_b|_F^2 / 4 near I, and E|S - I|_F^2 = d (d + 1) / (n - 1) for a sample
  covariance). d = 6, n = 1000 and 4000, 200 repetitions each: mean within 10 % of that.
- KID vs a brute-force triple loop over the same subsets (rtol 1e-10); unbiasedness: the
  mean of 400 independent estimates for equal distributions is within 4 standard errors of
  0, while the biased (V-statistic) estimate is > 4 standard errors above it.
- IS vs its definition with scipy's softmax and entropy (rtol 1e-10); IS = 1 for uniform
  predictions and = K for confident predictions spread evenly over K classes.
- Streaming moments (chunks of different shifts, any grouping) equal one-shot statistics
  to 1e-10 relative; 8 simulated CPU devices (a subprocess with
  --xla_force_host_platform_device_count=8, the batch sharded over them) give the same
  statistics as the one-shot float64 ones (float32 sums: 1e-5 relative).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from evaluation import sample_quality as sq
from common.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytorch_fid_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance, restated (scipy sqrtm, complex dropped)."""
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _features(seed, n, d, kind):
  rng = np.random.default_rng(seed)
  if kind == "gauss":
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a + rng.normal(size=d)
  if kind == "relu":  # nonnegative like pool3 features
    return np.maximum(rng.normal(0.2, 1.0, size=(n, d)), 0.0)
  return rng.exponential(size=(n, d)) ** 2


def test_statistics_is_mean_and_unbiased_covariance():
  f = _features(0, 300, 7, "gauss")
  mu, sigma = sq.statistics(f)
  np.testing.assert_allclose(mu, f.sum(0) / 300, rtol=1e-12)
  c = f - f.mean(0)
  np.testing.assert_allclose(sigma, c.T @ c / 299, rtol=1e-12)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64


@pytest.mark.parametrize("kind_a,kind_b", [("gauss", "relu"), ("relu", "exp"),
                                           ("exp", "gauss")])
def test_fid_matches_pytorch_fid_formula(kind_a, kind_b):
  a = sq.statistics(_features(1, 500, 64, kind_a))
  b = sq.statistics(_features(2, 400, 64, kind_b))
  ref = _pytorch_fid_frechet(a.mu, a.sigma, b.mu, b.sigma)
  assert ref > 1.0
  assert sq.fid(a, b) == pytest.approx(ref, rel=1e-8)
  assert sq.fid(b, a) == pytest.approx(ref, rel=1e-8)  # symmetric
  assert abs(sq.fid(a, a)) < 1e-8


def test_fid_closed_forms():
  mu = np.array([1.0, -2.0, 0.5, 3.0])
  eye = np.eye(4)
  assert sq.fid((np.zeros(4), eye), (mu, eye)) == pytest.approx(mu @ mu, rel=1e-12)
  a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 1.0, 0.0])
  expect = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # commuting covariances, one singular
  assert sq.fid((mu, np.diag(a)), (mu, np.diag(b))) == pytest.approx(expect, rel=1e-10)
  # Large-sample limit: FID between samples of N(0, I) and N(mu, I) -> |mu|^2.
  rng = np.random.default_rng(3)
  n = 200_000
  est = sq.fid(sq.statistics(rng.normal(size=(n, 4))),
               sq.statistics(rng.normal(size=(n, 4)) + mu))
  assert est == pytest.approx(mu @ mu, rel=0.05)


def test_fid_same_gaussian_tends_to_zero_at_rate_one_over_n():
  d, reps = 6, 200
  rng = np.random.default_rng(4)
  means = {}
  for n in (1000, 4000):
    vals = [sq.fid(sq.statistics(rng.normal(size=(n, d))),
                   sq.statistics(rng.normal(size=(n, d)))) for _ in range(reps)]
    means[n] = np.mean(vals)
    expect = 2 * d / n + d * (d + 1) / (2 * (n - 1))
    assert means[n] == pytest.approx(expect, rel=0.1), (n, means[n], expect)
  assert means[1000] / means[4000] == pytest.approx(4.0, rel=0.15)


def test_kid_matches_brute_force_loop():
  fa = _features(5, 30, 5, "relu")
  fb = _features(6, 25, 5, "gauss")
  num_subsets, subset_size, seed = 4, 20, 3
  got_mean, got_std = sq.kid(fa, fb, num_subsets=num_subsets, subset_size=subset_size,
                             seed=seed)
  d = fa.shape[1]

  def k(x, y):
    return (sum(float(x[i]) * float(y[i]) for i in range(d)) / d + 1.0) ** 3

  vals = []
  for ia, ib in sq.kid_subsets(30, 25, num_subsets, subset_size, seed):
    assert len(set(ia)) == len(ia) == 20 and len(set(ib)) == 20  # without replacement
    x, y = fa[ia], fb[ib]
    m = len(ia)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    vals.append(kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2 * kxy / m**2)
  assert got_mean == pytest.approx(np.mean(vals), rel=1e-10)
  assert got_std == pytest.approx(np.std(vals), rel=1e-10)
  assert got_std > 0
  # subset_size above both sizes: the whole (equal-size) sets, every subset the same.
  mean, std = sq.kid(fa[:25], fb, num_subsets=3, subset_size=1000)
  assert std == pytest.approx(0.0, abs=1e-12)
  assert mean == pytest.approx(sq.mmd2_unbiased(fa[:25], fb), rel=1e-12)


def test_kid_is_unbiased_for_equal_distributions():
  rng = np.random.default_rng(7)
  m, d, reps = 20, 4, 400
  unbiased, biased = [], []
  for _ in range(reps):
    x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
    unbiased.append(sq.mmd2_unbiased(x, y))
    kxx, kyy = sq._poly_kernel(x, x), sq._poly_kernel(y, y)
    biased.append(kxx.mean() + kyy.mean() - 2 * sq._poly_kernel(x, y).mean())
  se = np.std(unbiased) / np.sqrt(reps)
  assert abs(np.mean(unbiased)) < 4 * se
  assert np.mean(biased) > 4 * np.std(biased) / np.sqrt(reps)  # the check has power


def test_kid_separates_shifted_distributions():
  rng = np.random.default_rng(8)
  same = sq.kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), 20, 100, seed=1)
  shifted = sq.kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1.0, 20, 100,
                   seed=1)
  assert shifted[0] > 10 * (abs(same[0]) + same[1])


def test_inception_score_matches_definition():
  logits = np.random.default_rng(9).normal(scale=3.0, size=(103, 1008))
  for splits in (1, 10):
    ref = []
    n = logits.shape[0]
    for s in range(splits):
      part = scipy.special.softmax(logits[s * n // splits:(s + 1) * n // splits], axis=1)
      py = part.mean(axis=0)
      ref.append(np.exp(np.mean([scipy.stats.entropy(p, py) for p in part])))
    mean, std = sq.inception_score(logits, splits=splits)
    assert mean == pytest.approx(np.mean(ref), rel=1e-10)
    assert std == pytest.approx(np.std(ref), rel=1e-10, abs=1e-12)


def test_inception_score_closed_forms():
  assert sq.inception_score(np.zeros((50, 1008)), splits=5) == pytest.approx((1.0, 0.0))
  k = 16
  logits = np.full((10 * k, 1008), -1e4)
  logits[np.arange(10 * k), np.arange(10 * k) % k] = 0.0  # one-hot on k classes, even
  mean, std = sq.inception_score(logits, splits=10)
  assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_streaming_moments_equal_one_shot():
  f = _features(10, 1000, 16, "relu") + 100.0  # a large mean: cancellation-prone
  ref = sq.statistics(f)
  bounds = [0, 1, 7, 300, 301, 650, 1000]
  rng = np.random.default_rng(0)
  parts = [sq.moments(f[a:b], shift=rng.normal(size=16) * (i % 2) + 100 * (i % 3 == 0))
           for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
  for grouping in (parts, parts[::-1]):
    got = sq.stats_from_moments(sq.combine(*grouping))
    np.testing.assert_allclose(got.mu, ref.mu, rtol=1e-12)
    np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-10, atol=1e-10)
  nested = sq.combine(sq.combine(*parts[:3]), sq.combine(*parts[3:]))
  assert nested.count == 1000
  np.testing.assert_allclose(sq.stats_from_moments(nested).sigma, ref.sigma, rtol=1e-10,
                             atol=1e-10)


def test_moments_save_load_round_trip(tmp_path):
  m = sq.moments(_features(11, 50, 3, "gauss"), shift=np.ones(3))
  sq.save_moments(str(tmp_path / "m.npz"), m)
  back = sq.load_moments(str(tmp_path / "m.npz"))
  assert back.count == 50
  for a, b in zip(m[1:], back[1:]):
    np.testing.assert_array_equal(a, b)


_EIGHT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}]
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from evaluation import sample_quality as sq
    f = np.maximum(np.random.default_rng(12).normal(0.3, 1.0, size=(256, 32)), 0)
    f = f.astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jax.device_put(f, NamedSharding(mesh, P("data")))
    total, outer = jax.jit(sq.device_moments)(x, jnp.asarray(f[:1].mean(0)))
    m = sq.moments_from_sums(256, total, outer, f[:1].mean(0))
    # and per-device partial sums combined on the host
    parts = [sq.moments_from_sums(s.data.shape[0], *jax.device_get(
                 sq.device_moments(s.data))) for s in x.addressable_shards]
    c = sq.combine(*parts)
    np.savez({path!r}, n_dev=jax.device_count(), n_shards=len(x.addressable_shards),
             mu=sq.stats_from_moments(m).mu, sigma=sq.stats_from_moments(m).sigma,
             mu_parts=sq.stats_from_moments(c).mu,
             sigma_parts=sq.stats_from_moments(c).sigma, f=f)
""")


def test_eight_devices_give_the_one_shot_statistics(tmp_path):
  path = str(tmp_path / "eight.npz")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", _EIGHT.format(repo=REPO, path=path)], check=True,
                 env=env, cwd=REPO, timeout=300)
  out = np.load(path)
  assert int(out["n_dev"]) == 8 and int(out["n_shards"]) == 8
  ref = sq.statistics(out["f"])
  for mu, sigma in ((out["mu"], out["sigma"]), (out["mu_parts"], out["sigma_parts"])):
    np.testing.assert_allclose(mu, ref.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, ref.sigma, rtol=1e-5, atol=1e-5)


def test_reference_stats_loaders(tmp_path):
  f = _features(13, 200, 8, "relu")
  ref = sq.statistics(f)
  np.savez(tmp_path / "pytorch_fid.npz", mu=ref.mu, sigma=ref.sigma)
  np.savez(tmp_path / "cifar10_stats.npz", pool_3=f.astype(np.float32))
  got = sq.load_reference_stats(str(tmp_path / "pytorch_fid.npz"))
  np.testing.assert_array_equal(got.mu, ref.mu)
  np.testing.assert_array_equal(got.sigma, ref.sigma)
  got = sq.load_reference_stats(str(tmp_path / "cifar10_stats.npz"))
  np.testing.assert_allclose(got.mu, ref.mu, rtol=1e-6)
  np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-5, atol=1e-6)
  sq.save_stats(str(tmp_path / "ours.npz"), ref, count=np.int64(200))
  assert sq.fid(sq.load_reference_stats(str(tmp_path / "ours.npz")), ref) == pytest.approx(
      0.0, abs=1e-9)
  with pytest.raises(UserError, match="not found"):
    sq.load_reference_stats(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", activations=f)
  with pytest.raises(UserError, match="'mu' and 'sigma'"):
    sq.load_reference_stats(str(tmp_path / "bad.npz"))


def test_quantize_truncates_like_score_sde_or_rounds_like_edm():
  x = np.array([-0.1, 0.0, 0.5 / 255, 1.49 / 255, 254.6 / 255, 1.0, 1.2])
  np.testing.assert_array_equal(sq.quantize(x, "truncate"), [0, 0, 0, 1, 254, 255, 255])
  np.testing.assert_array_equal(sq.quantize(x, "round"), [0, 0, 1, 1, 255, 255, 255])
  with pytest.raises(UserError, match="truncate, round"):
    sq.quantize(x, "nearest")


def test_extract_features_accumulates_batches():
  rng = np.random.default_rng(14)
  w = rng.normal(size=(12, 2048))
  v = rng.normal(size=(12, 1008))

  def net(images):  # a stand-in network: a fixed linear map of the pixels
    flat = np.asarray(images, np.float64).reshape(images.shape[0], -1)
    return (flat @ w).astype(np.float32), (flat @ v).astype(np.float32)

  batches = [rng.integers(0, 256, (b, 2, 2, 3), dtype=np.uint8) for b in (5, 3, 8)]
  out = sq.extract_features(net, iter(batches), total=16, progress=False)
  pool3 = np.concatenate([net(b)[0] for b in batches])
  assert out.moments.count == 16 and out.logits.shape == (16, 1008)
  np.testing.assert_array_equal(out.pool3, pool3)
  ref = sq.statistics(pool3)
  got = sq.stats_from_moments(out.moments)
  np.testing.assert_allclose(got.mu, ref.mu, rtol=1e-10)
  np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-9, atol=1e-6)
