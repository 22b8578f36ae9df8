"""Earlier versions of two layers, kept for before/after benchmarks (bench/ncsnpp_cpu.py
--norm_impl reference, --proj_impl tensordot): the same maps as models/layers.py's
GroupNorm and NIN, computed the way XLA's CPU backend ran slower (BENCHMARKS.md)."""
import jax
import jax.numpy as jnp
from jax import lax


def group_norm_call(self, x: jax.Array) -> jax.Array:
  """GroupNorm reduced over a (B, ..., G, C / G) view's axes in one go."""
  *lead, c = x.shape
  g = self.num_groups
  xg = x.astype(jnp.float32).reshape(*lead, g, c // g)
  axes = tuple(range(1, len(lead))) + (len(lead) + 1,)  # all but batch and group
  mean = xg.mean(axis=axes, keepdims=True)
  var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
  y = ((xg - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
  return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


def nin_call(self, x: jax.Array) -> jax.Array:
  """NIN as a plain tensordot (its weight gradient left to XLA's own layout choice)."""
  x = x.astype(self.dtype)
  return (jnp.tensordot(x, self.W[...].astype(self.dtype), axes=1)
          + self.b[...].astype(self.dtype))
