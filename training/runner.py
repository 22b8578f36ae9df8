"""Temporary: the names below moved to common/keys.py, common/mesh.py, common/io.py,
common/images.py and training/restore.py; this module goes once every caller imports
them from there."""
from common.images import save_png, save_snapshot_png, tile_images  # noqa: F401
from common.io import (MANIFEST_FILE, atomic_file, result_dir, save_npz,  # noqa: F401
                       settings_key, write_json)
from common.keys import STREAMS, stream_key  # noqa: F401
from common.mesh import (DATA_AXIS, batch_sharding, make_mesh, put_batch,  # noqa: F401
                         replicated, shard_outputs)
from training.restore import (PURPOSES, Restored, continuous_labels,  # noqa: F401
                              model_fn_for, restore_model, restore_model_fn)
