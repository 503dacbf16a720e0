"""The DV2 network (Figure 3): the pre-activation ResNet as patch network
(first three stacks, optional exchange layers) and image network (all four
stacks, the same weights), the transformer h with the [IMG] position, and
the four 128-d projections (predictions and targets, patches and images)."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.nn import patch_context
from ssl_jax.nn.patches import gather
from ssl_jax.nn.resnet_v2 import linear_init


class Outputs(NamedTuple):
  patch_predictions: jax.Array  # [N, Q, 128]: P^_i^j at the masked locations, projected
  patch_targets: jax.Array      # [N, M, 128]: P_i^j of every patch (computed alone), projected
  image_prediction: jax.Array   # [N, width]: I^_i, the transformer's output at [IMG]
  image_predicted: jax.Array    # [N, 128]: I^_i projected
  image_target: jax.Array | None  # [N, 128]: I_i (the full image) projected; None without it
  image: jax.Array | None       # [N, c]: I_i before the projection


class DV2Net(nn.Module):
  model: ml_collections.ConfigDict
  grid: tuple[int, int]
  dtype: Any = jnp.float32

  def setup(self):
    m = self.model
    self.resnet = patch_context.resnet(m, self.grid[0] * self.grid[1], 3, self.dtype)
    self.context = patch_context.context_transformer(m, self.grid, self.dtype)
    dense = lambda name: nn.Dense(m.projection, kernel_init=linear_init(m.linear_std),
                                  dtype=self.dtype, name=name)
    self.predict_patch = dense('predict_patch')
    self.project_patch = dense('project_patch')
    self.predict_image = dense('predict_image')
    self.project_image = dense('project_image')

  def __call__(self, patches: jax.Array, visible: jax.Array, masked: jax.Array,
               images: jax.Array | None, *, train: bool) -> Outputs:
    """patches [N, M, p, p, 3]; visible [N, M - Q], masked [N, Q] grid
    cells; images [N, S, S, 3] (None: no image view)."""
    n, m = patches.shape[:2]
    # Targets: every patch through the patch network alone (3.4: the
    # exchange layers never see a masked patch, and a target never sees
    # the context).
    alone, _ = self.resnet.patches(patches, exchange=False, train=train)
    if self.model.exchange_layers:
      context, _ = self.resnet.patches(gather(patches, visible), visible, train=train)
    else:
      context = gather(alone, visible)
    rows = jnp.arange(n)[:, None]
    # Equation 14: v_i^j P_i^j + E^j -- masked representations zeroed (and
    # hidden from the attention; their positions still query).
    zeroed = jnp.zeros_like(alone).at[rows, visible].set(context)
    keys = jnp.zeros((n, m), bool).at[rows, visible].set(True)
    out, _ = self.context(zeroed, jnp.broadcast_to(jnp.arange(m), (n, m)), keys, train=train)
    predictions = gather(out[:, 1:], masked)
    image_prediction = out[:, 0]
    image = image_target = None
    if images is not None:
      image, _ = self.resnet.image(images, train=train)
      image_target = self.project_image(image).astype(jnp.float32)
    return Outputs(self.predict_patch(predictions).astype(jnp.float32),
                   self.project_patch(alone).astype(jnp.float32), image_prediction,
                   self.predict_image(image_prediction).astype(jnp.float32), image_target, image)

  def views(self, patches: jax.Array, images: jax.Array, *, train: bool):
    """Evaluation: every patch visible. ((I^ [b, width], patch maps),
    (I [b, c], image maps))."""
    b, m = patches.shape[:2]
    reps, patch_maps = self.resnet.patches(patches, train=train)
    out, _ = self.context(reps, jnp.broadcast_to(jnp.arange(m), (b, m)), train=train)
    return (out[:, 0], patch_maps), self.resnet.image(images, train=train)
