"""This project against score_sde_pytorch in one run, interleaved, on the same weights
(usage, method and figures: `main`)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import common

NAME = "side_by_side"
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "ve", "cifar10_ncsnpp_continuous.py")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py")
# The reduced NCSN++ of BENCHMARKS.md (bench/ncsnpp_cpu.py) and a tiny one for the smoke test.
SIZES = {
    "reduced": {"nf": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 2,
                "attn_resolutions": [16], "image_size": 32, "batch": 16},
    "tiny": {"nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
             "image_size": 16, "batch": 2},
}
FIGURES = ("forward", "train", "pc", "ode", "bpd")
# Equality checks, before any time is reported (see `check`).
FORWARD_RTOL = 1e-4      # max |ours - theirs| / max |theirs|: float32 round-off
ODE_RTOL_FACTOR = 20.0   # RMS(ours - theirs) / RMS(theirs) <= factor * solver rtol
PC_TOL = 0.1             # |mean diff| / std and |std ratio - 1| of the sample values
TRAIN_TOL = 0.25         # |median loss ratio - 1| (each side draws its own noise and t)
BPD_SIGMAS = 4.0         # paired bpd differences: |mean| <= 4 standard errors + 1e-3 bpd


class Peer:
  """The PyTorch side: bench/torch_peer.py in a subprocess of --peer_python."""

  def __init__(self, python: str, peer: str, spec: dict, workdir: str):
    self.workdir = workdir
    self.proc = subprocess.Popen([python, RUNNER, peer, json.dumps(spec), workdir],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch runner exited ({self.proc.wait()}); see its stderr")
    return json.loads(line)

  def __call__(self, op: str, **arrays_and_args) -> tuple[dict, np.ndarray | None]:
    """Runs `op` once; numpy arguments travel as .npy files. Returns (reply, output)."""
    cmd = {"op": op}
    for k, v in arrays_and_args.items():
      if isinstance(v, np.ndarray):
        path = os.path.join(self.workdir, f"{k}.npy")
        np.save(path, v)
        v = path
      cmd[k] = v
    out = os.path.join(self.workdir, "out.npy")
    if op != "train":
      cmd["out"] = out
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    reply = self._read()
    return reply, (np.load(out) if op != "train" else None)

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=60)


def nchw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def our_config(spec: dict, num_scales: int):
  from configs.tiny import load as load_config_file
  common._import_networks()
  config = load_config_file(CONFIG)
  config.model.nf = spec["nf"]
  config.model.ch_mult = tuple(spec["ch_mult"])
  config.model.num_res_blocks = spec["num_res_blocks"]
  config.model.attn_resolutions = tuple(spec["attn_resolutions"])
  config.data.image_size = spec["image_size"]
  config.training.batch_size = spec["batch"]
  config.model.num_scales = num_scales
  return config


class Ours:
  """This project's side, on the network imported from the peer's checkpoint."""

  def __init__(self, config, checkpoint: str, solver: str):
    import data as data_lib
    import models
    import sde_lib
    from common.mesh import batch_sharding, make_mesh, put_batch, replicated
    from solvers.likelihood import get_likelihood_fn
    from solvers.ode_sampler import get_ode_sampler
    from solvers.pc_sampler import get_pc_sampler
    from training import step as step_lib
    from training.restore import model_fn_for
    from training.state import state_from_params

    net = models.load_score_sde_checkpoint(checkpoint, config)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    sde = sde_lib.get_sde(config)
    b, s = int(config.training.batch_size), int(config.data.image_size)
    shape = (b, s, s, 3)
    # Every batch is split over all devices (one per core with --cpu_devices auto), the
    # parameters replicated: what main.py's modes do (common/mesh.py).
    mesh = make_mesh()
    split = jax.device_count() > 1 and b % jax.device_count() == 0
    self.params = jax.device_put(params, replicated(mesh))
    self.put = (lambda a: put_batch(a, mesh)) if split else jnp.asarray
    outs = (batch_sharding(mesh), replicated(mesh)) if split else None

    def jit(fn, static_argnums=()):
      # (batch, count) outputs: the batch stays split while it is computed.
      return jax.jit(fn, static_argnums=static_argnums, out_shardings=outs)

    def model_fn(params, purpose):
      return model_fn_for(config, sde, nnx.merge(graphdef, params, rest), purpose)

    self.forward = jax.jit(lambda p, x, labels: nnx.merge(graphdef, p, rest)(
        x, labels, train=False))
    pc = get_pc_sampler(sde, shape, predictor="reverse_diffusion", corrector="langevin",
                        snr=float(config.sampling.snr),
                        n_steps=int(config.sampling.n_steps_each), probability_flow=False,
                        denoise=True, eps=1e-3)
    self.pc = jit(lambda key, p: pc(key, model_fn(p, "pc")))
    self.solver = solver

    def ode(key, p, z, rtol, atol):
      sampler = get_ode_sampler(sde, shape, solver=solver, rtol=rtol, atol=atol, eps=1e-3,
                                denoise=False)
      return sampler(key, model_fn(p, "ode"), x_T=z)

    self.ode = jit(ode, static_argnums=(3, 4))

    def bpd(key, p, x, rtol, atol):
      fn = get_likelihood_fn(sde, data_lib.get_data_inverse_scaler(config),
                             trace="rademacher", rtol=rtol, atol=atol, solver=solver,
                             eps=1e-5)
      value, _, nfe = fn(key, model_fn(p, "likelihood"), x)
      return value, nfe

    self.bpd = jit(bpd, static_argnums=(3, 4))
    # The training step (DSM loss, Adam, EMA) from the imported weights.
    # Copies: the step donates the state's buffers, and placing an array on the mesh may
    # reuse them, while the other figures' functions hold `params` and `rest`.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    state = state_from_params(config, graphdef, copy(params), copy(rest))
    self.state = step_lib.put_state(state, mesh)
    self.train_step = jax.jit(step_lib.build_train_step(config, mesh, host_batches=True),
                              donate_argnums=(0,))

  def train(self, x):
    self.state, metrics = self.train_step(self.state, x)
    return metrics["loss"]


def spread(values: list[float]) -> dict:
  q = np.percentile(values, [25, 50, 75])
  return {"median": float(q[1]), "iqr": float(q[2] - q[0]), "all": [float(v) for v in values]}


def check(name: str, ok: bool, detail: str, failures: list) -> None:
  print(f"check {name}: {'ok' if ok else 'FAILED'} ({detail})", flush=True)
  if not ok:
    failures.append(f"{name}: {detail}")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="This project against score_sde_pytorch, "
                              "interleaved in one run on the same weights.")
  p.add_argument("--peer", default=os.environ.get("SCORE_SDE_PYTORCH"),
                 help="a score_sde_pytorch checkout (default $SCORE_SDE_PYTORCH)")
  p.add_argument("--peer_python", default=os.environ.get("PEER_PYTHON", "python3"),
                 help="a Python with torch, numpy, scipy and ml_collections")
  p.add_argument("--size", default="reduced", choices=tuple(SIZES))
  p.add_argument("--reps", type=int, default=5, help="timed calls per side and figure")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls per side first")
  p.add_argument("--pause", type=float, default=0.5,
                 help="seconds idle before each timed call, so that neither side's "
                      "worker threads still spin on the cores when the other starts")
  p.add_argument("--num_scales", type=int, default=20, help="PC sampler steps N")
  p.add_argument("--tol", type=float, default=1e-3, help="ODE and bpd rtol = atol")
  p.add_argument("--solver", default="dopri5", choices=("dopri5", "tsit5"),
                 help="our adaptive solver (theirs: scipy RK45, dopri5's tableau)")
  p.add_argument("--figures", default=",".join(FIGURES),
                 help="comma-separated subset of " + ",".join(FIGURES))
  p.add_argument("--cpu_devices", default="auto",
                 help="devices of JAX's CPU backend for our side ('auto': one per core, "
                      "each batch split over them, as main.py --cpu_devices auto; 1: one "
                      "device using the cores through XLA's threads)")
  p.add_argument("--out", default=common.RESULTS_DIR)
  return p


def main(argv=None) -> dict:
  """python -m bench.side_by_side --peer /tmp/score_sde_pytorch \\
        --peer_python /tmp/refvenv/bin/python --out /tmp/sbs

  Starts bench/torch_peer.py under --peer_python: it builds score_sde_pytorch's NCSN++ of
  configs/ve/cifar10_ncsnpp_continuous.py (reduced: nf 32, ch_mult (1, 2, 2), 2 residual
  blocks, attention at 16, FIR; batch 16 of 32x32x3) and writes its checkpoint with
  utils.save_checkpoint; this process imports it (models.load_score_sde_checkpoint). Then,
  per figure, `--warmup` untimed calls per side, then `--reps` timed calls alternating ours,
  theirs, ours, ..., each after `--pause` idle seconds (so that neither side's worker
  threads still spin on the cores when the other side starts); each figure is the median
  (and IQR) of wall ms per call and the ratio ours / theirs of the medians, from this run
  only:
    forward  one network evaluation, eval mode, VE noise levels as labels
    train    one training step: DSM loss (continuous VE, sum over pixels), Adam with
             score_sde's warmup and clipping, EMA; ours jitted alone, theirs losses.get_step_fn
    pc       one batch from the PC sampler: reverse diffusion + Langevin (snr 0.16, one
             corrector step), --num_scales steps, denoised; also per NFE (2 N)
    ode      one batch from the probability-flow ODE, both from the same x_T, rtol = atol =
             --tol: scipy RK45 on the host against our --solver inside one compiled solve
    bpd      bits/dim of one batch of uniform data (Rademacher probe), same tolerance;
             each side's NFE is reported
  Equality checks run first, on the untimed calls; the run stops (exit 1) without timing
  anything if one fails: forward to FORWARD_RTOL, ODE samples from the same x_T to
  ODE_RTOL_FACTOR * tol, PC samples in distribution (PC_TOL), training losses (TRAIN_TOL)
  and bits/dim (BPD_SIGMAS standard errors of the paired differences: each side draws its
  own Rademacher probe). Devices: JAX's default backend and torch's cuda when available;
  on a CPU, ours runs on --cpu_devices devices (default one per core, each batch split
  over them, as `main.py --cpu_devices auto` does), theirs on torch's intra-op threads
  (one per core), so both sides use every core.
  """
  args = parser().parse_args(argv)
  from common.cpu_devices import set_cpu_devices
  set_cpu_devices(args.cpu_devices)  # before JAX starts its backends
  if not args.peer or not os.path.isdir(args.peer):
    raise SystemExit("--peer: a score_sde_pytorch checkout is needed (or $SCORE_SDE_PYTORCH)")
  figures = [f for f in args.figures.split(",") if f]
  spec = {**SIZES[args.size], "num_scales": args.num_scales, "seed": 0}
  b, s = spec["batch"], spec["image_size"]
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(b, s, s, 3)).astype(np.float32)
  labels = np.exp(rng.uniform(np.log(0.01), np.log(50.0), size=(b,))).astype(np.float32)
  load0 = os.getloadavg()
  with tempfile.TemporaryDirectory() as workdir:
    peer = Peer(args.peer_python, args.peer, spec, workdir)
    try:
      config = our_config(spec, args.num_scales)
      ours = Ours(config, peer.info["checkpoint"], args.solver)
      sigma_max = float(config.model.sigma_max)
      z = (rng.standard_normal((b, s, s, 3)) * sigma_max).astype(np.float32)
      tol = float(args.tol)
      keys = iter(jax.random.split(jax.random.key(1), 10_000))
      p = ours.params
      x_j, labels_j, z_j = ours.put(x), ours.put(labels), ours.put(z)
      calls = {
          "forward": (lambda: ours.forward(p, x_j, labels_j),
                      lambda: peer("forward", x=nchw(x), labels=labels)),
          "train": (lambda: ours.train(x_j), lambda: peer("train", x=nchw(x))),
          "pc": (lambda: ours.pc(next(keys), p), lambda: peer("pc")),
          "ode": (lambda: ours.ode(next(keys), p, z_j, tol, tol),
                  lambda: peer("ode", z=nchw(z), rtol=tol, atol=tol)),
          "bpd": (lambda: ours.bpd(next(keys), p, x_j, tol, tol),
                  lambda: peer("bpd", x=nchw(x), rtol=tol, atol=tol)),
      }
      failures, first, compile_s = [], {}, {}
      for name in figures:  # compile, warm up, and keep the first outputs for the checks
        t0 = time.perf_counter()
        mine = jax.device_get(calls[name][0]())
        compile_s[name] = time.perf_counter() - t0
        theirs = calls[name][1]()
        for _ in range(args.warmup - 1):
          jax.block_until_ready(calls[name][0]())
          calls[name][1]()
        first[name] = (mine, theirs)
      record_checks = {}
      for name in figures:
        mine, (reply, out) = first[name]
        if name == "forward":
          err = float(np.max(np.abs(np.asarray(mine) - nhwc(out))) / np.max(np.abs(out)))
          record_checks[name] = err
          check(name, err <= FORWARD_RTOL, f"max abs diff / max abs = {err:.2e}, "
                f"tolerance {FORWARD_RTOL:g}", failures)
        elif name == "ode":
          diff = np.asarray(mine[0]) - nhwc(out)
          err = float(np.sqrt(np.mean(diff ** 2) / np.mean(out ** 2)))
          record_checks[name] = err
          check(name, err <= ODE_RTOL_FACTOR * tol, f"relative RMS diff {err:.2e} from "
                f"the same x_T, tolerance {ODE_RTOL_FACTOR:g} * {tol:g}", failures)
        elif name == "pc":
          a, t = np.asarray(mine[0]), out
          dm, rs = abs(a.mean() - t.mean()) / t.std(), a.std() / t.std() - 1
          record_checks[name] = {"mean_diff_over_std": float(dm), "std_ratio_minus_1":
                                 float(rs)}
          check(name, dm <= PC_TOL and abs(rs) <= PC_TOL,
                f"|mean diff|/std {dm:.3f}, std ratio - 1 {rs:+.3f}, tolerance {PC_TOL}",
                failures)
        elif name == "train":
          pass  # checked below on every step's loss
        elif name == "bpd":
          d = np.asarray(mine[0]) - np.asarray(out)
          se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
          bound = BPD_SIGMAS * se + 1e-3
          record_checks[name] = {"mean_diff": float(d.mean()), "bound": bound,
                                 "ours": float(np.mean(mine[0])), "theirs": float(out.mean())}
          check(name, abs(d.mean()) <= bound, f"mean paired diff {d.mean():+.4f} bpd "
                f"(ours {np.mean(mine[0]):.4f}, theirs {out.mean():.4f}), tolerance "
                f"{bound:.4f}", failures)
      results = {}
      losses = {"ours": [], "theirs": []}
      if "train" in figures:
        losses["ours"].append(float(first["train"][0]))
        losses["theirs"].append(first["train"][1][0]["loss"])
      for name in figures if not failures else ():
        ms = {"ours": [], "theirs": []}
        nfe = {"ours": [], "theirs": []}
        for _ in range(args.reps):
          time.sleep(args.pause)
          t0 = time.perf_counter()
          mine = jax.device_get(calls[name][0]())
          ms["ours"].append(1e3 * (time.perf_counter() - t0))
          time.sleep(args.pause)
          reply, _ = calls[name][1]()
          ms["theirs"].append(reply["ms"])
          if name == "train":
            losses["ours"].append(float(mine))
            losses["theirs"].append(reply["loss"])
          if name in ("ode", "bpd"):
            nfe["ours"].append(int(mine[1]))
            nfe["theirs"].append(int(reply["nfe"]))
          if name == "pc":
            nfe["ours"].append(int(mine[1]))
            nfe["theirs"].append(int(reply["nfe"]))
        entry = {"ours_ms": spread(ms["ours"]), "theirs_ms": spread(ms["theirs"])}
        entry["ratio"] = entry["ours_ms"]["median"] / entry["theirs_ms"]["median"]
        if nfe["ours"]:
          entry["ours_nfe"], entry["theirs_nfe"] = nfe["ours"], nfe["theirs"]
        if name == "pc":
          n = statistics.median(nfe["ours"])
          entry["ours_ms_per_nfe"] = entry["ours_ms"]["median"] / n
          entry["theirs_ms_per_nfe"] = (entry["theirs_ms"]["median"]
                                        / statistics.median(nfe["theirs"]))
        results[name] = entry
      if "train" in figures:
        lo, lt = statistics.median(losses["ours"]), statistics.median(losses["theirs"])
        record_checks["train"] = {"ours_loss": lo, "theirs_loss": lt}
        check("train", abs(lo / lt - 1) <= TRAIN_TOL, f"median loss ours {lo:.1f}, theirs "
              f"{lt:.1f}, tolerance {TRAIN_TOL:g} relative", failures)
        if failures:
          results.pop("train", None)
    finally:
      peer.close()
  record = {"figure": NAME, "size": args.size, **spec, "reps": args.reps,
            "warmup": args.warmup, "pause": args.pause, "tol": args.tol,
            "solver": args.solver,
            "peer_torch": peer.info["torch"], "peer_device": peer.info["device"],
            "peer_threads": peer.info["threads"], "checks": record_checks,
            "failures": failures, "results": results, "our_first_call_s": compile_s,
            "loadavg_start": load0[0], "loadavg_end": os.getloadavg()[0],
            "cpu_count": os.cpu_count(), "cpu_devices": args.cpu_devices}
  record.update(common.environment())
  common.emit(record, NAME, args.out)
  print(table(results))
  if failures:
    raise SystemExit("equality checks failed, nothing timed: " + "; ".join(failures))
  return record


def table(results: dict) -> str:
  """A markdown table of the results: median ms (IQR) per side and the ratio."""
  rows = ["| figure | ours ms (IQR) | score_sde_pytorch ms (IQR) | ours / theirs | NFE ours, "
          "theirs |", "|---|---|---|---|---|"]
  for name, e in results.items():
    o, t = e["ours_ms"], e["theirs_ms"]
    nfe = (f"{statistics.median(e['ours_nfe']):g}, {statistics.median(e['theirs_nfe']):g}"
           if "ours_nfe" in e else "")
    rows.append(f"| {name} | {o['median']:.1f} ({o['iqr']:.1f}) | {t['median']:.1f} "
                f"({t['iqr']:.1f}) | {e['ratio']:.2f} | {nfe} |")
    if name == "pc":
      rows.append(f"| pc per NFE | {e['ours_ms_per_nfe']:.1f} | {e['theirs_ms_per_nfe']:.1f}"
                  f" | {e['ours_ms_per_nfe'] / e['theirs_ms_per_nfe']:.2f} | |")
  return "\n".join(rows)


if __name__ == "__main__":
  main(sys.argv[1:])
