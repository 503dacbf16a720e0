"""The fixed poolings of intermediates, in one place.

Networks return `(output, {name: intermediate})` with unpooled per-token
arrays [batch, tokens, width] (or per-stage maps [batch, h, w, width]);
a method's `represent` turns them into features [batch, width] here.
Learned poolings (attention pooling, a class token) stay in their networks
and are offered by name, already one vector per example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_mean(x: jax.Array) -> jax.Array:
  """[b, tokens, d] -> [b, d] float32: the mean over tokens."""
  return x.mean(axis=1).astype(jnp.float32)


def spatial_mean(x: jax.Array) -> jax.Array:
  """[b, h, w, d] -> [b, d] float32: the mean over positions (a ResNet stage)."""
  return x.mean(axis=(1, 2)).astype(jnp.float32)


def pool(intermediates: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Every intermediate to one float32 vector per example: per-token
  arrays [b, t, d] by their token mean, stage maps [b, h, w, d] by their
  spatial mean, vectors [b, d] as they are."""
  out = {}
  for name, x in intermediates.items():
    if x.ndim == 2:
      out[name] = x.astype(jnp.float32)
    elif x.ndim == 3:
      out[name] = token_mean(x)
    elif x.ndim == 4:
      out[name] = spatial_mean(x)
    else:
      raise ValueError(f'intermediate {name!r} has shape {x.shape}: expected [b, d], '
                       '[b, tokens, d] or [b, h, w, d]')
  return out
