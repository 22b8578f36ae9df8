"""configs/vp/digits_ddpmpp_small.py made class-conditional: the digit (10 classes) enters
through a learned class embedding added to the time embedding, trained with label dropout
0.1 (the null label is the unconditional model), for classifier-free guidance on the 8x8
digits. Small enough to train on a CPU.

Run:  python main.py --config configs/vp/digits_ddpmpp_small_cond.py --workdir runs/digits_cond
Then: --mode sample --config.sampling.task=class --config.sampling.guidance_weight=2
      (a grid with one row per digit; --config.sampling.class_labels=7 for sevens only)
      --mode sample --config.sampling.task=inpaint --config.sampling.mask=center
"""
from configs.vp.digits_ddpmpp_small import get_config as get_base_config


def get_config():
  config = get_base_config()
  config.model.num_classes = 10
  # Ho and Salimans 2022 train with p_uncond in {0.1, 0.2}.
  config.model.label_dropout = 0.1
  return config
