"""FID, KID and IS in resumable chunks (modes/stats.py and modes/sample_quality.py
document the protocol and the files): the Inception on fixed-size chunks, the chunk log,
the reference statistics and every setting the results depend on."""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from common.progress import progress as tqdm  # a bar on a terminal, else log lines

import data as data_lib
from evaluation import inception
from evaluation import sample_quality as sq
from common.choices import check_choice
from common.errors import MissingFileError, UserError
from common.io import (append_record_to, exists, file_sha256, isfile, load_npz,
                       plain_json, read_records, result_path, save_npz)
from common.mesh import make_mesh, put_batch, replicated, to_host

STATS_DIR = "stats"
RESULTS_DIR = "sample_quality"
CHUNKS_FILE = "chunks.jsonl"
STATS_FILE = "stats.npz"
SPLITS = ("train", "test")
QUANTIZATIONS = ("truncate", "round")
KID_SUBSETS = 100      # torch-fidelity's defaults
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10         # OpenAI's improved-gan protocol


# --------------------------------------------------------------------------- helpers


def require_images(config, what: str) -> None:
  """UserError unless the data are images: `what` (e.g. "FID statistics") runs the
  Inception on image chunks."""
  if data_lib.is_toy(config):
    raise UserError(f"{what} need an image data set; config.data.dataset = "
                    f"{config.data.dataset!r} is 2-D toy data (use --mode rf_eval/eval)")


def weights_file(config) -> tuple[str, str]:
  """(absolute path, sha256) of the Inception weights at config.eval.inception_path.
  Raises UserError (MissingFileError) naming the file, where to get it and the field."""
  path = str(config.eval.get("inception_path", "") or "")
  where = (f"download pytorch-fid's {inception.WEIGHTS_FILE} from {inception.WEIGHTS_URL} "
           f"(or use an .npz of the same arrays) and set {inception.CONFIG_FIELD} to its "
           "path")
  if not path:
    raise UserError(f"{inception.CONFIG_FIELD} is empty: FID/KID/IS need the FID "
                    f"Inception weights; {where}")
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise MissingFileError(f"Inception weights file {path!r} not found: {where}")
  return path, file_sha256(path)


def quantization(config) -> str:
  """config.eval.quantize, checked: 'truncate' (score_sde) or 'round' (EDM)."""
  mode = str(config.eval.get("quantize", "truncate"))
  check_choice(mode, QUANTIZATIONS, "config.eval.quantize")
  return mode


def to_rgb(images: np.ndarray) -> np.ndarray:
  """uint8 (B, H, W, C) -> (B, H, W, 3): a single channel repeated (pytorch-fid's
  PIL convert('RGB') of a grayscale image); 3 channels unchanged."""
  c = images.shape[-1]
  if c == 3:
    return images
  if c == 1:
    return np.repeat(images, 3, axis=-1)
  raise UserError(f"the FID Inception takes 1- or 3-channel images, got {c} channels "
                  "(config.data.num_channels)")


def _replicate(x, sharding) -> jax.Array:
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


class Features:
  """The Inception on fixed-size chunks: pads a short chunk to `batch` rows (one compile),
  splits it over the devices of every process (common.mesh.put_batch; each process passes
  the whole chunk and computes the rows of its own devices) and returns numpy (pool3,
  logits) of the real rows, gathered from every process (common.mesh.to_host; a
  collective, so every process calls it for every chunk)."""

  def __init__(self, net: inception.Inception, batch: int):
    self.net, self.batch = net, int(batch)
    if jax.process_count() > 1:
      # The weights as global arrays replicated over every device (each process holds
      # the same file), which a program over several processes' devices takes.
      sharding = replicated(make_mesh())
      self.net.state = jax.tree.map(lambda x: _replicate(x, sharding), self.net.state)

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = to_rgb(np.asarray(images, np.uint8))
    n = images.shape[0]
    if n < self.batch:
      pad = np.zeros((self.batch - n,) + images.shape[1:], np.uint8)
      images = np.concatenate([images, pad])
    pool3, logits = to_host(self.net(put_batch(images, whole=True)))
    return np.asarray(pool3, np.float32)[:n], np.asarray(logits, np.float32)[:n]


