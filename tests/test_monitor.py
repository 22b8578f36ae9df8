"""training/monitor.py and the loop's logs: held-out loss, sample snapshots, TensorBoard."""
import glob
import json
import os

import jax
import numpy as np
import pytest

import sde_lib
from common.keys import stream_key
from short_run_config import get_config as _config
from training import losses, loop, monitor, restore


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """20 steps of a tiny toy VP model with held-out loss every 10 steps and a PC sample
  snapshot (50 scales) at step 20."""
  config = _config(snapshot_sampling=True)
  config.model.num_scales = 50
  workdir = str(tmp_path_factory.mktemp("monitor"))
  state = loop.train(config, workdir)
  return config, workdir, state


def test_held_out_loss_is_the_ema_loss_on_fresh_data(trained):
  """metrics.jsonl's eval_loss at steps 10 and 20 equals the loss recomputed here from the
  restored EMA network, fresh toy data and the key fold_in(stream_key(seed, 'eval_loss'),
  step) (float32, rtol 1e-5)."""
  config, workdir, _ = trained
  with open(os.path.join(workdir, loop.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  held_out = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
  assert sorted(held_out) == [10, 20]
  import data as data_lib
  sde = sde_lib.get_sde(config)
  loss_fn = losses.get_loss_fn(sde, config, train=False)
  for step in (10, 20):
    model, _ = restore.restore_model(config, workdir, step=step)
    data_key, loss_key = jax.random.split(
        jax.random.fold_in(stream_key(config.seed, "eval_loss"), step))
    x = data_lib.get_data_scaler(config)(
        data_lib.toy.sample(data_key, config.data.dataset, 32, 2))
    np.testing.assert_allclose(held_out[step], float(loss_fn(model, x, loss_key)),
                               rtol=1e-5)


def test_snapshot_is_the_configured_sampler_from_the_ema(trained):
  """samples/snapshot_step20.npz equals the PC sampler run here on the restored EMA
  network with key fold_in(stream_key(seed, 'snapshot'), 20) (rtol 1e-5)."""
  from solvers.from_config import get_sampling_fn
  config, workdir, _ = trained
  path = os.path.join(workdir, monitor.SNAPSHOT_SUBDIR, "snapshot_step20")
  assert os.path.getsize(path + ".png") > 100
  with np.load(path + ".npz") as d:
    got = d["samples"]
  assert got.shape == (32, 2)
  sde, model_fn, _ = restore.restore_model_fn(config, workdir, purpose="pc")
  want, _ = get_sampling_fn(config, sde, (32, 2))(
      jax.random.fold_in(stream_key(config.seed, "snapshot"), 20), model_fn)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


def test_snapshot_grid_and_scalars_land_in_tensorboard(trained):
  """The training run's event files hold the logged scalars (loss, eval_loss) and the
  step-20 snapshot picture as an image (read back with tensorboardX's own protobufs)."""
  pytest.importorskip("tensorboardX")
  from tensorboardX.proto import event_pb2
  _, workdir, _ = trained
  files = glob.glob(os.path.join(workdir, loop.TENSORBOARD_SUBDIR, "events.out.*"))
  assert files
  tags, images = set(), []
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      n = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for value in event.summary.value:
        tags.add(value.tag)
        if value.HasField("image"):
          images.append((event.step, value.image.height, value.image.width))
  assert {"loss", "eval_loss", "samples"} <= tags, tags
  assert [step for step, _, _ in images] == [20]
  assert images[0][1] > 10 and images[0][2] > 10
