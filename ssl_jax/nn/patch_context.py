"""The patch-set transformer of Selfie and DV2, and the config keys of their
shared network (ssl_jax.nn.resnet_v2 + this transformer).

Selfie 3.1 feeds "a learnable vector u_0" and the context patches to a
transformer and reads u, the output at u_0; DV2 3.3 feeds every patch
(masked ones zeroed) plus position embeddings, and 3.4 adds "a special
position [IMG]" whose output is the patch view's image vector. Both are
`ContextTransformer`: a special token first, then each patch
representation through a linear embedding plus the position embedding of
its grid cell, through pre-LayerNorm transformer blocks. `keys` [b, n]
hides tokens from the attention (they are still queries, so a masked
position gets a prediction made from the others).

Position embeddings (`position`): 'learned' (one vector per grid cell) or
'factorized' (a row vector plus a column vector, Selfie's choice for larger
grids). They and the special token start normal with standard deviation
0.02 (BERT's); the linear layers use `linear_std` (DV2 4.1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config.checks import ConfigError, is_int, is_number, one_of, positive_int, require
from ssl_jax.nn.posembed import FactorizedPosEmbed
from ssl_jax.nn.resnet_v2 import NORMS, HybridResNet, linear_init
from ssl_jax.nn.transformer import Encoder

Dtype = Any
POSITIONS = ('learned', 'factorized')


class ContextTransformer(nn.Module):
  """(special token, patch tokens) -> transformer outputs [b, 1 + n, width]."""
  grid: tuple[int, int]
  width: int
  num_layers: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.1
  position: str = 'learned'
  linear_std: float = 1e-3
  dtype: Dtype = jnp.float32

  def setup(self):
    self.embed = nn.Dense(self.width, kernel_init=linear_init(self.linear_std),
                          dtype=self.dtype)
    init = nn.initializers.normal(0.02)
    if self.position == 'factorized':
      self.position_table = FactorizedPosEmbed(self.grid, self.width)
    else:
      table = self.param('position', init, (self.grid[0] * self.grid[1], self.width))
      self.position_table = lambda idx: table[idx]
    self.special = self.param('special_token', init, (self.width,))
    self.encoder = Encoder(self.num_layers, self.heads, self.mlp_ratio, self.dropout,
                           kernel_init=linear_init(self.linear_std), dtype=self.dtype)

  def positions(self, idx: jax.Array) -> jax.Array:
    """E^k: the position embeddings of grid cells idx [...] -> [..., width]."""
    return self.position_table(idx)

  def tokens(self, reps: jax.Array) -> jax.Array:
    """The linear embedding of patch representations [..., c] -> [..., width]."""
    return self.embed(reps)

  def __call__(self, reps: jax.Array, positions: jax.Array, keys: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """reps [b, n, c] at grid cells positions [b, n]; keys [b, n] bool (None:
    all attendable). (outputs [b, 1 + n, width], {'layer_k': [b, 1 + n, width]})."""
    b, n = reps.shape[:2]
    x = self.embed(reps) + self.positions(positions).astype(self.dtype)
    special = jnp.broadcast_to(self.special.astype(self.dtype), (b, 1, self.width))
    x = jnp.concatenate([special, x], axis=1)
    mask = None
    if keys is not None:
      attend = jnp.concatenate([jnp.ones((b, 1), bool), keys], axis=1)
      mask = jnp.broadcast_to(attend[:, None, None, :], (b, 1, n + 1, n + 1))
    return self.encoder(x, mask, train=train)


def flat_views(images: jax.Array) -> tuple[jax.Array, int]:
  """[b, V, S, S, 3] (or one view [b, S, S, 3]) -> ([b * V, S, S, 3], V):
  the views of an image are consecutive."""
  if images.ndim == 4:
    return images, 1
  b, v = images.shape[:2]
  return images.reshape((b * v,) + images.shape[2:]), v


def first_view(x: jax.Array, views: int) -> jax.Array:
  """[b * V, ...] in flat_views' order -> [b, ...], the first view of each
  image (what online probes read: one vector per image)."""
  return x.reshape((x.shape[0] // views, views) + x.shape[1:])[:, 0]


def stage_features(patch_maps: dict[str, jax.Array], image_maps: dict[str, jax.Array]
                   ) -> dict[str, jax.Array]:
  """The stacks' maps as representations by name: 'patch_resK' (the patch
  network's stack K [b, M, h, w, c], averaged over positions and patches)
  and 'image_resK' (the full image's [b, h, w, c], averaged over positions)."""
  out = {}
  for k, v in patch_maps.items():
    out[f'patch_{k}'] = v.mean(axis=(1, 2, 3)).astype(jnp.float32)
  for k, v in image_maps.items():
    out[f'image_{k}'] = v.mean(axis=(1, 2)).astype(jnp.float32)
  return out


def resnet(model: ml_collections.ConfigDict, num_patches: int, patch_stages: int,
           dtype: Any) -> HybridResNet:
  """The HybridResNet of a `model` block (see `validate_model`)."""
  return HybridResNet(
      num_patches=num_patches, stage_sizes=tuple(model.stage_sizes), width=model.resnet_width,
      stem_width=model.stem_width, patch_stages=patch_stages, norm=model.norm,
      groups=model.norm_groups, dropout=model.dropout, exchange=model.exchange_layers,
      exchange_width=model.exchange_width, exchange_heads=model.exchange_heads,
      linear_std=model.linear_std, dtype=dtype)


def context_transformer(model: ml_collections.ConfigDict, grid: tuple[int, int],
                        dtype: Any) -> ContextTransformer:
  return ContextTransformer(
      grid=grid, width=model.width, num_layers=model.num_layers, heads=model.heads,
      mlp_ratio=model.mlp_ratio, dropout=model.dropout, position=model.position,
      linear_std=model.linear_std, dtype=dtype)


def validate_grid(config: ml_collections.ConfigDict, method: str) -> int:
  """config.METHOD.grid: patches per side, dividing the image size."""
  size = config.data.image_size
  return require(config, f'{method}.grid', lambda v: is_int(v) and v >= 2 and size % v == 0,
                 f'an integer >= 2 that divides data.image_size={size} (patches per side)')


def validate_model(config: ml_collections.ConfigDict, prefix: str, *, min_stages: int) -> None:
  """The keys of a Selfie / DV2 `model` block at `prefix` (e.g. 'dv2.model.'):
  ResNet stacks (at least `min_stages`), normalisation, dropout, linear
  initialisation, exchange layers, the context transformer, the projection."""
  m = prefix
  require(config, m + 'stage_sizes',
          lambda v: len(v) >= min_stages and all(is_int(s) and s > 0 for s in v),
          f'a tuple of at least {min_stages} positive block counts (ResNet-50: (3, 4, 6, 3))')
  width = positive_int(config, m + 'resnet_width')
  norm = one_of(config, m + 'norm', NORMS)
  stem = positive_int(config, m + 'stem_width')
  if norm == 'group':
    groups = positive_int(config, m + 'norm_groups')
    for channels in (stem, width):  # min(groups, channels) groups; wider stacks are multiples
      if channels % min(groups, channels):
        raise ConfigError(f'config.{m}norm_groups={groups} must divide stem_width={stem} and '
                          f'resnet_width={width} (or exceed them): GroupNorm splits channels '
                          'into equal groups')
  require(config, m + 'dropout', lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
  require(config, m + 'linear_std', lambda v: is_number(v) and v > 0, 'a positive number')
  require(config, m + 'exchange_layers', lambda v: is_int(v) and v >= 0,
          'an integer >= 0 (0: no exchange layers)')
  xw = positive_int(config, m + 'exchange_width')
  require(config, m + 'exchange_heads', lambda v: is_int(v) and v > 0 and xw % v == 0,
          f'a positive integer that divides exchange_width={xw}')
  w = positive_int(config, m + 'width')
  positive_int(config, m + 'num_layers')
  positive_int(config, m + 'mlp_ratio')
  require(config, m + 'heads', lambda v: is_int(v) and v > 0 and w % v == 0,
          f'a positive integer that divides width={w}')
  one_of(config, m + 'position', POSITIONS)
  positive_int(config, m + 'projection')
