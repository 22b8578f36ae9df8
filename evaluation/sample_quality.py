"""Sample-quality numbers from Inception features (`evaluation.inception`: pool3 (N, 2048),
logits (N, 1008)): FID, KID and Inception Score, and the feature statistics they need,
also from a stream of batch sums so that 50k features never sit in memory at once. The
statistics are float64 numpy on the host (no complex `sqrtm`); the device part is the
network and per-batch partial sums (`device_moments`).
"""
from __future__ import annotations

import os
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from common.progress import progress as tqdm  # a bar on a terminal, else log lines

from common.errors import MissingFileError, UserError
from common.io import isfile, load_npz, save_npz


class Stats(NamedTuple):
  """Gaussian fit of a feature set: mu (d,) and sigma (d, d), float64."""
  mu: np.ndarray
  sigma: np.ndarray


def _as_stats(stats) -> Stats:
  mu, sigma = stats
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if sigma.shape != (mu.shape[0],) * 2:
    raise ValueError(f"sigma shape {sigma.shape} does not match mu shape {mu.shape}")
  return Stats(mu, sigma)


def _features(features) -> np.ndarray:
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise ValueError(f"features must be (N, d), got shape {f.shape}")
  return f


def statistics(features) -> Stats:
  """Mean (d,) and covariance (d, d) of features (N, d), float64; the covariance with
  ddof = 1 (np.cov(rowvar=False), as pytorch-fid's calculate_activation_statistics)."""
  f = _features(features)
  if f.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
  return Stats(f.mean(axis=0), np.cov(f, rowvar=False))


# --------------------------------------------------------------------------- streaming


class Moments(NamedTuple):
  """Partial sums of a feature stream about a fixed shift c (d,):

  count = n, sum = sum_i (x_i - c) (d,), outer = sum_i (x_i - c)(x_i - c)^T (d, d),
  float64. The shift only guards against cancellation when the mean is large against the
  spread (c = 0 is the plain sums); it cancels in `stats_from_moments`.
  """
  count: int
  sum: np.ndarray
  outer: np.ndarray
  shift: np.ndarray


def empty_moments(dim: int, shift=None) -> Moments:
  """Moments of no features, about `shift` (default zero)."""
  shift = np.zeros(dim) if shift is None else np.asarray(shift, np.float64)
  return Moments(0, np.zeros(dim), np.zeros((dim, dim)), shift)


def moments(features, shift=None) -> Moments:
  """Moments of features (N, d), computed on the host in float64."""
  f = _features(features)
  shift = np.zeros(f.shape[1]) if shift is None else np.asarray(shift, np.float64)
  c = f - shift
  return Moments(f.shape[0], c.sum(axis=0), c.T @ c, shift)


