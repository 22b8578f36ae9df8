"""data/edm_augment.py against NVlabs/edm's own AugmentPipe given the same random draws
(tests/data/make_edm_augment_reference.py), and its gating."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.errors import UserError
from data import edm_augment

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "edm_augment_reference.npz")


def _draws(ref, case):
  raw = [ref[f"{case}_draw{j}"] for j in range(int(ref[f"{case}_ndraws"]))]
  assert len(raw) == 14
  flat = [jnp.asarray(a.reshape(-1), jnp.float32) for a in raw]
  flat[12] = jnp.asarray(raw[12], jnp.float32)  # the translations: (2, N)
  return edm_augment.Draws(*flat)


# p traced: one compile for both cases.
_jitted = jax.jit(edm_augment.augment_with)


@pytest.mark.parametrize("case", ["p1", "p012"])
def test_equals_edms_augment_pipe(case):
  """8 RGB 16 x 16 images, EDM's train.py settings, p = 1 (every transform on every
  image) and p = 0.12: images within 1e-5 of EDM's (measured 2.1e-6: float32 round-off
  of the filters and the bilinear resampling), labels within 1e-6."""
  ref = np.load(REFERENCE)
  out, labels = _jitted(jnp.asarray(ref["images"]), _draws(ref, case),
                        jnp.float32(ref[f"{case}_p"]))
  assert out.shape == ref["images"].shape and labels.shape == (8, edm_augment.AUGMENT_DIM)
  np.testing.assert_allclose(labels, ref[f"{case}_labels"], atol=1e-6)
  np.testing.assert_allclose(out, ref[f"{case}_out"], atol=1e-5)
  # The test can fail: the images did change (p = 1 moves every image by O(1)).
  if case == "p1":
    assert np.abs(ref["p1_out"] - ref["images"]).max() > 0.5


def test_gates_and_errors():
  """p = 0 turns every transform off (EDM gates each with rand < multiplier * p, the
  x-flip's multiplier 1e8 included): labels 0 and the image kept up to the sym6 filters'
  identity resampling (1e-4; measured 3.6e-6). p = 0.01: the x-flip gate is open
  (1e8 p > 1), so about half of 256 images are flipped (Binomial(256, 1/2): 128 +- 8)."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (256, 8, 8, 1), minval=-1, maxval=1)
  fn = jax.jit(lambda k, x, p: edm_augment.augment_with(x, edm_augment.draw(k, 256), p))
  out, labels = fn(jax.random.PRNGKey(1), x, jnp.float32(0.0))
  np.testing.assert_array_equal(labels, 0.0)
  assert np.abs(np.asarray(out) - np.asarray(x)).max() < 1e-4
  _, labels = fn(jax.random.PRNGKey(1), x, jnp.float32(0.01))
  assert 96 < int(np.sum(np.asarray(labels[:, 0]) == 1)) < 160
  with pytest.raises(UserError, match="probability"):
    edm_augment.augment(jax.random.PRNGKey(0), x, 1.5)
