"""EDM's formulation against the VP SDE and rectified flow at an equal training budget:
sample quality against NFE by bench/fast_samplers.py's paired chunk protocol, and on the
digits bits/dim (usage and method: `main`)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import types

import jax
import numpy as np

from bench import common
from bench import fast_samplers as fs
from common.choices import check_choice
from common.errors import UserError

# Per part: (formulation, config file, overrides that make it one). The digits have no
# rectified-flow config: it is the VP digits config with the process swapped and the data
# centered, as configs/rf/cifar10_rf_ddpmpp.py derives from DDPM++ (cont.).
FORMULATIONS = {
    "toy": (("edm", "configs/edm/toy.py", {}),
            ("vp", "configs/toy/checkerboard_vpsde.py", {}),
            ("rf", "configs/toy/checkerboard_rf.py", {})),
    "digits": (("edm", "configs/edm/digits.py", {}),
               ("vp", "configs/vp/digits_ddpmpp_small.py", {}),
               ("rf", "configs/vp/digits_ddpmpp_small.py",
                {"training.sde": "rectified_flow", "data.centered": True})),
}

# (label, method, knobs): EDM's own sampler, and DPM-Solver++(2M), the best multistep
# method on the digits in BENCHMARKS.md's fast-sampler tables. Its schedule is logSNR
# (uniform in log sigma for EDM), time_uniform for rectified flow (logSNR cannot start at
# lambda(T) = -inf).
SAMPLERS = (("edm_heun", "edm_heun", dict(schedule="edm")),
            ("dpm_solver++-2M", "dpm_solver++", dict(order=2)))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--part", required=True, help="toy | digits")
  p.add_argument("--workdir", required=True,
                 help="one sub-folder per formulation (trained if it has no checkpoint)")
  p.add_argument("--train_steps", type=int, default=None,
                 help="steps for every formulation (default: the EDM config's n_iters)")
  p.add_argument("--batch", type=int, default=None,
                 help="batch for every formulation (default: the EDM config's)")
  p.add_argument("--n", type=int, default=None,
                 help="samples per run (default: toy 50000, digits 1440)")
  p.add_argument("--chunk", type=int, default=10000, help="toy: chunk size")
  p.add_argument("--nfes", default="10,20,35")
  p.add_argument("--formulations", default="edm,vp,rf")
  p.add_argument("--reference", type=int, default=None,
                 help="1: also the adaptive probability-flow ODE (rtol = atol = 1e-5); "
                      "default 1 on toy, 0 on digits")
  p.add_argument("--bpd_n", type=int, default=120,
                 help="digits: test images for bits/dim (0: none)")
  p.add_argument("--out", default=None,
                 help="JSON path (default bench/results/edm_design_space_<part>.json)")
  p.add_argument("--merge", default="",
                 help="comma-separated JSONs of runs with other --formulations (e.g. one "
                      "process per formulation): join them into --out and print the "
                      "table, running nothing")
  return p


def merge(results: list[dict]) -> dict:
  """One result from runs of the same part with disjoint formulations, in
  FORMULATIONS' order; the load averages of each run are kept."""
  parts = {r["part"] for r in results}
  if len(parts) != 1:
    raise UserError(f"--merge: the JSONs are of parts {sorted(parts)}; give one part")
  forms = [f for r in results for f in r["formulations"]]
  names = [f["formulation"] for f in forms]
  if len(set(names)) != len(names):
    raise UserError(f"--merge: formulations {names} occur more than once")
  order = [row[0] for row in FORMULATIONS[parts.pop()]]
  out = dict(results[0], formulations=sorted(forms, key=lambda f: order.index(f["formulation"])))
  out["runs"] = [{k: r.get(k) for k in ("date", "load_average", "load_average_end", "device",
                                        "nfes")} | {"formulations": [
                                            f["formulation"] for f in r["formulations"]]}
                 for r in results]
  return out


