"""Raw pixels as a "backbone": the baseline every representation must beat.

It has no parameters and no self-supervised loss; its one representation,
'pixels', is the image itself flattened to a vector in [-1, 1]. A linear probe
on it (configs/linear_probe.py:pixels_tiny) runs through the same loop, data,
optimizer and evaluation as the probes of learned features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl_jax.methods.base import Method
from ssl_jax.nn.patches import to_signed


class Pixels(Method):
  """init / represent of the identity map (see ssl_jax.methods.base)."""

  name = 'pixels'
  self_supervised = False
  architecture_keys = ('data.image_size',)

  def representations(self) -> tuple[str, ...]:
    return ('pixels',)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *,
           decoder: bool = True) -> Any:
    del rng, batch, decoder
    return {}

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    del params, state, rng, train, mask_ratio
    image = batch['image']
    return {'pixels': to_signed(image).reshape(image.shape[0], -1).astype(jnp.float32)}
