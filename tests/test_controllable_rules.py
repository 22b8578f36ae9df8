"""The PC inpainter's two replacement rules (solvers/controllable.py): ours ends on the data
exactly; score_sde's as written ends with x_mean's known part alpha(eps) y (re-noised at the
last grid time t_{N-1} = eps) and starts from the clean data. Both on exact Gaussian data,
VP with 20 grid points; the distance to the exact posterior is bench/controllable_posterior.py's
(BENCHMARKS.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
import solvers
from common.errors import UserError


@pytest.mark.parametrize("rule", ["ours", "score_sde"])
def test_known_part_at_the_end(rule):
  sde = sde_lib.VPSDE(N=20)
  model = sde_lib.gaussian_model_fn(sde, 0.5, 0.3)
  data = jnp.tile(jnp.asarray([[0.2, -0.4, 0.9, 0.1]]), (64, 1))
  mask = jnp.tile(jnp.asarray([[1.0, 1.0, 0.0, 0.0]]), (64, 1))
  x, nfe = solvers.get_inpainter(sde, (64, 4), rule=rule)(jax.random.PRNGKey(0), model,
                                                            data, mask)
  assert nfe == 40
  x = np.asarray(x)
  alpha, _ = sde.alpha_sigma(jnp.asarray([1e-3]))
  want = np.asarray(data[:, :2]) * (1.0 if rule == "ours" else float(alpha[0]))
  np.testing.assert_allclose(x[:, :2], want, rtol=1e-6, atol=1e-7)
  # The generated part: independent coordinates, so the posterior is the prior N(0.5, 0.09).
  assert abs(float(x[:, 2:].mean()) - 0.5) < 0.15 and np.all(np.isfinite(x))


def test_unknown_rule():
  with pytest.raises(UserError, match="replacement rule.*choices: ours, score_sde"):
    solvers.get_inpainter(sde_lib.VPSDE(N=20), (4, 4), rule="exact")
