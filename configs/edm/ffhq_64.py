"""EDM's 64x64 unconditional presets (NVlabs/edm README: --cond=0 --batch=256
--cres=1,2,2,2 --lr=2e-4 --augment=0.15; dropout 0.05 for FFHQ, 0.25 for AFHQv2), sampled
with 40 Heun steps (79 evaluations, EDM's Table 2). `get_config(arch)`: 'ddpmpp'
(default) or 'ncsnpp'.

Run:  python main.py --config configs/edm/ffhq_64.py --workdir runs/edm_ffhq64_ddpmpp \
        --config.data.data_dir=/path/to/ffhq_64
      python main.py --config configs/edm/ffhq_64.py:ncsnpp --workdir runs/edm_ffhq64_ncsnpp ...
"""
from configs.edm.default_edm import get_default_configs, kimg_to_steps, ncsnpp


def edm_64(dataset: str, dropout: float, arch: str = "ddpmpp"):
  """The 64 px preset on `dataset` with `dropout`; arch 'ddpmpp' or 'ncsnpp'."""
  config = get_default_configs()
  if arch == "ncsnpp":
    ncsnpp(config)
  elif arch != "ddpmpp":
    raise ValueError(f"unknown arch {arch!r}; choices: ddpmpp, ncsnpp")
  config.training.batch_size = 256
  config.training.n_iters = kimg_to_steps(200_000, 256)  # 200 Mimg
  config.optim.lr = 2e-4
  config.training.augment_p = 0.15
  config.model.dropout = dropout
  config.model.channel_mult = (1, 2, 2, 2)
  config.data.dataset = dataset
  config.data.image_size = 64
  config.sampling.fast.steps = 40
  return config


def get_config(arch: str = "ddpmpp"):
  return edm_64("FFHQ", 0.05, arch)