def equal_budget_configs(part: str, train_steps: int | None, batch: int | None,
                         names: list[str]) -> dict:
  """{formulation: config} for `part` with the same n_iters and batch_size (default:
  the EDM config's), checkpointed once at the end."""
  from configs.tiny import load as load_config_file
  from configs.tiny import set_field

  check_choice(part, list(FORMULATIONS), "--part")
  rows = [r for r in FORMULATIONS[part] if r[0] in names]
  for name in names:
    check_choice(name, [r[0] for r in FORMULATIONS[part]], "formulation")
  edm = load_config_file(FORMULATIONS[part][0][1])
  steps = int(train_steps if train_steps is not None else edm.training.n_iters)
  batch = int(batch if batch is not None else edm.training.batch_size)
  if steps < 1 or batch < 1:
    raise UserError(f"--train_steps = {steps} and --batch = {batch} must be >= 1")
  configs = {}
  for name, path, overrides in rows:
    config = load_config_file(path)
    for field, value in overrides.items():
      set_field(config, field, value)
    config.training.n_iters = steps
    config.training.batch_size = batch
    config.training.snapshot_freq = steps
    config.training.snapshot_freq_for_preemption = steps
    config.training.n_jitted_steps = min(int(config.training.n_jitted_steps), steps)
    config.training.eval_freq = steps
    config.training.log_freq = min(int(config.training.log_freq), steps)
    configs[name] = config
  return configs


