"""The PyTorch side of bench/side_by_side.py: run by a Python with torch (not this
project's), it imports only torch, numpy and a score_sde_pytorch checkout, and answers one
JSON command per stdin line with one JSON line on stdout (protocol: `serve`)."""
from __future__ import annotations

import importlib.machinery
import json
import sys
import time
import types


def _stub_modules() -> None:
  """score_sde_pytorch's utils.py imports tensorflow (for gfile, not used here), and op/ compiles a CUDA extension at import time
  (its CPU path, used here on every device, is the pure-torch upfirdn2d_native). An empty
  module stands in for tensorflow and the extension is never built."""
  stub = types.ModuleType("tensorflow")
  stub.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)  # torch's find_spec
  sys.modules.setdefault("tensorflow", stub)
  import torch.utils.cpp_extension as ext
  ext.load = lambda *args, **kwargs: None
  import op  # `op.upfirdn2d` is the function; route every device to the torch one
  native = sys.modules["op.upfirdn2d"].upfirdn2d_native
  op.upfirdn2d = lambda x, k, up=1, down=1, pad=(0, 0): native(
      x, k, up, up, down, down, pad[0], pad[1], pad[0], pad[1])


def _config(peer: str, spec: dict):
  from configs.ve import cifar10_ncsnpp_continuous as cfg_module
  import torch
  config = cfg_module.get_config()
  config.model.nf = spec["nf"]
  config.model.ch_mult = tuple(spec["ch_mult"])
  config.model.num_res_blocks = spec["num_res_blocks"]
  config.model.attn_resolutions = tuple(spec["attn_resolutions"])
  config.data.image_size = spec["image_size"]
  config.model.num_scales = spec["num_scales"]
  config.training.batch_size = spec["batch"]
  config.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  return config


def _redraw_zero_init(model, generator) -> None:
  """NCSN++ initialises its output convolutions with scale 0 (weights ~1e-10): the score is
  then ~0 and the Langevin corrector's step (snr * |z| / |score|)^2 unbounded. Such weights
  are redrawn N(0, 1 / fan_in) so that every figure runs a network of ordinary scale."""
  import torch
  with torch.no_grad():
    for p in model.parameters():
      if p.dim() > 1 and float(p.abs().max()) < 1e-6:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=generator) / fan_in ** 0.5)


def serve(peer: str, spec: dict, workdir: str) -> None:
  """Builds the network, writes `<workdir>/checkpoint_0.pth` with score_sde_pytorch's
  utils.save_checkpoint, prints {"ready": ..., "checkpoint": path}, then for each stdin line
  {"op": ...} runs it once and prints {"ms": wall ms, ...}:
    forward {x: .npy NCHW, labels: .npy, out: .npy}  one eval-mode network call
    train   {x: .npy}   one training step (losses.get_step_fn: DSM, Adam, EMA); its loss
    pc      {out: .npy} a batch from sampling.get_pc_sampler (reverse diffusion + Langevin)
    ode     {z: .npy, out: .npy, rtol, atol} sampling.get_ode_sampler (scipy RK45) from z
    bpd     {x: .npy, out: .npy, rtol, atol} likelihood.get_likelihood_fn (Rademacher)
  and `quit`. Timings synchronise the device before and after."""
  sys.path.insert(0, peer)
  _stub_modules()
  import numpy as np
  import torch
  import likelihood
  import losses
  import sampling
  import sde_lib
  import utils
  from models import ncsnpp  # noqa: F401  (registers the network)
  from models import utils as mutils
  from models.ema import ExponentialMovingAverage

  torch.manual_seed(spec["seed"])
  config = _config(peer, spec)
  device = config.device
  model = mutils.create_model(config)
  _redraw_zero_init(model, torch.Generator().manual_seed(spec["seed"]))
  model.to(device)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
  checkpoint = f"{workdir}/checkpoint_0.pth"
  utils.save_checkpoint(checkpoint, state)

  sde = sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                      N=config.model.num_scales)
  # datasets.get_data_inverse_scaler (datasets.py imports jax and tensorflow): the identity
  # for uncentered data, as in this config.
  assert not config.data.centered
  inverse_scaler = lambda x: x  # noqa: E731
  train_step = losses.get_step_fn(
      sde, train=True, optimize_fn=losses.optimization_manager(config),
      reduce_mean=config.training.reduce_mean, continuous=config.training.continuous,
      likelihood_weighting=config.training.likelihood_weighting)
  shape = (spec["batch"], 3, spec["image_size"], spec["image_size"])
  pc = sampling.get_pc_sampler(
      sde, shape, sampling.ReverseDiffusionPredictor, sampling.LangevinCorrector,
      inverse_scaler, snr=config.sampling.snr, n_steps=config.sampling.n_steps_each,
      probability_flow=False, continuous=True, denoise=True, eps=1e-3, device=device)

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def load(path):
    return torch.from_numpy(np.load(path)).to(device)

  print(json.dumps({"ready": True, "torch": torch.__version__, "device": str(device),
                    "threads": torch.get_num_threads(), "checkpoint": checkpoint}),
        flush=True)
  for line in sys.stdin:
    cmd = json.loads(line)
    op, reply = cmd["op"], {}
    if op == "quit":
      break
    sync()
    t0 = time.perf_counter()
    if op == "forward":
      model.eval()
      x, labels = load(cmd["x"]), load(cmd["labels"])
      with torch.no_grad():
        y = model(x, labels)
    elif op == "train":
      model.train()
      loss = train_step(state, load(cmd["x"]))
      reply["loss"] = float(loss.detach())
    elif op == "pc":
      model.eval()
      y, reply["nfe"] = pc(model)
    elif op == "ode":
      model.eval()
      ode = sampling.get_ode_sampler(sde, shape, inverse_scaler, denoise=False,
                                     rtol=cmd["rtol"], atol=cmd["atol"], method="RK45",
                                     eps=1e-3, device=device)
      y, reply["nfe"] = ode(model, z=load(cmd["z"]))
    elif op == "bpd":
      model.eval()
      fn = likelihood.get_likelihood_fn(sde, inverse_scaler, hutchinson_type="Rademacher",
                                        rtol=cmd["rtol"], atol=cmd["atol"], method="RK45",
                                        eps=1e-5)
      y, _, reply["nfe"] = fn(model, load(cmd["x"]))
    else:
      raise ValueError(f"unknown op {op!r}")
    sync()
    reply["ms"] = 1e3 * (time.perf_counter() - t0)
    if "out" in cmd:
      np.save(cmd["out"], y.detach().cpu().numpy())
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
  serve(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