# --------------------------------------------------------------------------- chunk log


def read_chunk_records(path: str) -> dict[int, dict]:
  """The complete records of a chunks.jsonl by chunk index ({} if absent). A last line
  without its newline (a write cut short by a kill) is removed from the file; a malformed
  complete line raises UserError."""
  return read_records(path, "chunk", what="chunk record")


def chunk_path(out_dir: str, i: int) -> str:
  return os.path.join(out_dir, f"chunk_{i:05d}.npz")


def run_chunks(out_dir: str, num_chunks: int, compute: Callable[[int], tuple[dict, dict]],
                total: int, sizes: Callable[[int], int], desc: str) -> dict[int, dict]:
  """Runs compute(i) -> (arrays, record) for every chunk i < num_chunks not yet recorded;
  writes the arrays atomically to chunk_<i>.npz, then appends the record. A progress bar
  counts images (rate and ETA). Returns all records by index.

  Both run pytorch-fid's FID Inception (`evaluation.inception`, weights file at
  config.eval.inception_path) over uint8 images in chunks of config.eval.batch_size images,
  and are resumable: each finished chunk is written atomically to `chunk_<i>.npz` and then
  recorded as one fsynced JSON line in `chunks.jsonl` (the pattern of evaluation/bpd_eval.py:
  a kill leaves at most a partial last line, dropped on the rerun); a rerun computes only the
  chunks not recorded. Chunk i depends only on i (its images, or its key), so an interrupted
  and resumed run gives exactly the numbers of an uninterrupted one. Every chunk has the same
  shape (the last is padded, the padding dropped after the network): one compile. A chunk
  is one Inception batch, split over all devices (lower config.eval.batch_size if it
  does not fit in memory). With several processes each computes its devices' share of
  every chunk, process 0 alone writes, and its list of finished chunks is the one every
  process follows (elsewhere the records of those chunks are {"chunk": i} only).

  Grayscale data sets (1 channel) are fed to the Inception with the channel repeated three
  times, as pytorch-fid's `convert('RGB')` does.
  """
  log = os.path.join(out_dir, CHUNKS_FILE)
  done = {i: r for i, r in read_chunk_records(log).items()
          if exists(chunk_path(out_dir, i))}
  if jax.process_count() > 1:
    # Every chunk is a collective: all processes must skip the same ones, those that
    # process 0, the writer, finds finished.
    finished = np.zeros(num_chunks, bool)
    finished[[i for i in done if i < num_chunks]] = True
    finished = np.asarray(multihost_utils.broadcast_one_to_all(finished))
    done = {int(i): done.get(int(i), {"chunk": int(i)}) for i in np.flatnonzero(finished)}
  bar = tqdm(total=total, desc=desc, unit="img")
  try:
    bar.update(sum(sizes(i) for i in done if i < num_chunks))
    for i in range(num_chunks):
      if i in done:
        continue
      arrays, record = compute(i)
      save_npz(chunk_path(out_dir, i), **arrays)
      record = {"chunk": i, **record}
      append_record_to(log, record)  # one fsynced line (an object: rewritten whole)
      done[i] = record
      bar.update(sizes(i))
  finally:
    bar.close()
  return done


def gather(out_dir: str, num_chunks: int) -> tuple[sq.Moments, np.ndarray, np.ndarray]:
  """Moments of pool3 (combined chunk by chunk, float64), and all pool3 and logits."""
  acc, pools, logits = None, [], []
  for i in range(num_chunks):
    with load_npz(chunk_path(out_dir, i), allow_pickle=False) as f:
      pool3, lg = f["pool_3"], f["logits"]
    part = sq.moments(pool3)
    acc = part if acc is None else sq.combine(acc, part)
    pools.append(pool3)
    logits.append(lg)
  return acc, np.concatenate(pools), np.concatenate(logits)


# --------------------------------------------------------------------------- stats mode