def paired(a: list[float], b: list[float]) -> tuple[float, float | None]:
  """Mean and standard error of a_i - b_i over paired chunks (or examples)."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else None
  return float(np.mean(d)), se


def _mean_se(x: list[float]) -> tuple[float, float | None]:
  x = np.asarray(x, np.float64)
  return float(np.mean(x)), (float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1
                             else None)


def _num_params(model) -> int:
  from flax import nnx
  return int(sum(np.size(v) for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))


def _bits_per_dim(config, sde, model_fn, x01: np.ndarray, key: jax.Array) -> list[float]:
  """Per-example bits/dim of 8-bit images x01 = k / 255, shape (N, H, W, C), dequantized
  (k + u) / 256 with u from `key` (the same for every formulation), Rademacher trace,
  tsit5 at rtol = atol = 1e-3 (the digits config's evaluation), eps 1e-5."""
  import data as data_lib
  from solvers.likelihood import get_likelihood_fn

  scaler = data_lib.get_data_scaler(config)
  fn = get_likelihood_fn(sde, data_lib.get_data_inverse_scaler(config), trace="rademacher",
                         rtol=1e-3, atol=1e-3, eps=1e-5, dequantize=True, scaler=scaler)
  out = []
  for i in range(0, len(x01), 60):
    bpd, _, _ = fn(jax.random.fold_in(key, i), model_fn, scaler(x01[i:i + 60]))
    out += [float(v) for v in np.asarray(bpd)]
  return out


def run_formulation(name: str, config, args, workdir: str) -> dict:
  """Trains (or restores) one formulation and scores its samplers at every NFE: chunk
  distances (`fs._Recorder`'s metric and chunks), and bits/dim on the digits."""
  import data as data_lib
  import sde_lib
  import solvers
  from evaluation import metrics
  from training.restore import model_fn_for

  targs = types.SimpleNamespace(train_steps=None, workdir=workdir, chunk=args.chunk,
                                n=args.n)
  model, step, train_s = fs._train_and_restore(config, targs)
  sde = sde_lib.get_sde(config)
  is_toy = data_lib.is_toy(config)
  key = jax.random.PRNGKey(0)
  # The same keys as bench/fast_samplers.py: the same reference, floor and projections
  # for every formulation, and x_T = (prior std) x the same standard normal draw, so chunk
  # i of every formulation starts from the same directions (prior_sampling scales one
  # jax.random.normal draw).
  k_data, k_ref, k_sw, k_prior, k_run = jax.random.split(key, 5)
  reference, floor_sets, chunk = fs._data_sets(config, targs, k_data, k_ref)
  n = int(args.n)
  if n % chunk:
    raise UserError(f"--n = {n} must be a multiple of the chunk size {chunk}")
  shape = (n,) + ((int(config.data.dim),) if is_toy else data_lib.get_data_shape(config))
  x_T = sde.prior_sampling(k_prior, shape)
  to_ref = jax.jit(metrics.sliced_wasserstein_to(k_sw, jax.numpy.asarray(reference), chunk))
  inverse = data_lib.get_data_inverse_scaler(config)

  def chunks(x) -> list[float]:
    x = jax.numpy.asarray(x)
    return [float(to_ref(x[i:i + chunk])) for i in range(0, len(x), chunk)]

  floor = chunks(np.concatenate(floor_sets))
  ode_fn = model_fn_for(config, sde, model, "ode")
  eps = float(config.sampling.eps)
  runs = []

  def record(label, sampler, **extra):
    t0 = time.time()
    x, nfe = sampler(k_run, ode_fn, x_T=x_T)
    x = np.asarray(jax.block_until_ready(inverse(x)))
    d = chunks(x)
    runs.append(dict(sampler=label, nfe=int(nfe), sw_chunks=d, sw=float(np.mean(d)),
                     finite=bool(np.all(np.isfinite(x))),
                     seconds=round(time.time() - t0, 1), **extra))
    print(f"{name} {label} nfe={int(nfe)} sw={np.mean(d):.4f} ({time.time() - t0:.0f} s)",
          flush=True)

  reference_on = args.reference if args.reference is not None else int(is_toy)
  if reference_on:
    record("ode-adaptive", solvers.get_ode_sampler(sde, shape, rtol=1e-5, atol=1e-5,
                                                   eps=eps))
  rf = config.training.sde == "rectified_flow"
  for nfe in (int(s) for s in args.nfes.split(",")):
    for label, method, knobs in SAMPLERS:
      knobs = dict(knobs)
      steps = (nfe + 1) // 2 if method == "edm_heun" else nfe
      knobs.setdefault("schedule", "time_uniform" if rf else "logSNR")
      sampler = solvers.get_fast_sampler(sde, shape, method, steps, eps=eps, **knobs)
      record(label, sampler, target_nfe=nfe, schedule=knobs["schedule"])

  out = dict(formulation=name, sde=str(config.training.sde), train_steps=int(step),
             batch_size=int(config.training.batch_size), train_seconds=round(train_s, 1),
             num_params=_num_params(model), network=str(config.model.name),
             floor_chunks=floor, floor=float(np.mean(floor)), n=n, chunk=chunk, runs=runs)
  if not is_toy and int(args.bpd_n) > 0:
    from data.digits import load_digits
    x01 = load_digits("test")[0][:int(args.bpd_n)].astype(np.float32) / 255.0
    t0 = time.time()
    out["bpd"] = _bits_per_dim(config, sde, ode_fn, x01, jax.random.PRNGKey(1))
    print(f"{name} bits/dim {np.mean(out['bpd']):.3f} ({time.time() - t0:.0f} s)",
          flush=True)
  return out


def table(result: dict) -> str:
  """Markdown: per sampler and target NFE, each formulation's mean distance +- its standard
  error over chunks [actual NFE], and EDM's paired difference to VP and to RF."""
  forms = {f["formulation"]: f for f in result["formulations"]}
  names = list(forms)
  others = [n for n in names if n != "edm"] if "edm" in forms else []
  head = (["sampler", "NFE"] + names + [f"edm - {o} (paired)" for o in others])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  keys = []
  for f in forms.values():
    for r in f["runs"]:
      k = (r["sampler"], r.get("target_nfe"))
      if k not in keys:
        keys.append(k)
  for label, target in keys:
    row = [label, str(target if target is not None else "adaptive")]
    found = {}
    for n in names:
      r = next((r for r in forms[n]["runs"]
                if r["sampler"] == label and r.get("target_nfe") == target), None)
      found[n] = r
      if r is None:
        row.append("-")
        continue
      m, se = _mean_se(r["sw_chunks"])
      cell = f"{m:.4f} ± {se:.4f}" if se is not None else f"{m:.4f}"
      row.append(cell + (f" [{r['nfe']}]" if r["nfe"] != target else ""))
    for o in others:
      if found.get("edm") is None or found.get(o) is None:
        row.append("-")
        continue
      m, se = paired(found["edm"]["sw_chunks"], found[o]["sw_chunks"])
      row.append(f"{m:+.4f} ± {se:.4f}" if se is not None else f"{m:+.4f}")
    lines.append("| " + " | ".join(row) + " |")
  floor = [f"{n}: {forms[n]['floor']:.4f}" for n in names]
  lines.append("")
  lines.append("floor (data vs reference): " + ", ".join(floor))
  if all("bpd" in forms[n] for n in names):
    parts = []
    for n in names:
      m, se = _mean_se(forms[n]["bpd"])
      parts.append(f"{n} {m:.3f} ± {se:.3f}")
    for o in others:
      m, se = paired(forms["edm"]["bpd"], forms[o]["bpd"])
      parts.append(f"edm - {o} {m:+.3f} ± {se:.3f} (paired)")
    lines.append(f"bits/dim ({len(forms[names[0]]['bpd'])} test images): " + "; ".join(parts))
  return "\n".join(lines)


def main(argv=None) -> dict:
  """python -m bench.edm_design_space --part toy --workdir runs/edm_design_toy
      python -m bench.edm_design_space --part digits --workdir runs/edm_design_digits

  Trains EDM (configs/edm/toy.py or digits.py), the VP SDE (configs/toy/
  checkerboard_vpsde.py, configs/vp/digits_ddpmpp_small.py) and rectified flow
  (configs/toy/checkerboard_rf.py; the VP digits config with sde = rectified_flow and
  centered data) with the same steps and batch (`--train_steps`, `--batch`; default the
  EDM config's), each with its own network settings, loss, EMA and learning-rate schedule
  (the JSON records the parameter counts). Then draws `--n` samples with edm_heun (EDM
  schedule, steps (NFE + 1) // 2) and DPM-Solver++(2M) at each of `--nfes`, and scores
  them as bench/fast_samplers.py does: sliced Wasserstein distance to one reference set,
  in chunks (toy: chunks of 10,000 against 200,000 fresh points; digits: 4 chunks of 360
  against the 1,437 training images), with the floor of real data. Every formulation
  starts from the same standard normal draw (times its prior std), so chunk i is paired
  across formulations and the table gives EDM's paired difference to each with its
  standard error over chunks. On the digits, bits/dim of the first `--bpd_n` test images
  (dequantized with the same noise for every formulation; paired per image). Writes the
  JSON (`--out`) and prints the markdown table. On 2 shared cores, one process per
  formulation (`--formulations edm`, ...) then `--merge a.json,b.json,c.json` gives the
  same figures sooner.
  """
  args = _parser().parse_args(argv)
  check_choice(args.part, list(FORMULATIONS), "--part")
  out = args.out or os.path.join(common.RESULTS_DIR, f"edm_design_space_{args.part}.json")
  if args.merge:
    results = []
    for path in args.merge.split(","):
      with open(path) as f:
        results.append(json.load(f))
    result = merge(results)
    _write(result, out)
    return result
  if args.n is None:
    args.n = 50000 if args.part == "toy" else 1440
  names = [s for s in args.formulations.split(",") if s]
  configs = equal_budget_configs(args.part, args.train_steps, args.batch, names)
  result = dict(part=args.part, date=datetime.datetime.now(datetime.timezone.utc)
                .isoformat(timespec="seconds"), load_average=os.getloadavg(),
                jax=jax.__version__, device=jax.devices()[0].device_kind,
                nfes=args.nfes, formulations=[])
  for name, config in configs.items():
    result["formulations"].append(
        run_formulation(name, config, args, os.path.join(args.workdir, name)))
  result["load_average_end"] = os.getloadavg()
  _write(result, out)
  return result


def _write(result: dict, out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(table(result))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
