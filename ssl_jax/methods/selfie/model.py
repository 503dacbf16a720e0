"""The Selfie / Allp network: the pre-activation ResNet patch network
(ssl_jax.nn.resnet_v2), the context transformer with u_0 as its special
token (ssl_jax.nn.patch_context), and Allp's 128-d projection."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ssl_jax.nn import patch_context
from ssl_jax.nn.patches import gather
from ssl_jax.nn.resnet_v2 import linear_init


class SelfieNet(nn.Module):
  """Patch network P, transformer h (u_0 first), projection (Allp)."""
  model: ml_collections.ConfigDict
  grid: tuple[int, int]
  dtype: Any = jnp.float32

  def setup(self):
    m = self.model
    # Selfie and Allp train the stacks that see patches: all of stage_sizes.
    self.resnet = patch_context.resnet(m, self.grid[0] * self.grid[1], len(m.stage_sizes),
                                       self.dtype)
    self.context = patch_context.context_transformer(m, self.grid, self.dtype)
    self.project = nn.Dense(m.projection, kernel_init=linear_init(m.linear_std),
                            dtype=self.dtype)

  def split_patches(self, patches, visible, masked, *, train):
    """(representations of the visible patches [b, n_v, c], computed with
    their exchange layers; of the masked ones [b, Q, c], each alone)."""
    if self.model.exchange_layers:
      context, _ = self.resnet.patches(gather(patches, visible), visible, train=train)
      targets, _ = self.resnet.patches(gather(patches, masked), masked, exchange=False,
                                       train=train)
      return context, targets
    reps, _ = self.resnet.patches(patches, exchange=False, train=train)
    return gather(reps, visible), gather(reps, masked)

  def selfie_logits(self, patches, visible, masked, *, train):
    """Selfie 3.1: u from u_0 and the context patches; v_k = u + E^k for
    each masked location k; logits [b, Q, Q] = v_k . h_i, the dot products
    with the (embedded) representations of the image's masked patches."""
    context, targets = self.split_patches(patches, visible, masked, train=train)
    out, _ = self.context(context, visible, train=train)
    u = out[:, 0]
    queries = u[:, None, :] + self.context.positions(masked).astype(u.dtype)
    keys = self.context.tokens(targets)
    logits = jnp.einsum('bqd,bkd->bqk', queries, keys)
    return logits.astype(jnp.float32), u

  def image_vector(self, patches, *, train):
    """u from every patch (Allp's global vector; every method's patch view at
    evaluation), with the patch network's maps: (u [b, width], maps)."""
    reps, maps = self.resnet.patches(patches, train=train)
    b, n = reps.shape[:2]
    out, _ = self.context(reps, jnp.broadcast_to(jnp.arange(n), (b, n)), train=train)
    return out[:, 0], maps

  def allp_projection(self, patches, *, train):
    u, _ = self.image_vector(patches, train=train)
    return self.project(u).astype(jnp.float32), u

  def image(self, images, *, train):
    return self.resnet.image(images, train=train)

  def __call__(self, patches, images, *, train=False):
    """Every parameter (for init)."""
    b, n = patches.shape[:2]
    idx = jnp.broadcast_to(jnp.arange(n), (b, n))
    self.selfie_logits(patches, idx[:, 1:], idx[:, :1], train=train)
    self.allp_projection(patches, train=train)
    return self.image(images, train=train)