def stats_settings(config, weights_sha256: str) -> dict:
  """What `--mode stats`'s file depends on (hashed into its directory name)."""
  e, d = config.eval, config.data
  split = str(e.get("stats_split", "train"))
  check_choice(split, SPLITS, "config.eval.stats_split")
  data_dir = str(d.get("data_dir", "") or "")
  return {"dataset": str(d.dataset),
          "data_dir": os.path.abspath(os.path.expanduser(data_dir)) if data_dir else "",
          "image_size": int(d.image_size), "num_channels": int(d.num_channels),
          "split": split, "chunk_size": int(e.batch_size),
          "max_batches": int(e.get("max_batches", 0) or 0),
          "inception_sha256": weights_sha256}


def stats_kind(settings: dict) -> str:
  return f"{STATS_DIR}/{settings['dataset']}_{settings['split']}"


def stats_dir(workdir: str, settings: dict) -> str:
  """Where `--mode stats` writes the statistics of `settings` (common.io.result_path)."""
  return result_path(workdir, stats_kind(settings), settings)


# --------------------------------------------------------------------------- references


def reference_file(config, workdir: str, weights_sha256: str) -> str:
  """config.eval.ref_stats_path, or (empty) this workdir's `--mode stats` output for this
  config; raises MissingFileError saying how to get one."""
  path = str(config.eval.get("ref_stats_path", "") or "")
  if path:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
      raise MissingFileError(
          f"reference statistics {path!r} (config.eval.ref_stats_path) not found: give "
          "our --mode stats output, pytorch-fid's .npz (mu, sigma) or score_sde's "
          "cifar10_stats.npz (pool_3)")
    return path
  path = os.path.join(stats_dir(workdir, stats_settings(config, weights_sha256)),
                      STATS_FILE)
  if not isfile(path):
    raise MissingFileError(
        f"no reference statistics: config.eval.ref_stats_path is empty and {path!r} does "
        f"not exist; run --mode stats with this config first (split "
        f"config.eval.stats_split = {config.eval.get('stats_split', 'train')!r}) or set "
        "config.eval.ref_stats_path to pytorch-fid's .npz (mu, sigma) or score_sde's "
        "cifar10_stats.npz (pool_3)")
  return path


def load_reference(path: str) -> tuple[sq.Stats, np.ndarray | None, dict]:
  """(Stats, pool_3 features (N, 2048) or None, description) of a reference file:
  kind 'stats_mode' (ours: mu, sigma, moments and pool_3), 'pytorch_fid' (mu, sigma) or
  'score_sde' (pool_3 only)."""
  stats = sq.load_reference_stats(path)
  with load_npz(path, allow_pickle=False) as f:
    files = set(f.files)
    pool3 = f["pool_3"] if "pool_3" in files else None
  if pool3 is not None:
    pool3 = pool3.reshape(pool3.shape[0], -1)
  kind = ("stats_mode" if "outer" in files else
          "pytorch_fid" if "mu" in files else "score_sde")
  count = int(pool3.shape[0]) if pool3 is not None else None
  return stats, pool3, {"kind": kind, "num_features": count}


# --------------------------------------------------------------------------- sample quality


def solver_steps(config, sde) -> int | str | None:
  """The solver's step count as configured (the measured NFE is recorded beside it):
  pc: sde.N (config.model.num_scales); ode: sampling.ode_steps, or 'adaptive';
  sde: sampling.sde_steps (default sde.N); fast: sampling.fast.steps."""
  s = config.sampling
  fast = s.get("fast", None)
  steps = {"pc": sde.N,
           "ode": int(s.get("ode_steps", 0) or 0) or "adaptive",
           "sde": int(s.get("sde_steps", sde.N)),
           "fast": int(fast.steps) if fast is not None else None}
  return steps.get(str(s.method).lower())


def sample_settings(config, step: int, weights_sha256: str) -> dict:
  """What the samples and their features depend on (hashed into the result directory's
  name; written to its manifest)."""
  d, e = config.data, config.eval
  return {"checkpoint_step": int(step), "ema": True,
          "sampling": plain_json(config.sampling),
          "sde": str(config.training.sde),
          "continuous": bool(config.training.continuous),
          "discrete_as_continuous": bool(e.get("discrete_as_continuous", True)),
          "model": plain_json(config.model),
          "data": {"dataset": str(d.dataset), "image_size": int(d.image_size),
                   "num_channels": int(d.num_channels),
                   "centered": bool(d.get("centered", False))},
          "seed": int(config.seed), "key_stream": "sample",
          "num_samples": int(e.num_samples), "chunk_size": int(e.batch_size),
          "quantization": quantization(config), "inception_sha256": weights_sha256}


