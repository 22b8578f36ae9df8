"""score_sde's evaluation protocol (modes.eval.evaluate documents it): the evaluation set's
batches, bits/dim with dequantization once and repeated passes, the evaluation loss,
which checkpoints to evaluate, and the settings every result is keyed by."""
from __future__ import annotations


import jax
import numpy as np
from absl import logging

import data as data_lib
from data import toy
from data.images import get_eval_batches
import sde_lib
from common.choices import check_choice
from common.errors import UserError
from solvers.from_config import likelihood_solver
from solvers.likelihood import get_likelihood_fn, get_log_likelihood_fn
from common.keys import stream_key
from common.mesh import put_batch
from training.restore import saved_steps
from training import checkpoint, losses


def eval_batches(config):
  """Yields (batch_index, x in model space) over the evaluation set (bits/dim and loss).

  The evaluation set (bits/dim and loss): for toy data, config.eval.num_eval_points fresh
  points, batch i from fold_in(stream_key(seed, "eval_data"), i) (the same on every run);
  for images, split config.eval.bpd_dataset ('test' or 'train') of the configured data
  set, the final padded batch trimmed to its real examples.
  """
  scaler = data_lib.get_data_scaler(config)
  bs = int(config.eval.batch_size)
  if data_lib.is_toy(config):
    n = int(config.eval.num_eval_points)
    key = stream_key(int(config.seed), "eval_data")
    for i in range(-(-n // bs)):
      m = min(bs, n - i * bs)
      x = toy.sample(jax.random.fold_in(key, i), config.data.dataset, m,
                     int(config.data.dim))
      # Every process draws the same whole batch from the same key.
      yield i, put_batch(scaler(x), whole=True)
    return
  for i, batch in enumerate(_whole_eval_batches(config)):
    yield i, put_batch(scaler(_real(batch)), whole=True)


def _whole_eval_batches(config, **kwargs):
  # Every process takes the whole global batch and its devices their slice of it
  # (put_batch(whole=True)): the last batch, trimmed to its real examples, may leave a
  # process none of its share or not divide over the devices (it is then replicated).
  return get_eval_batches(config, split=config.eval.bpd_dataset, process_index=0,
                          process_count=1, **kwargs)


def _real(batch) -> np.ndarray:
  return batch["image"][np.asarray(batch["mask"], bool)]


def bpd_protocol(config) -> tuple[bool, int]:
  """(dequantize, num_repeats) of the bits/dim evaluation (modes.eval.evaluate):
  config.eval.bpd_dequantize (None or missing: True for images, False for toy data) and
  config.eval.bpd_num_repeats (None or missing: 5 for the test split, 1 for train and for
  toy data). Raises UserError for a dequantized toy evaluation or repeats < 1.

  Bits/dim, score_sde's protocol (its run_lib.evaluate and likelihood.py): batches of
  config.eval.batch_size go through solvers.get_likelihood_fn (trace config.eval.trace,
  tolerances config.eval.rtol/atol) and evaluation.bpd_eval.run_bpd_eval, which appends one
  line per batch to `<workdir>/eval/bpd_step<step>-<hash>/bpd_batches.jsonl` (`<hash>`
  keys every setting that affects the result, `bpd_settings`, listed in manifest.json
  beside it: other settings make a new result, never reuse an old one), writes
  `bpd_summary.json` (mean bpd, standard error, mean NFE), and on a rerun skips the batches
  already done.
    * Dequantization, exactly once: the evaluation batches are the 8-bit data k / 255 (never
      the data iterator's dequantized ones, whatever config.data.uniform_dequantization says:
      that flag governs training data and the evaluation loss), and with
      config.eval.bpd_dequantize (default True for images) the likelihood maps each value to
      (k + u) / 256, u ~ U[0, 1), before the solve: the bits/dim of the discrete data's
      dequantized likelihood bound.
    * Repeats: config.eval.bpd_num_repeats passes over the set (None: 5 over the test
      split, 1 over the train split, as score_sde), each with fresh dequantization noise
      and fresh trace-estimator probes. Pass r, batch i is record r * P + i (P batches per
      pass) and uses key fold_in(stream_key(seed, "bpd"), r * P + i); the summary is over
      every (pass, example).
    * Continuous toy data have no bins: their summary is the negative log-likelihood in
      nats (mean_nll, stderr_nll) and nats per dimension (mean_nll_per_dim), in data space,
      without score_sde's +8 offset (which belongs to 8-bit pixels); bpd_dequantize must be
      False and the repeats default to 1.
  """
  e, toy_data = config.eval, data_lib.is_toy(config)
  dequantize = e.get("bpd_dequantize", None)
  dequantize = (not toy_data) if dequantize is None else bool(dequantize)
  if dequantize and toy_data:
    raise UserError(f"config.eval.bpd_dequantize = True, but {config.data.dataset!r} is "
                    "continuous toy data (no 8-bit bins to dequantize); set it to False")
  repeats = e.get("bpd_num_repeats", None)
  if repeats is None:
    repeats = 5 if (not toy_data and str(e.bpd_dataset).lower() == "test") else 1
  if int(repeats) < 1:
    raise UserError(f"config.eval.bpd_num_repeats must be >= 1 (or None for score_sde's "
                    f"5 on the test split, 1 on train), got {repeats}")
  return dequantize, int(repeats)


def bpd_batches(config, num_repeats: int):
  """(number of records, iterator of (record index, x in model space)) for bits/dim:
  num_repeats passes over the evaluation set (the first config.eval.max_batches batches
  of it, if > 0), pass r's batch i as record r * P + i. Image batches are the
  undequantized k / 255 (the likelihood dequantizes them once)."""
  limit = int(config.eval.get("max_batches", 0))
  if data_lib.is_toy(config):
    per_pass = num_eval_batches(config)

    def one_pass():
      return eval_batches(config)
  else:
    scaler = data_lib.get_data_scaler(config)
    # Loaded once; every pass yields the same batches.
    passes = _whole_eval_batches(config, uniform_dequantization=False)
    per_pass = min(len(passes), limit) if limit > 0 else len(passes)

    def one_pass():
      for i, batch in enumerate(passes):
        yield i, put_batch(scaler(_real(batch)), whole=True)

  def records():
    for r in range(num_repeats):
      for count, (i, x) in enumerate(one_pass()):
        if count >= per_pass:
          break
        yield r * per_pass + i, x

  return per_pass * num_repeats, records()


def get_bpd_likelihood_fn(config, sde: sde_lib.AbstractSDE):
  """(likelihood_fn, metric) of the evaluation (modes.eval.evaluate): bits/dim with
  score_sde's offset and the configured dequantization for images ("bpd"), or the
  negative log-likelihood in nats of the data-space density for toy data ("nll")."""
  e = config.eval
  dequantize, _ = bpd_protocol(config)
  if not data_lib.is_toy(config):
    return get_likelihood_fn(
        sde, data_lib.get_data_inverse_scaler(config), trace=e.trace,
        rtol=float(e.rtol), atol=float(e.atol), eps=1e-5, dequantize=dequantize,
        solver=likelihood_solver(config),
        scaler=data_lib.get_data_scaler(config)), "bpd"
  log_likelihood_fn = get_log_likelihood_fn(sde, trace=e.trace, rtol=float(e.rtol),
                                            atol=float(e.atol), eps=1e-5,
                                            solver=likelihood_solver(config))
  scaler = data_lib.get_data_scaler(config)
  # The model's density is over model space y = a x + b; the data's is a^D times it.
  log_slope = float(np.log(float(scaler(1.0)) - float(scaler(0.0))))

  def nll_fn(key, model_fn, x):
    logp, z, nfe = log_likelihood_fn(key, model_fn, x)
    dim = int(np.prod(x.shape[1:]))
    return -(logp + dim * log_slope), z, nfe

  return nll_fn, "nll"


def num_eval_batches(config) -> int | None:
  """All batches of the evaluation set, or the first config.eval.max_batches (if > 0)."""
  limit = int(config.eval.get("max_batches", 0))
  if data_lib.is_toy(config):
    n = -(-int(config.eval.num_eval_points) // int(config.eval.batch_size))
    return min(n, limit) if limit > 0 else n
  return limit if limit > 0 else None


def checkpoint_steps(config, workdir: str) -> list[int | None]:
  """The checkpoints to evaluate: score_sde's checkpoints begin_ckpt..end_ckpt (inclusive;
  checkpoint k is the one at step k * config.training.snapshot_freq) that exist in
  `workdir`, or [None] when config.eval.end_ckpt <= 0: the newest intact one, falling
  back past damaged or unverified ones as sampling does (restore_model(step=None)).
  Raises UserError when none of them exists."""
  saved = saved_steps(workdir)
  begin, end = int(config.eval.begin_ckpt), int(config.eval.end_ckpt)
  if end <= 0:
    return [None]
  if begin > end:
    raise UserError(f"config.eval.begin_ckpt = {begin} is after config.eval.end_ckpt = "
                    f"{end}; set begin_ckpt <= end_ckpt (or end_ckpt = 0 for the latest)")
  freq = int(config.training.snapshot_freq)
  if freq <= 0:
    raise UserError("config.eval.begin_ckpt/end_ckpt count checkpoints of "
                    "config.training.snapshot_freq steps, which is "
                    f"{config.training.snapshot_freq}; set end_ckpt = 0 for the latest")
  wanted = [k * freq for k in range(begin, end + 1)]
  steps = [s for s in wanted if s in saved]
  if not steps:
    raise UserError(f"none of checkpoints {begin}..{end} (config.eval.begin_ckpt, "
                    f"end_ckpt; steps {wanted[0]}..{wanted[-1]}) is in "
                    f"{checkpoint.checkpoint_dir(workdir)}; saved steps: "
                    f"{', '.join(map(str, saved))}")
  if len(steps) < len(wanted):
    logging.warning("evaluating %d of the %d checkpoints asked for: the others are not "
                    "saved", len(steps), len(wanted))
  return steps


def eval_loss(config, model, step: int) -> dict:
  """score_sde's evaluation loss: the training objective (config.training's loss,
  without dropout) of `model` averaged over the evaluation set's batches (the same
  batches as bits/dim; config.eval.max_batches), batch i with key
  fold_in(stream_key(seed, "eval_loss_set"), i). Returns {"eval_loss", "num_batches"}."""
  sde = sde_lib.get_sde(config)
  loss_fn = jax.jit(losses.get_loss_fn(sde, config, train=False))
  key = stream_key(int(config.seed), "eval_loss_set")
  values, limit = [], num_eval_batches(config)
  for count, (i, x) in enumerate(eval_batches(config)):
    if limit is not None and count >= limit:
      break
    values.append(float(loss_fn(model, x, jax.random.fold_in(key, i))))
  return {"eval_loss": float(np.mean(values)), "num_batches": len(values), "step": step}


def process_settings(config) -> dict:
  model = config.model
  return {"sde": config.training.sde, "continuous": bool(config.training.continuous),
          "discrete_as_continuous": bool(config.eval.get("discrete_as_continuous", True)),
          "process": {k: model.get(k) for k in ("beta_min", "beta_max", "sigma_min",
                                                 "sigma_max", "num_scales")},
          "data": config.data.to_dict(), "seed": int(config.seed),
          "dtype": str(model.get("dtype", "float32"))}


def loss_settings(config) -> dict:
  """The training objective's settings, which the evaluation loss depends on."""
  t = config.training
  return {name: t.get(name) for name in ("likelihood_weighting", "reduce_mean",
                                         "importance_weighting", "loss_weighting")
          if name in t}


def eval_set_settings(config) -> dict:
  """The settings that choose the evaluation set's batches (modes.eval.evaluate)."""
  e = config.eval
  out = {"batch_size": int(e.batch_size), "max_batches": int(e.get("max_batches", 0))}
  if data_lib.is_toy(config):
    out["num_eval_points"] = int(e.num_eval_points)
  else:
    out["split"] = str(e.bpd_dataset)
  return out


def bpd_settings(config, step: int) -> dict:
  """Every setting that affects the bits/dim result of the checkpoint at `step`: the
  key of its result directory (common.io.result_dir)."""
  e = config.eval
  dequantize, repeats = bpd_protocol(config)
  return {"step": int(step), **process_settings(config), **eval_set_settings(config),
          "trace": str(e.trace), "rtol": float(e.rtol), "atol": float(e.atol),
          "bpd_dequantize": dequantize, "bpd_num_repeats": repeats,
          # Keyed only when not the default, so that earlier results keep their keys.
          **({} if likelihood_solver(config) == "tsit5"
             else {"likelihood_solver": likelihood_solver(config)})}


def check_eval_config(config) -> None:
  """The numeric config.eval fields the enabled parts read (range and type), each named
  in the UserError; a run that would evaluate nothing is an error."""
  from training.loop import check_number
  e = config.eval
  check_number(config, "eval.batch_size", low=1, integer=True)
  if (e.enable_bpd or e.enable_loss) and data_lib.is_toy(config):
    check_number(config, "eval.num_eval_points", low=1, integer=True)
  if e.get("max_batches", None) is not None:
    check_number(config, "eval.max_batches", low=0, integer=True)
  if e.enable_bpd:
    check_choice(str(e.trace), ("exact", "rademacher", "gaussian"),
                 "trace estimator (config.eval.trace)")
    check_number(config, "eval.rtol", low=0.0, low_open=True)
    check_number(config, "eval.atol", low=0.0, low_open=True)
    likelihood_solver(config)
  if e.enable_sampling:
    check_number(config, "eval.num_samples", low=1, integer=True)
