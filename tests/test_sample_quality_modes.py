"""`--mode stats` then `--mode sample_quality` end to end (modes/stats.py, modes/sample_quality.py).

Setting: the bundled 8x8 digits with configs/tiny.py's network (nf 8, one level), a
checkpoint of the initial weights (step 0, written as the CLI tests do), a PC sampler of
10 reverse-diffusion steps (beta_max 1, see `_config`), and a FID Inception with random
weights (`inception.random_state_dict(0)` as an .npz: the plumbing checked here does not
depend on what the weights recognise). Chunks of 4 images: stats over the first 8 test digits
(eval.max_batches = 2), 8 samples. Every figure is checked against an independent
recomputation:

- stats: mu/sigma against `sample_quality.statistics` of features computed here by a
  direct call of the network on the same digits (rel. 1e-9: float64 sums of the same
  float32 features), and pool_3 equal to those features (exact).
- sample_quality: the stored features of a chunk against the network run here on the
  stored uint8 samples (exact); FID, KID, IS against `sample_quality`'s functions on the
  stored features and the reference (rel. 1e-6, see `_close`); every recorded setting
  (weights and reference sha256 recomputed by hashlib, NFE = N PC steps, quantization).
- resume: a run killed after its first chunk (plus a half-written log line) resumes with
  exactly the missing chunk; the first chunk's file is untouched.
- settings change (quantize = round): a new result directory, the old one byte-identical;
  its samples are the same draws (same keys) and differ from the truncated ones by 0 or 1
  grey level (the only difference between floor(255 x) and floor(255 x + 1/2)), with some
  1s in each chunk.
- another reference (pytorch-fid's mu/sigma, score_sde's pool_3) adds a result file in the
  same directory without drawing or extracting again; FID equal (rel. 1e-6), KID null
  with a note for mu/sigma only.
- user errors: missing weights (naming the file, its URL and the config field; also
  through main.py: exit code 2, one line), missing reference, bad quantize/split, toy data.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from configs.vp.digits_ddpmpp_small import get_config
from data import digits
from evaluation import inception
from evaluation import sample_quality as sq
from evaluation import quality
from modes import sample_quality as run
from modes import stats as stats_mode
from common.errors import MissingFileError, UserError
from common.io import MANIFEST_FILE, settings_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 4


def _config(weights: str):
  config = tiny.shrink(get_config())
  config.model.num_scales = 10  # PC steps
  # The untrained network's score is ~0, so the reverse chain multiplies x by about
  # exp((beta_min + beta_max) / 4): with score_sde's beta_max = 20 that is ~150 and almost
  # every pixel saturates at 0 or 255; with 1.0, x ~ N(0, ~1.7) and ~1/4 of the pixels
  # fall inside (0, 1), where truncation and rounding differ.
  config.model.beta_max = 1.0
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "none"
  config.eval.batch_size = BATCH
  config.eval.num_samples = 2 * BATCH
  config.eval.max_batches = 2
  config.eval.stats_split = "test"
  config.eval.inception_path = weights
  return config


def _sha(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _snapshot(directory):
  return {p: _sha(p) for p in sorted(glob.glob(os.path.join(directory, "*")))}


def _close(a, b, rel=1e-6):
  # FID of rank-7 covariances in 2048 dimensions: the ~2040 zero eigenvalues of the
  # product come out as +-1e-16 and their square roots add ~1e-5 in absolute terms
  # (measured 1.5e-5 on FID 319 between moments-based and np.cov statistics).
  return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from training import checkpoint
  from training.state import create_train_state
  root = tmp_path_factory.mktemp("sample_quality")
  weights = str(root / "fid_inception.npz")
  inception.save_npz(weights, inception.random_state_dict(0))
  config = _config(weights)
  workdir = str(root / "work")
  manager = checkpoint.make_manager(config, workdir)
  checkpoint.save(manager, create_train_state(config))
  manager.close()
  stats_path = stats_mode.run(config, workdir)
  result = run.run(config, workdir)
  return {"config": config, "workdir": workdir, "weights": weights,
          "stats_path": stats_path, "result": result,
          "net": inception.load(weights)}


def _pool3(net, images):
  pools = [np.asarray(net(quality.to_rgb(images[i:i + BATCH]))[0])
           for i in range(0, len(images), BATCH)]
  return np.concatenate(pools)


def test_stats_equal_direct_features(setup):
  images = digits.load_digits("test")[0][:2 * BATCH]
  pool3 = _pool3(setup["net"], images)
  with np.load(setup["stats_path"]) as f:
    ref = sq.statistics(pool3)
    assert int(f["count"]) == 2 * BATCH
    np.testing.assert_array_equal(f["pool_3"], pool3)
    np.testing.assert_allclose(f["mu"], ref.mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f["sigma"], ref.sigma, rtol=1e-9, atol=1e-12)
    moments = sq.Moments(int(f["count"]), f["sum"], f["outer"], f["shift"])
    np.testing.assert_allclose(sq.stats_from_moments(moments).sigma, ref.sigma,
                               rtol=1e-9, atol=1e-12)
    info = json.loads(str(f["info"]))
  assert info["split"] == "test" and info["num_images"] == 2 * BATCH
  assert info["inception_sha256"] == _sha(setup["weights"])
  # The default reference of sample_quality is this file.
  assert setup["result"]["reference"]["path"] == setup["stats_path"]


def test_sample_quality_numbers_and_settings(setup):
  r, config = setup["result"], setup["config"]
  out = r["result_dir"]
  with open(r["path"]) as f:
    assert json.load(f)["fid"] == r["fid"]
  chunks = [np.load(p) for p in sorted(glob.glob(os.path.join(out, "chunk_*.npz")))]
  assert len(chunks) == 2
  samples = np.concatenate([c["samples"] for c in chunks])
  pool3 = np.concatenate([c["pool_3"] for c in chunks])
  logits = np.concatenate([c["logits"] for c in chunks])
  assert samples.dtype == np.uint8 and samples.shape == (8, 8, 8, 1)
  np.testing.assert_array_equal(_pool3(setup["net"], chunks[0]["samples"]),
                                chunks[0]["pool_3"])
  with np.load(setup["stats_path"]) as f:
    ref_stats, ref_pool3 = sq.Stats(f["mu"], f["sigma"]), f["pool_3"]
  assert _close(r["fid"], sq.fid(sq.statistics(pool3), ref_stats))
  assert r["fid"] > 0
  kid = sq.kid(pool3, ref_pool3, num_subsets=100, subset_size=1000)
  assert _close(r["kid"], kid[0]) and r["kid_note"] is None
  assert r["kid_subset_size"] == 8
  is_mean, is_std = sq.inception_score(logits, splits=8)
  assert _close(r["inception_score"], is_mean) and _close(r["inception_score_std"], is_std)
  assert r["is_splits"] == 8
  assert _close(r["inception_score_1split"], sq.inception_score(logits, splits=1)[0])
  # Recorded settings.
  assert r["inception_weights"] == {"path": setup["weights"],
                                    "sha256": _sha(setup["weights"])}
  assert r["reference"]["sha256"] == _sha(setup["stats_path"])
  assert r["reference"]["kind"] == "stats_mode" and r["reference"]["num_features"] == 8
  assert r["quantization"] == "truncate" and r["num_samples"] == 8
  assert r["checkpoint_step"] == 0 and r["solver_steps"] == 10 and r["nfe_mean"] == 10
  assert r["sampler"]["method"] == "pc"
  assert r["sampler"]["config"]["predictor"] == "reverse_diffusion"
  assert r["eps"] == config.sampling.eps and r["noise_removal"] is True
  with open(os.path.join(out, MANIFEST_FILE)) as f:
    manifest = json.load(f)
  assert manifest["inception_path"] == setup["weights"]
  assert settings_key(manifest["settings"]) == r["settings_hash"]
  assert os.path.basename(out) == f"step0_pc-{r['settings_hash']}"


def test_resume_after_kill_and_new_settings_make_a_new_result(setup, monkeypatch):
  config = setup["config"].copy_and_resolve_references()
  config.eval.quantize = "round"
  old_dir = setup["result"]["result_dir"]
  before = _snapshot(old_dir)

  calls = []
  real_call = quality.Features.__call__

  def killed_on_second_chunk(self, images):
    calls.append(len(images))
    if len(calls) == 2:
      raise KeyboardInterrupt("simulated kill")
    return real_call(self, images)

  monkeypatch.setattr(quality.Features, "__call__", killed_on_second_chunk)
  with pytest.raises(KeyboardInterrupt):
    run.run(config, setup["workdir"])
  new_dirs = [d for d in glob.glob(os.path.join(setup["workdir"], quality.RESULTS_DIR, "*"))
              if d != old_dir]
  assert len(new_dirs) == 1
  new_dir = new_dirs[0]
  log = os.path.join(new_dir, quality.CHUNKS_FILE)
  with open(log) as f:
    assert [json.loads(line)["chunk"] for line in f] == [0]
  assert not glob.glob(os.path.join(new_dir, "result_*.json"))
  with open(log, "a") as f:
    f.write('{"chunk": 1, "n"')  # a kill in the middle of writing the next record
  chunk0 = _sha(os.path.join(new_dir, "chunk_00000.npz"))

  calls.clear()
  def counted(self, images):
    calls.append(len(images))
    return real_call(self, images)

  monkeypatch.setattr(quality.Features, "__call__", counted)
  r = run.run(config, setup["workdir"])
  assert calls == [BATCH]  # only the missing chunk
  assert r["result_dir"] == new_dir and r["quantization"] == "round"
  assert _sha(os.path.join(new_dir, "chunk_00000.npz")) == chunk0
  with open(log) as f:
    assert [json.loads(line)["chunk"] for line in f] == [0, 1]
  assert _snapshot(old_dir) == before
  for i in range(2):
    with np.load(os.path.join(old_dir, f"chunk_{i:05d}.npz")) as a, \
         np.load(os.path.join(new_dir, f"chunk_{i:05d}.npz")) as b:
      diff = b["samples"].astype(int) - a["samples"].astype(int)
    assert set(np.unique(diff)) <= {0, 1}, i
    assert np.any(diff), i
  # (The summary's numbers from the stored chunks are checked in the test above; an FID
  # costs two 2048 x 2048 eigendecompositions, so it is not recomputed here.)
  assert r["fid"] != setup["result"]["fid"] and r["nfe_mean"] == 10


def test_other_references_add_results_without_recomputing(setup, monkeypatch, tmp_path):
  def forbidden(*args, **kwargs):
    raise AssertionError("a recorded run must not sample or extract again")
  monkeypatch.setattr(quality.Features, "__call__", forbidden)
  monkeypatch.setattr(run, "get_sampling_fn", forbidden)
  monkeypatch.setattr(run, "restore_model_fn", forbidden)
  first = setup["result"]
  with np.load(setup["stats_path"]) as f:
    mu, sigma, pool3 = f["mu"], f["sigma"], f["pool_3"]
  pytorch_fid = str(tmp_path / "pytorch_fid_stats.npz")
  np.savez(pytorch_fid, mu=mu, sigma=sigma)
  score_sde = str(tmp_path / "cifar10_stats.npz")
  np.savez(score_sde, pool_3=pool3)
  config = setup["config"].copy_and_resolve_references()

  config.eval.ref_stats_path = pytorch_fid
  r = run.run(config, setup["workdir"])
  assert r["result_dir"] == first["result_dir"] and r["path"] != first["path"]
  assert r["reference"]["kind"] == "pytorch_fid"
  assert _close(r["fid"], first["fid"])
  assert r["kid"] is None and "pool_3" in r["kid_note"]
  assert r["inception_score"] == first["inception_score"]

  config.eval.ref_stats_path = score_sde
  r = run.run(config, setup["workdir"])
  assert r["reference"]["kind"] == "score_sde" and r["path"] != first["path"]
  assert _close(r["fid"], first["fid"]) and _close(r["kid"], first["kid"])


def test_user_errors(setup, tmp_path):
  config = setup["config"].copy_and_resolve_references()
  config.eval.inception_path = ""
  with pytest.raises(UserError, match="config.eval.inception_path is empty"):
    run.run(config, setup["workdir"])
  config.eval.inception_path = str(tmp_path / inception.WEIGHTS_FILE)
  with pytest.raises(MissingFileError) as e:
    stats_mode.run(config, setup["workdir"])
  for text in (inception.WEIGHTS_FILE, inception.WEIGHTS_URL, "config.eval.inception_path"):
    assert text in str(e.value)
  config.eval.inception_path = setup["weights"]
  config.eval.ref_stats_path = str(tmp_path / "nope.npz")
  with pytest.raises(MissingFileError, match="config.eval.ref_stats_path"):
    run.run(config, setup["workdir"])
  config.eval.ref_stats_path = ""
  with pytest.raises(MissingFileError, match="--mode stats"):
    run.run(config, str(tmp_path / "no_stats_here"))
  config.eval.quantize = "nearest"
  with pytest.raises(UserError, match="truncate, round"):
    run.run(config, setup["workdir"])
  config.eval.quantize = "truncate"
  config.eval.stats_split = "validation"
  with pytest.raises(UserError, match="stats_split"):
    stats_mode.run(config, setup["workdir"])
  from configs.default_toy import get_config as toy_config
  with pytest.raises(UserError, match="image data"):
    run.run(toy_config(), setup["workdir"])


def test_cli_missing_weights_is_one_line(tmp_path):
  missing = str(tmp_path / inception.WEIGHTS_FILE)
  r = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--workdir", str(tmp_path),
       "--config", "configs/tiny.py:configs/vp/digits_ddpmpp_small.py",
       "--mode", "sample_quality", "--compilation_cache_dir=",
       f"--config.eval.inception_path={missing}"],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and inception.WEIGHTS_URL in lines[0] and missing in lines[0]