def device_moments(features: jax.Array, shift: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """(sum (d,), outer (d, d)) of one batch of features (B, d) about `shift`, in float32 at
  full matmul precision, for use inside a jitted (possibly batch-sharded) program: XLA
  reduces over the sharded batch axis, so each batch returns one small replicated result.
  Turn them into Moments with `moments_from_sums` and accumulate those in float64."""
  c = features.astype(jnp.float32)
  if shift is not None:
    c = c - shift.astype(jnp.float32)
  return c.sum(axis=0), jnp.dot(c.T, c, precision=jax.lax.Precision.HIGHEST)


def moments_from_sums(count: int, total, outer, shift=None) -> Moments:
  """Moments from sums (e.g. `device_moments`'s, fetched to the host) as float64."""
  total = np.asarray(total, np.float64)
  shift = np.zeros(total.shape[0]) if shift is None else np.asarray(shift, np.float64)
  return Moments(int(count), total, np.asarray(outer, np.float64), shift)


def _reshift(m: Moments, shift: np.ndarray) -> Moments:
  """The same moments about another shift c': with delta = c - c' and s = sum(x - c),
  sum(x - c') = s + n delta and sum(x - c')(x - c')^T = outer + delta s^T + s delta^T
  + n delta delta^T (exact algebra)."""
  delta = m.shift - shift
  if not np.any(delta):
    return m
  outer = (m.outer + np.outer(delta, m.sum) + np.outer(m.sum, delta)
           + m.count * np.outer(delta, delta))
  return Moments(m.count, m.sum + m.count * delta, outer, np.asarray(shift, np.float64))


def combine(*parts: Moments) -> Moments:
  """Moments of the union of disjoint feature sets (devices, hosts, chunks of a resumed
  run), about the first part's shift."""
  if not parts:
    raise ValueError("combine needs at least one Moments")
  shift = parts[0].shift
  out = None
  for p in parts:
    p = _reshift(p, shift)
    out = p if out is None else Moments(out.count + p.count, out.sum + p.sum,
                                        out.outer + p.outer, shift)
  return out


def stats_from_moments(m: Moments) -> Stats:
  """mu = c + sum / n, sigma = (outer - sum sum^T / n) / (n - 1): the same as
  `statistics` of all the features (ddof = 1)."""
  if m.count < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {m.count}")
  n = m.count
  mean_c = m.sum / n
  sigma = (m.outer - n * np.outer(mean_c, mean_c)) / (n - 1)
  return Stats(m.shift + mean_c, 0.5 * (sigma + sigma.T))


def save_moments(path: str, m: Moments) -> None:
  """Writes Moments to an .npz (atomically, common.io.save_npz)."""
  save_npz(path, count=np.int64(m.count), sum=m.sum, outer=m.outer, shift=m.shift)


def load_moments(path: str) -> Moments:
  with load_npz(path) as f:
    return Moments(int(f["count"]), f["sum"], f["outer"], f["shift"])


# --------------------------------------------------------------------------- metrics


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix by eigh; rounding-level negative
  eigenvalues are clipped to zero."""
  w, v = np.linalg.eigh(0.5 * (a + a.T))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def fid(stats_a, stats_b) -> float:
  """Frechet distance between N(mu_a, S_a) and N(mu_b, S_b) (Heusel et al. 2017, eq. 6):

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)),

  with tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i), lambda_i the eigenvalues of the
  symmetric PSD M = S_a^(1/2) S_b S_a^(1/2) (similar to S_a S_b for invertible S_a, and with
  the same spectrum in general), negative rounding clipped to 0. Real float64 throughout;
  equals pytorch-fid's `calculate_frechet_distance` (scipy's complex sqrtm) where that is
  well conditioned. stats_*: Stats or (mu (d,), sigma (d, d)). Units: squared feature units.
  """
  mu_a, s_a = _as_stats(stats_a)
  mu_b, s_b = _as_stats(stats_b)
  if mu_a.shape != mu_b.shape:
    raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
  root_a = _sqrt_psd(s_a)
  m = root_a @ s_b @ root_a
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
  """Unbiased MMD^2 estimate (Gretton et al. 2012, eq. 3) with the cubic polynomial
  kernel, for equal sizes m: sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1))
  - 2 sum_{i, j} k(x_i, y_j) / m^2 (the cross term over all pairs, as in Binkowski et
  al.'s and TF-GAN's KID). x, y: (m, d) float64."""
  x = _features(x)
  y = _features(y)
  m = x.shape[0]
  if y.shape[0] != m or m < 2:
    raise ValueError(f"need two sets of equal size >= 2, got {x.shape[0]} and {y.shape[0]}")
  kxx = _poly_kernel(x, x)
  kyy = _poly_kernel(y, y)
  kxy = _poly_kernel(x, y)
  within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(within - 2.0 * kxy.mean())


def kid_subsets(n_a: int, n_b: int, num_subsets: int = 100, subset_size: int = 1000,
                seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """The (indices into a, indices into b) of each KID subset: size m = min(subset_size,
  n_a, n_b), each drawn without replacement by numpy's Generator(PCG64(seed)):
  `rng.choice(n_a, m, replace=False)` then `rng.choice(n_b, m, replace=False)`, per subset
  in order."""
  m = min(int(subset_size), n_a, n_b)
  rng = np.random.default_rng(seed)
  return [(rng.choice(n_a, m, replace=False), rng.choice(n_b, m, replace=False))
          for _ in range(int(num_subsets))]


def kid(features_a, features_b, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with kernel
  k(x, y) = (x.y / d + 1)^3 on `num_subsets` random subsets; returns (mean, std over
  subsets, ddof = 0 as torch-fidelity and TF-GAN report it).

  Each subset draws m = min(subset_size, N_a, N_b) rows of each set without replacement
  (`kid_subsets`, from `seed`). With N_a = N_b <= subset_size every subset is both whole
  sets, so the std is 0 and the mean is the full-set estimate. Features (N, d) are used in
  float64 on the host (three m x m x d products per subset). Often reported x 1000.
  """
  fa = _features(features_a)
  fb = _features(features_b)
  if fa.shape[1] != fb.shape[1]:
    raise ValueError(f"feature dimensions differ: {fa.shape[1]} vs {fb.shape[1]}")
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
  values = [mmd2_unbiased(fa[ia], fb[ib])
            for ia, ib in kid_subsets(fa.shape[0], fb.shape[0], num_subsets, subset_size,
                                      seed)]
  return float(np.mean(values)), float(np.std(values))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016): with p(y|x) = softmax(logits) over all 1008
  classes and p(y) its mean over a split, IS = exp(mean_x KL(p(y|x) || p(y))); returns
  (mean, std) over `splits` consecutive splits (rows [k N / splits, (k+1) N / splits),
  std with ddof = 0), as OpenAI's improved-gan code does (splits=10).

  The 2015-12-05 graph has 1008 outputs (1000 ImageNet classes + 8 unused slots). Every
  reference takes the softmax over all 1008 and so does this function (pytorch-fid computes
  no IS). They differ in the bias: TF-GAN's `classifier_score_from_logits` (score_sde's
  route, one split) uses the graph's logits, fc bias included, as `net(images)[1]` here;
  OpenAI's code multiplies pool3 by the weights of `softmax/logits/MatMul` only, i.e. no
  bias: pass `logits - net.module.fc.bias[...]` for that variant. splits=1 gives TF-GAN's
  single number. logits: (N, C).
  """
  z = np.asarray(logits, np.float64)
  if z.ndim != 2:
    raise ValueError(f"logits must be (N, C), got shape {z.shape}")
  n = z.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f"splits must be in [1, N={n}], got {splits}")
  log_p = z - z.max(axis=1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for k in range(splits):
    lo, hi = k * n // splits, (k + 1) * n // splits
    # log p(y) by log-sum-exp, so classes whose p(y|x) all underflow stay finite.
    top = log_p[lo:hi].max(axis=0)
    log_py = top + np.log(np.exp(log_p[lo:hi] - top).mean(axis=0))
    kl = np.sum(p[lo:hi] * (log_p[lo:hi] - log_py), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------- references


def load_reference_stats(path: str) -> Stats:
  """Reference statistics from an .npz: pytorch-fid's (`mu`, `sigma`), ours (the same
  keys, written by `save_stats`) or score_sde's `cifar10_stats.npz` (`pool_3`: the pool3
  activations (N, 2048) of the training set, fitted here with `statistics`)."""
  path = os.fspath(path)
  if not isfile(path):
    raise MissingFileError(f"reference statistics file {path!r} not found")
  with load_npz(path, allow_pickle=False) as f:
    if "mu" in f.files and "sigma" in f.files:
      return _as_stats((f["mu"], f["sigma"]))
    if "pool_3" in f.files:
      return statistics(f["pool_3"].reshape(f["pool_3"].shape[0], -1))
    raise UserError(f"reference statistics file {path!r} has arrays {f.files}; expected "
                    "'mu' and 'sigma' (pytorch-fid) or 'pool_3' (score_sde)")


def save_stats(path: str, stats, **extra) -> None:
  """Writes Stats as pytorch-fid's layout (`mu`, `sigma`) plus any `extra` arrays, to
  `path` as given (atomically, common.io.save_npz)."""
  mu, sigma = _as_stats(stats)
  save_npz(path, mu=mu, sigma=sigma, **extra)


# --------------------------------------------------------------------------- extraction


class Features(NamedTuple):
  """What `extract_features` gathers: moments of pool3, logits (N, 1008) float32, and
  pool3 (N, 2048) float32 when kept (None otherwise)."""
  moments: Moments
  logits: np.ndarray
  pool3: np.ndarray | None


def extract_features(net, batches: Iterable, total: int | None = None,
                     keep_pool3: bool = True, progress: bool = True,
                     desc: str = "inception") -> Features:
  """Runs `net` (an `inception.Inception`, or any images -> (pool3, logits)) over an
  iterable of uint8 batches (B, H, W, 3) and gathers `Features`. Moments accumulate in
  float64 on the host batch by batch; `total` (images) sizes the progress bar, which
  shows images/s and the ETA."""
  acc = None
  logits, pools = [], []
  bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
  try:
    for images in batches:
      pool3, lg = jax.device_get(net(images))
      part = moments(pool3)
      acc = part if acc is None else combine(acc, part)
      logits.append(np.asarray(lg, np.float32))
      if keep_pool3:
        pools.append(np.asarray(pool3, np.float32))
      bar.update(int(np.shape(images)[0]))
  finally:
    bar.close()
  if acc is None:
    raise ValueError("extract_features got no batches")
  return Features(acc, np.concatenate(logits),
                  np.concatenate(pools) if keep_pool3 else None)


def quantize(samples, mode: str = "truncate") -> np.ndarray:
  """Samples in [0, 1] (B, H, W, C) -> uint8 for the Inception. mode="truncate":
  score_sde's `np.clip(samples * 255., 0, 255).astype(np.uint8)` (floor); mode="round":
  EDM's generate.py, which adds one half before the uint8 cast: floor(clip(255 x + 0.5,
  0, 255)), i.e. round half up."""
  x = np.asarray(samples, np.float32) * 255.0
  if mode == "truncate":
    return np.clip(x, 0, 255).astype(np.uint8)
  if mode == "round":
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
  raise UserError(f"unknown quantization {mode!r}; choices: truncate, round")

