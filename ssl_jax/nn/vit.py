"""A Vision Transformer over patches, with named prefix tokens.

ViT (Dosovitskiy et al.): each p x p patch flattened and projected
(equivalent to a stride-p convolution), learned position embeddings (normal
0.02), pre-LayerNorm blocks with stochastic depth (ssl_jax.nn.transformer),
a final LayerNorm. Before the patch tokens come learned prefix tokens by
name: a [CLS] token, and for the multi-task ViT the task tokens of SiT
(a contrastive token, a rotation token). Prefix tokens carry no position
embedding: each is its own learned vector, already unique.

Per patch, two options the multi-task ViT uses:
  masked        the patch's token replaced by a learned mask token (its
                position embedding is still added: the model knows where
                the missing patch is);
  unpositioned  the patch's position embedding replaced by one learned
                "no position" embedding (the relative-position task's
                pairs, without the position shortcut).

For MAE: position='sincos' (fixed 2D sine-cosine encodings instead of
learned ones), `kernel_init` for every Dense and attention kernel (MAE's
Xavier-uniform), and `keep` [b, k]: only those patches' tokens (their
position embeddings already added) enter the blocks, behind the prefix.

Sizes (`SIZES`): the ViT paper's Ti/S/B (width, depth, heads).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.patches import gather
from ssl_jax.nn.posembed import sincos_2d
from ssl_jax.nn.transformer import Encoder

POSITIONS = ('learned', 'sincos')

SIZES = {
    'tiny': dict(width=192, depth=12, heads=3),
    'small': dict(width=384, depth=12, heads=6),
    'base': dict(width=768, depth=12, heads=12),
}


class ViT(nn.Module):
  """patches [b, n, p*p*3] (values in [-1, 1]) -> (tokens [b, len(prefix) + n,
  width] after the final norm, {'layer_k': block k's output})."""
  num_patches: int
  width: int
  depth: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  drop_path: float = 0.0
  prefix: tuple[str, ...] = ('cls',)
  mask_token: bool = False
  no_position_token: bool = False
  remat: bool = False
  dtype: Any = jnp.float32
  position: str = 'learned'  # or 'sincos' (fixed, on a square grid)
  kernel_init: Any = None  # None: flax's default (LeCun normal)
  attention: str = 'xla'  # ssl_jax.nn.attention.IMPLEMENTATIONS

  @nn.compact
  def __call__(self, patches: jax.Array, *, masked: jax.Array | None = None,
               unpositioned: jax.Array | None = None, keep: jax.Array | None = None,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    b, n = patches.shape[:2]
    if n != self.num_patches:
      raise ValueError(f'{n} patches given, the position embeddings have {self.num_patches}')
    if self.position not in POSITIONS:
      raise ValueError(f'position={self.position!r}: one of {POSITIONS}')
    init = nn.initializers.normal(0.02)
    dense = {} if self.kernel_init is None else {'kernel_init': self.kernel_init}
    x = nn.Dense(self.width, dtype=self.dtype, name='embed', **dense)(patches)
    if masked is not None:
      if not self.mask_token:
        raise ValueError('masked patches need ViT(mask_token=True)')
      token = self.param('mask_token', init, (self.width,))
      x = jnp.where(masked[..., None], token.astype(x.dtype), x)
    if self.position == 'sincos':
      side = round(self.num_patches ** 0.5)
      if side * side != self.num_patches:
        raise ValueError(f'sine-cosine positions need a square grid, got {self.num_patches}')
      pos = jnp.asarray(sincos_2d((side, side), self.width))
    else:
      pos = self.param('pos_embed', init, (self.num_patches, self.width))
    pos = jnp.broadcast_to(pos, (b,) + pos.shape)
    if unpositioned is not None:
      if not self.no_position_token:
        raise ValueError('unpositioned patches need ViT(no_position_token=True)')
      nowhere = self.param('no_position', init, (self.width,))
      pos = jnp.where(unpositioned[..., None], nowhere, pos)
    x = x + pos.astype(x.dtype)
    if keep is not None:
      x = gather(x, keep)
    if self.prefix:
      tokens = jnp.stack([self.param(f'{name}_token', init, (self.width,))
                          for name in self.prefix])
      x = jnp.concatenate([jnp.broadcast_to(tokens.astype(x.dtype), (b,) + tokens.shape), x],
                          axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return Encoder(self.depth, self.heads, self.mlp_ratio, self.dropout, self.remat,
                   self.dtype, kernel_init=self.kernel_init, drop_path=self.drop_path,
                   attention=self.attention, name='encoder')(x, train=train)


def layer_of(path: tuple[str, ...], depth: int, root: str = 'vit') -> int:
  """The layer of a parameter of a network holding a `ViT` as `root`, for
  layer-wise lr decay: 0 the embeddings (patch, position, prefix and other
  tokens), k encoder block k, depth + 1 the final norm and anything outside
  the ViT (heads)."""
  if path[0] != root:
    return depth + 1
  if path[1] == 'encoder':
    return int(path[2][len('block'):]) if path[2].startswith('block') else depth + 1
  return 0
