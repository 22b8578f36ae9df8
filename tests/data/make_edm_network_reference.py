"""Writes tests/data/edm_network_<name>.npz: tiny SongUNet / DhariwalUNet networks of
NVlabs/edm (Karras et al. 2022) run by EDM's own code, for tests/test_edm_networks.py.

    /tmp/refvenv/bin/python tests/data/make_edm_network_reference.py /tmp/edm

The argument is a checkout of github.com/NVlabs/edm (read and run, never copied here);
torch (CPU) must be importable. Per configuration: EDM's constructor kwargs (JSON), every
state_dict tensor (key 'sd/<name>'), fixed inputs and EDM's output in eval mode. Weights
are random (fixed seed) and rounded to float16 before the run, so that storing them as
float16 is exact and the files stay small; the output is float32 from the float32 run.
"""
import json
import os
import sys
import types

import numpy as np

CONFIGS = {
    # DDPM++ as EDM's --arch=ddpmpp, class- and augmentation-conditional.
    "ddpmpp_cond": dict(cls="SongUNet", kwargs=dict(
        img_resolution=8, in_channels=3, out_channels=3, label_dim=4, augment_dim=9,
        model_channels=4, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
        dropout=0.1, embedding_type="positional", channel_mult_noise=1,
        encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])),
    # NCSN++ as EDM's --arch=ncsnpp, unconditional, three levels.
    "ncsnpp_uncond": dict(cls="SongUNet", kwargs=dict(
        img_resolution=8, in_channels=3, out_channels=3, model_channels=4,
        channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1,
        embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
        decoder_type="standard", resample_filter=[1, 3, 3, 1])),
    # The skip encoder and decoder, class-conditional.
    "song_skip_cond": dict(cls="SongUNet", kwargs=dict(
        img_resolution=8, in_channels=2, out_channels=2, label_dim=3, model_channels=4,
        channel_mult=[1, 2], num_blocks=2, attn_resolutions=[], dropout=0.0,
        embedding_type="fourier", channel_mult_noise=2, encoder_type="skip",
        decoder_type="skip", resample_filter=[1, 3, 3, 1])),
    # ADM with 4 channels per head (EDM fixes 64; patched in below so that a tiny network
    # has multi-head attention), class- and augmentation-conditional.
    "adm_cond_heads": dict(cls="DhariwalUNet", channels_per_head=4, kwargs=dict(
        img_resolution=8, in_channels=3, out_channels=3, label_dim=4, augment_dim=9,
        model_channels=4, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
        dropout=0.1)),
    # ADM exactly as EDM builds it: 4- and 8-channel blocks have no attention head.
    "adm_uncond": dict(cls="DhariwalUNet", kwargs=dict(
        img_resolution=8, in_channels=3, out_channels=6, model_channels=4,
        channel_mult=[1, 2], num_blocks=2, attn_resolutions=[8, 4], dropout=0.1)),
}
BATCH = 2


def main(edm_dir: str) -> None:
  sys.path.insert(0, os.path.abspath(edm_dir))
  sys.modules.setdefault("requests", types.ModuleType("requests"))  # dnnlib imports it
  import torch
  from training import networks

  out_dir = os.path.dirname(os.path.abspath(__file__))
  for name, spec in CONFIGS.items():
    torch.manual_seed(0)
    orig_block = networks.UNetBlock
    if "channels_per_head" in spec:
      cph = spec["channels_per_head"]

      class Block(orig_block):  # EDM's block with another head width
        heads_width = cph

        def __init__(self, **kw):
          kw["channels_per_head"] = self.heads_width
          super().__init__(**kw)

      networks.UNetBlock = Block
    try:
      net = getattr(networks, spec["cls"])(**spec["kwargs"]).eval()
      gen = torch.Generator().manual_seed(1)
      with torch.no_grad():
        for key, t in net.state_dict().items():
          if key.endswith("resample_filter"):
            continue  # a constant of the architecture
          if t.ndim >= 2:
            fan_in = int(np.prod(t.shape[1:]))
            v = torch.randn(t.shape, generator=gen) / np.sqrt(fan_in)
          elif "norm" in key and key.endswith("weight"):
            v = 1 + 0.2 * torch.randn(t.shape, generator=gen)
          elif key.endswith("freqs"):
            v = 4 * torch.randn(t.shape, generator=gen)
          else:
            v = 0.2 * torch.randn(t.shape, generator=gen)
          t.copy_(v.half().float())
        kw = spec["kwargs"]
        res, cin = kw["img_resolution"], kw["in_channels"]
        x = torch.randn([BATCH, cin, res, res], generator=gen)
        if spec["cls"] == "SongUNet" and kw["embedding_type"] == "fourier":
          noise = torch.tensor([-1.7, 1.2])  # EDM's VE c_noise = log(sigma / 2)
        else:
          noise = torch.tensor([3.5, 871.25])  # VP / iDDPM's c_noise in [0, M - 1]
        labels = None
        if kw.get("label_dim", 0):
          labels = torch.nn.functional.one_hot(torch.tensor([1, 0]),
                                               kw["label_dim"]).float()
          labels[1] = 0  # the unconditional (dropped) label
        augment = (torch.randn([BATCH, kw["augment_dim"]], generator=gen)
                   if kw.get("augment_dim", 0) else None)
        y = net(x, noise, labels, augment)
    finally:
      networks.UNetBlock = orig_block
    arrays = {f"sd/{k}": v.numpy().astype(np.float16 if not k.endswith("resample_filter")
                                          else np.float32)
              for k, v in net.state_dict().items() if v is not None}
    arrays.update(x=x.numpy(), noise_labels=noise.numpy(), output=y.numpy())
    if labels is not None:
      arrays["class_labels"] = labels.numpy()
    if augment is not None:
      arrays["augment_labels"] = augment.numpy()
    meta = dict(cls=spec["cls"], kwargs=spec["kwargs"],
                channels_per_head=spec.get("channels_per_head", 64),
                torch=torch.__version__)
    arrays["meta"] = np.array(json.dumps(meta))
    path = os.path.join(out_dir, f"edm_network_{name}.npz")
    np.savez_compressed(path, **arrays)
    print(f"{path}: {os.path.getsize(path)} bytes, output |y| max "
          f"{float(y.abs().max()):.3g}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(f"usage: {sys.argv[0]} <NVlabs/edm checkout>")
  main(sys.argv[1])
