"""MAE's network: the ViT of ssl_jax.nn.vit as the encoder (a [CLS] token,
fixed 2D sine-cosine positions, Xavier-uniform kernels), run on the visible
patches only, and a light decoder.

The decoder (MAE 3, models_mae.py of the official code): the encoder's
output projected to `decoder_width`; a learned mask token (normal 0.02) at
every masked cell, the visible tokens back at their cells (the
"unshuffle"); fixed sine-cosine positions of the decoder's width added to
the grid (the [CLS] token gets none); `decoder_depth` pre-norm blocks with
a final LayerNorm; a linear layer to the p * p * 3 pixels of each patch.
Only the masked cells' predictions are returned (the loss reads no other).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.patches import gather
from ssl_jax.nn.posembed import sincos_2d
from ssl_jax.nn.transformer import Encoder
from ssl_jax.nn.vit import ViT

XAVIER = nn.initializers.xavier_uniform()


class MaskToken(nn.Module):
  """The decoder's learned mask token (normal 0.02); a submodule so that a
  network built for representations only (encode) has none."""
  width: int

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('token', nn.initializers.normal(0.02), (self.width,))


class MAENet(nn.Module):
  grid: tuple[int, int]
  patch_dim: int  # p * p * 3
  width: int
  depth: int
  heads: int
  mlp_ratio: int
  decoder_width: int
  decoder_depth: int
  decoder_heads: int
  drop_path: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32
  attention: str = 'xla'

  def setup(self):
    n = self.grid[0] * self.grid[1]
    self.vit = ViT(n, self.width, self.depth, self.heads, self.mlp_ratio, 0.0, self.drop_path,
                   prefix=('cls',), remat=self.remat, dtype=self.dtype, position='sincos',
                   kernel_init=XAVIER, attention=self.attention)
    self.decoder_embed = nn.Dense(self.decoder_width, dtype=self.dtype, kernel_init=XAVIER)
    self.mask_token = MaskToken(self.decoder_width)
    self.decoder = Encoder(self.decoder_depth, self.decoder_heads, self.mlp_ratio, 0.0,
                           self.remat, self.dtype, kernel_init=XAVIER,
                           attention=self.attention)
    self.predict = nn.Dense(self.patch_dim, dtype=self.dtype, kernel_init=XAVIER)

  def encode(self, patches: jax.Array, *, keep: jax.Array | None = None,
             train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """patches [b, N, p*p*3] in [-1, 1] -> ([CLS] + the kept patches' tokens
    [b, 1 + k, width] after the final norm, {'layer_k': block k's output});
    keep [b, k] (None: every patch)."""
    return self.vit(patches, keep=keep, train=train)

  def __call__(self, patches: jax.Array, visible: jax.Array, masked: jax.Array, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """(pixels predicted at the masked cells [b, m, p*p*3], the encoder's
    tokens [b, 1 + v, width]); visible [b, v] and masked [b, m] cells."""
    tokens, _ = self.encode(patches, keep=visible, train=train)
    x = self.decoder_embed(tokens)
    b = x.shape[0]
    n = self.grid[0] * self.grid[1]
    grid = jnp.broadcast_to(self.mask_token().astype(x.dtype), (b, n, self.decoder_width))
    grid = grid.at[jnp.arange(b)[:, None], visible].set(x[:, 1:])
    grid = grid + jnp.asarray(sincos_2d(self.grid, self.decoder_width), x.dtype)
    x, _ = self.decoder(jnp.concatenate([x[:, :1], grid], axis=1), train=train)
    return self.predict(gather(x[:, 1:], masked)), tokens
