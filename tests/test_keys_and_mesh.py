"""common/keys.py (named key streams) and common/mesh.py (placement on the device mesh)."""
import jax
import numpy as np
import pytest

from common import keys, mesh


def test_stream_keys_are_named_fold_ins():
  """stream_key(seed, name) = fold_in(PRNGKey(seed), STREAMS[name]); every stream differs."""
  for name, number in keys.STREAMS.items():
    np.testing.assert_array_equal(
        keys.stream_key(3, name), jax.random.fold_in(jax.random.PRNGKey(3), number))
  drawn = {tuple(np.asarray(keys.stream_key(3, n)).tolist()) for n in keys.STREAMS}
  assert len(drawn) == len(keys.STREAMS) == len(set(keys.STREAMS.values()))
  assert not np.array_equal(keys.stream_key(3, "sample"), keys.stream_key(4, "sample"))
  with pytest.raises(ValueError, match="unknown key stream 'smaple'"):
    keys.stream_key(0, "smaple")


def test_classifier_accuracy_stream_keeps_its_number():
  """The classifier's accuracy batches were drawn with fold_in(fold_in(state.key, step),
  0x0ACC) before the stream had a name; the named stream gives the same key bits."""
  step_key = jax.random.fold_in(jax.random.PRNGKey(5), 40)
  np.testing.assert_array_equal(keys.fold_stream(step_key, "classifier_accuracy"),
                                jax.random.fold_in(step_key, 0x0ACC))


def test_put_batch_places_on_the_data_axis():
  x = np.arange(24, dtype=np.float32).reshape(4, 6)
  y = mesh.put_batch(x)
  np.testing.assert_array_equal(np.asarray(y), x)
  assert y.sharding.mesh.axis_names == (mesh.DATA_AXIS,)
  stacked = mesh.put_batch({"a": x[None]}, stacked=True)
  np.testing.assert_array_equal(np.asarray(stacked["a"]), x[None])
