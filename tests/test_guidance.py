"""Classifier-free and classifier guidance (models/guidance.py) on a two-class mixture.

Data in 1-D: class c in {0, 1} with equal weights, x_0 | c ~ N(mu_c, s^2), mu = (-0.5, 0.5),
s = 0.5 (the classes overlap: p(1 | x) = sigmoid((mu_1 - mu_0) x / s^2) = sigmoid(4 x)).
Every marginal is closed form: p_t(x | c) = N(alpha mu_c, v), v = alpha^2 s^2 + sigma^2, and
p_t(x) their mixture, so the conditional and unconditional scores and the noisy-data
classifier log p_t(c | x) are exact (`MixtureModel`).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import sde_lib
from models import classifier_free_guidance, classifier_guidance
from common.errors import UserError
from solvers import get_ode_sampler, get_pc_sampler

MU = np.array([-0.5, 0.5])
S = 0.5
NULL = 2
PROCESSES = {
    "vp": lambda n=300: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "subvp": lambda n=300: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "ve": lambda n=300: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=n),
    "rf": lambda n=300: sde_lib.RectifiedFlow(N=n),
    "edm": lambda n=300: sde_lib.EDM(sigma_max=50.0, N=n),
}
CALLS: list[tuple[int, ...]] = []


class MixtureModel(eqx.Module):
  """Exact conditional model `(x, t, labels) -> native`, x: (B, 1); label NULL = the
  unconditional mixture. Records the batch shape of each call at trace time."""

  sde: sde_lib.AbstractSDE = eqx.field(static=True)

  def scores_and_logits(self, x, t):
    """Per-class scores (2, B, 1) and log p_t(x | c) + log(1/2), (2, B)."""
    alpha, sigma = self.sde.alpha_sigma(t)
    var = (alpha**2 * S**2 + sigma**2)[:, None]
    mu = jnp.asarray(MU, x.dtype)
    centred = jnp.stack([x - alpha[:, None] * mu[c] for c in range(2)])
    logits = -0.5 * jnp.sum(centred**2, -1) / var[:, 0] - 0.5 * jnp.log(var[:, 0])
    return -centred / var, logits

  def log_prob(self, x, t, labels):
    """log p_t(c = labels | x): (B,)."""
    _, logits = self.scores_and_logits(x, t)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None], 0)[0]

  def score(self, x, t, labels):
    scores, logits = self.scores_and_logits(x, t)
    mix = jnp.sum(jax.nn.softmax(logits, axis=0)[..., None] * scores, 0)
    picked = jnp.take_along_axis(scores, jnp.minimum(labels, 1)[None, :, None], 0)[0]
    return jnp.where((labels == NULL)[:, None], mix, picked)

  def __call__(self, x, t, labels):
    CALLS.append(x.shape)
    return self.sde.native_from_score(self.score(x, t, labels), x, t)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_cfg_is_one_batched_call_of_the_weighted_combination(name):
  """One model call on [x; x] (2B rows); the output is (1 + w) cond - w uncond of the
  native quantity, and (the docstring's affine argument) its score is (1 + w) score_c -
  w score_u, to float32 rounding (rtol 1e-4)."""
  sde = PROCESSES[name]()
  model = MixtureModel(sde)
  b, w = 64, 2.5
  x = jax.random.normal(jax.random.PRNGKey(0), (b, 1))
  t = jax.random.uniform(jax.random.PRNGKey(1), (b,), minval=0.05, maxval=0.95)
  labels = jnp.arange(b) % 2
  guided = classifier_free_guidance(model, w, labels, NULL)
  CALLS.clear()
  out = jax.jit(lambda g, x, t: g(x, t))(guided, x, t)
  assert CALLS == [(2 * b, 1)]
  cond, uncond = model(x, t, labels), model(x, t, jnp.full_like(labels, NULL))
  np.testing.assert_allclose(out, (1 + w) * cond - w * uncond, rtol=1e-5, atol=1e-6)
  want_score = ((1 + w) * model.score(x, t, labels)
                - w * model.score(x, t, jnp.full_like(labels, NULL)))
  np.testing.assert_allclose(sde.score_from_native(out, x, t), want_score, rtol=1e-4,
                             atol=1e-4)


def guided_ode_mean(w: float, eps: float = 1e-3, nodes: int = 80) -> float:
  """E[x_eps] of the VP probability-flow ODE dx/dt = f x - g^2/2 s_w(x, t) from x_1 ~
  N(0, 1), s_w = (1 + w) s_1 - w s_mix: float64 (scipy, rtol 1e-10), Gauss-Hermite over
  the prior draw. VP in closed form: beta(t) = 0.1 + 19.9 t, f = -beta / 2, g^2 = beta,
  log alpha = -t^2 19.9 / 4 - t 0.1 / 2, sigma^2 = 1 - alpha^2."""
  z, weights = np.polynomial.hermite.hermgauss(nodes)

  def rhs(t, x):
    beta = 0.1 + 19.9 * t
    alpha = np.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    var = alpha**2 * S**2 + 1 - alpha**2
    s = [-(x - alpha * m) / var for m in MU]
    logits = np.stack([-0.5 * (x - alpha * m)**2 / var for m in MU])
    r1 = 1.0 / (1.0 + np.exp(logits[0] - logits[1]))
    s_mix = (1 - r1) * s[0] + r1 * s[1]
    return -0.5 * beta * x - 0.5 * beta * ((1 + w) * s[1] - w * s_mix)

  sol = solve_ivp(rhs, (1.0, eps), np.sqrt(2.0) * z, rtol=1e-10, atol=1e-10)
  return float(np.sum(weights * sol.y[:, -1]) / np.sqrt(np.pi))


def guided_density_mean(w: float) -> float:
  """Mean of the guided data density q_w(x) ∝ p(x | 1)^(1+w) p(x)^(-w) ∝ p(x | 1) p(1 |
  x)^w = N(x; 0.5, 0.25) sigmoid(4 x)^w, by quadrature on a fine grid."""
  x = np.linspace(-6, 6, 120001)
  logq = -0.5 * (x - MU[1])**2 / S**2 - w * np.logaddexp(0, -(MU[1] - MU[0]) * x / S**2)
  q = np.exp(logq - logq.max())
  return float(np.sum(x * q) / np.sum(q))


def test_cfg_moves_samples_toward_the_class():
  """Class 1, VP, probability-flow ODE (tsit5, rtol = atol = 1e-5), n = 4000 per w.

  Guidance sharpens towards the class: the guided data density q_w ∝ p(x|1) p(1|x)^w has
  mean 0.500, 0.645, 0.770 for w = 0, 1, 3. Sampling with the guided score does not draw
  from q_w (the guided family q_t ∝ p_t(x|1)^(1+w) p_t(x)^(-w) is not q_w diffused), and
  pushes further: the exact guided-ODE mean (float64 reference) is 0.498, 0.804, 1.170
  (0.498, not 0.5: the prior N(0, 1) is not exactly p_1). The reverse SDE with the same
  guided score lands elsewhere again (measured with the PC sampler, n = 8000: 0.735 and
  0.962 for w = 1, 3): guided drifts are not scores, so samplers that agree without
  guidance disagree with it. Asserted: the sample mean equals the float64 guided-ODE mean
  within 4 standard errors
  (4 s / sqrt(n) = 0.032) + 0.005, grows with w, equals q_w's mean at w = 0 and exceeds
  it by more than 0.05 for w > 0.
  """
  sde = PROCESSES["vp"]()
  n = 4000
  model = MixtureModel(sde)
  sampler = get_ode_sampler(sde, (n, 1), solver="tsit5")
  labels = jnp.ones((n,), jnp.int32)
  means = []
  for w in (0.0, 1.0, 3.0):
    x, _ = sampler(jax.random.PRNGKey(7), classifier_free_guidance(model, w, labels, NULL))
    mean = float(np.mean(np.asarray(x, np.float64)))
    want = guided_ode_mean(w)
    assert abs(mean - want) < 4 * S / np.sqrt(n) + 0.005, (w, mean, want)
    if w == 0:
      assert abs(want - guided_density_mean(0.0)) < 0.01
    else:
      assert want > guided_density_mean(w) + 0.05, (w, want, guided_density_mean(w))
    means.append(mean)
  assert means[0] < means[1] - 0.1 and means[1] < means[2] - 0.1, means


@pytest.mark.parametrize("name", list(PROCESSES))
def test_classifier_guidance_with_exact_classifier_is_the_conditional(name):
  """With scale 1 and the exact log p_t(y | x), the guided native function equals the
  exact conditional one (Bayes), with scale 0 the unconditional one; rtol 1e-4 on
  float32 values of size up to ~10, over random x ~ N(0, 1.5^2), t in [0.05, 0.95]."""
  sde = PROCESSES[name]()
  model = MixtureModel(sde)
  b = 256
  x = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (b, 1))
  t = jax.random.uniform(jax.random.PRNGKey(1), (b,), minval=0.05, maxval=0.95)
  labels = jnp.arange(b) % 2
  uncond_fn = lambda x, t: model(x, t, jnp.full((x.shape[0],), NULL))
  log_prob = lambda x, t: model.log_prob(x, t, labels)
  for scale, want_labels in ((1.0, labels), (0.0, jnp.full_like(labels, NULL))):
    guided = classifier_guidance(uncond_fn, log_prob, scale, sde)
    np.testing.assert_allclose(guided(x, t), model(x, t, want_labels), rtol=1e-4,
                               atol=1e-4)


def test_classifier_guided_sampling_draws_the_conditional():
  """VP, PC sampler (reverse diffusion, no corrector, N = 300), n = 4000, class 1 with
  scale 1: mean and std of N(0.5, 0.5^2) within 4 standard errors + the PC sampler's
  allowance of tests/test_pc_sampler.py (0.01 mean, 0.015 std). With scale 3 the mean
  moves past 0.5 + 0.1 (it can fail)."""
  sde = PROCESSES["vp"]()
  n = 4000
  model = MixtureModel(sde)
  labels = jnp.ones((n,), jnp.int32)
  uncond_fn = lambda x, t: model(x, t, jnp.full((x.shape[0],), NULL))
  sampler = get_pc_sampler(sde, (n, 1), predictor="reverse_diffusion", corrector="none")
  for scale in (1.0, 3.0):
    guided = classifier_guidance(uncond_fn, lambda x, t: model.log_prob(x, t, labels),
                                 scale, sde)
    x, _ = sampler(jax.random.PRNGKey(3), guided)
    x = np.asarray(x, np.float64)[:, 0]
    if scale == 1.0:
      assert abs(x.mean() - MU[1]) < 4 * S / np.sqrt(n) + 0.01, x.mean()
      assert abs(x.std() - S) < 4 * S / np.sqrt(2 * n) + 0.015, x.std()
    else:
      assert x.mean() > MU[1] + 0.1, x.mean()


def test_bad_guidance_input_raises_user_error():
  model = MixtureModel(PROCESSES["vp"]())
  with pytest.raises(UserError, match="conditional model"):
    classifier_free_guidance(model, 1.0, jnp.zeros((4,), jnp.int32), None)
  with pytest.raises(UserError, match="w must be >= 0"):
    classifier_free_guidance(model, -1.0, jnp.zeros((4,), jnp.int32), NULL)
  with pytest.raises(UserError, match="class label 2 out of range"):
    classifier_free_guidance(model, 1.0, jnp.asarray([0, 1, 2, 1]), NULL)