def sample_chunks(out_dir: str, n: int, batch: int, parts: Callable, key: jax.Array,
                  quant: str, inverse_scaler: Callable, desc: str) -> dict[int, dict]:
  """Samples, quantizes and runs through the Inception every chunk of `batch` of the n
  samples not yet recorded in out_dir (run_chunks); chunk i with key fold_in(key, i).
  parts() -> (sampler(key, model_fn) -> (x, nfe), model_fn, Features), built on first
  use (a fully recorded run builds nothing). Non-finite samples raise FloatingPointError.
  Returns the chunk records by index."""

  def size(i):
    return min(batch, n - i * batch)

  def compute(i):
    sampler, model_fn, features = parts()
    t0 = time.time()
    x, nfe = sampler(jax.random.fold_in(key, i), model_fn)
    x = np.asarray(inverse_scaler(x))[:size(i)]
    if not np.all(np.isfinite(x)):
      raise FloatingPointError(f"chunk {i} of the samples ({desc}) has non-finite values")
    images = sq.quantize(x, quant)
    t1 = time.time()
    pool3, logits = features(images)
    t2 = time.time()
    record = {"n": int(images.shape[0]), "nfe": int(nfe),
              "seconds_sampling": round(t1 - t0, 3), "seconds_inception": round(t2 - t1, 3)}
    return {"samples": images, "pool_3": pool3, "logits": logits,
            "nfe": np.int64(nfe)}, record

  return run_chunks(out_dir, -(-n // batch), compute, n, size, desc)


def scores(out_dir: str, num_chunks: int, ref_path: str) -> tuple[dict[str, Any], dict]:
  """(scores, reference description) of the chunks in out_dir against the reference
  file (modes.sample_quality.run documents them): fid, kid, kid_std, kid_note,
  inception_score(_std), is_splits, inception_score_1split, kid_subsets, kid_subset_size:

    fid                       Frechet distance of the Gaussian fits (Heusel et al. 2017)
    kid, kid_std              KID (Binkowski et al. 2018): unbiased cubic-kernel MMD^2 over
                              100 subsets of min(1000, N_samples, N_ref) (torch-fidelity's
                              protocol; TF-GAN, score_sde's, uses disjoint blocks of <= 1024
                              instead); null when the reference has no pool_3 features
                              (pytorch-fid's mu/sigma only)
    inception_score(_std)     IS over min(10, N) splits (Salimans et al., OpenAI's protocol)
    inception_score_1split    IS of all samples at once (TF-GAN's, score_sde's number)
  """
  m, pool3, logits = gather(out_dir, num_chunks)
  n = pool3.shape[0]
  ref_stats, ref_pool3, ref_info = load_reference(ref_path)
  result: dict[str, Any] = {"fid": sq.fid(sq.stats_from_moments(m), ref_stats)}
  if ref_pool3 is not None:
    kid_mean, kid_std = sq.kid(pool3, ref_pool3, num_subsets=KID_SUBSETS,
                               subset_size=KID_SUBSET_SIZE)
    result.update(kid=kid_mean, kid_std=kid_std, kid_note=None)
  else:
    result.update(kid=None, kid_std=None,
                  kid_note=("the reference file has no pool_3 features (mu and sigma "
                            "only), which KID needs; use --mode stats output or "
                            "score_sde's cifar10_stats.npz"))
  splits = min(IS_SPLITS, n)
  is_mean, is_std = sq.inception_score(logits, splits=splits)
  result.update({
      "inception_score": is_mean, "inception_score_std": is_std, "is_splits": splits,
      "inception_score_1split": sq.inception_score(logits, splits=1)[0],
      "kid_subsets": KID_SUBSETS,
      "kid_subset_size": min(KID_SUBSET_SIZE, n,
                             ref_pool3.shape[0] if ref_pool3 is not None else n)})
  return result, ref_info
