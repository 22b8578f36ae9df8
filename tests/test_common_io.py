"""common/io.py (atomic files, settings-keyed result directories, JSONL records) and
common/images.py (PNG output)."""
import json
import os

import numpy as np
import pytest

from common import io
from common.errors import UserError
from common.images import save_snapshot_png


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
  path = tmp_path / "sub" / "out.json"
  io.write_json(str(path), {"a": 1})
  with pytest.raises(RuntimeError):
    with io.atomic_file(str(path), "w") as f:
      f.write('{"a": 2')  # half a file, then the writer dies
      raise RuntimeError("killed")
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(path.parent) == ["out.json"]  # no temporary left behind
  io.save_npz(str(tmp_path / "x.npz"), x=np.arange(3))
  with np.load(tmp_path / "x.npz") as d:
    np.testing.assert_array_equal(d["x"], np.arange(3))


def test_atomic_file_fsyncs_the_file_then_its_directory(tmp_path, monkeypatch):
  """The data reach the disk before the rename, and the rename before the block ends."""
  synced = []
  real = os.fsync

  def fsync(fd):
    synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                  else None)
    real(fd)

  monkeypatch.setattr(os, "fsync", fsync)
  io.write_json(str(tmp_path / "a.json"), [1])
  assert len(synced) == 2
  if synced[0] is not None:
    assert synced == [False, True]


def test_result_dir_keys_settings_and_records_extras(tmp_path):
  d = io.result_dir(str(tmp_path), "kind/x", {"n": 1, "b": [1, 2]},
                    manifest_extra={"path": "/a"})
  assert d == io.result_path(str(tmp_path), "kind/x", {"b": [1, 2], "n": 1})
  assert os.path.basename(d) == "x-" + io.settings_key({"n": 1, "b": (1, 2)})
  with open(os.path.join(d, io.MANIFEST_FILE)) as f:
    assert json.load(f) == {"kind": "kind/x", "path": "/a", "settings": {"b": [1, 2], "n": 1}}
  assert io.result_dir(str(tmp_path), "kind/x", {"n": 1, "b": [1, 2]},
                       manifest_extra={"path": "/a"}) == d
  with pytest.raises(UserError, match="other settings"):
    io.result_dir(str(tmp_path), "kind/x", {"n": 1, "b": [1, 2]},
                  manifest_extra={"path": "/elsewhere"})


def test_records_drop_a_torn_last_line_and_refuse_a_damaged_one(tmp_path):
  path = str(tmp_path / "log.jsonl")
  assert io.read_records(path, "i") == {}
  for i in range(2):
    io.append_record_to(path, {"i": i, "v": i * 0.5})
  with open(path, "a") as f:
    f.write('{"i": 2, "v"')  # a write cut short by a kill
  assert io.read_records(path, "i", truncate_partial=False) == {
      0: {"i": 0, "v": 0.0}, 1: {"i": 1, "v": 0.5}}
  assert open(path).read().endswith('"v"')  # left as it was
  assert sorted(io.read_records(path, "i")) == [0, 1]
  assert open(path).read().endswith("}\n")  # truncated: appends start on a fresh line
  with open(path, "a") as f:
    f.write("not json\n")
  with pytest.raises(UserError, match=r"log.jsonl:3 is not a record"):
    io.read_records(path, "i")


def test_file_sha256_is_hashlib_of_the_bytes(tmp_path):
  import hashlib
  data = os.urandom(3000)
  (tmp_path / "f").write_bytes(data)
  assert io.file_sha256(str(tmp_path / "f"), block=1000) == hashlib.sha256(data).hexdigest()


def test_snapshot_png_of_images_and_points(tmp_path):
  from PIL import Image
  grid = save_snapshot_png(np.full((5, 8, 8, 1), 0.5), str(tmp_path / "g.png"))
  with Image.open(grid) as im:  # 3 columns x 2 rows of 8 px with 1 px borders
    assert im.size == (3 * 9 + 1, 2 * 9 + 1)
    assert np.asarray(im)[1, 1] == 128
  pts = save_snapshot_png(np.array([[0.0, 0.0], [-3.0, 3.0], [9.0, 9.0]]),
                          str(tmp_path / "p.png"), lim=3.0, size=65)
  with Image.open(pts) as im:
    a = np.asarray(im)
  # (0, 0) at the centre, (-3, 3) at the top-left corner, (9, 9) off the canvas.
  assert a[32, 32] == 0 and a[0, 0] == 0 and (a == 0).sum() == 2
