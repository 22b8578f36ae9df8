"""EDM's imagenet-64x64-cond-adm (NVlabs/edm README: --cond=1 --arch=adm --duration=2500
--batch=4096 --lr=1e-4 --ema=50 --dropout=0.10 --augment=0 --fp16=1 --ls=100): ADM
(dhariwal_unet, 192 channels x [1, 2, 3, 4], 3 blocks, attention at 32, 16, 8), 1000
classes from an .npz of images and labels; sampled as EDM's ImageNet result, 256 stochastic
Heun steps with S_churn 40, S_min 0.05, S_max 50, S_noise 1.003 (EDM's Table 5). EDM trains
it in float16 with loss scaling 100; float32 here (config.model.dtype = 'bfloat16' for the
reduced-precision compute this project has).

Run:  python main.py --config configs/edm/imagenet_64_adm.py --workdir runs/edm_imagenet64 \
        --config.data.data_dir=/path/to/imagenet64_npz
"""
from configs.edm.default_edm import get_default_configs, kimg_to_steps


def get_config():
  config = get_default_configs()
  training = config.training
  training.batch_size = 4096
  training.n_iters = kimg_to_steps(2_500_000, 4096)  # 2500 Mimg
  config.optim.lr = 1e-4
  training.augment_p = 0.0  # --augment=0
  data = config.data
  data.dataset = "NPZ"
  data.image_size = 64
  model = config.model
  for name in ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type",
               "resample_filter"):
    del model[name]  # SongUNet's; ADM has none of them
  model.name = "dhariwal_unet"
  model.augment_dim = 0
  model.num_classes = 1000
  model.model_channels = 192
  model.channel_mult = (1, 2, 3, 4)
  model.channel_mult_emb = 4
  model.num_blocks = 3
  model.attn_resolutions = (32, 16, 8)
  model.channels_per_head = 64
  model.dropout = 0.10
  model.ema_halflife_kimg = 50_000.0  # --ema=50 (Mimg)
  fast = config.sampling.fast
  fast.steps = 256
  fast.s_churn = 40.0
  fast.s_min = 0.05
  fast.s_max = 50.0
  fast.s_noise = 1.003
  return config
