"""The PatchFormer network (PatchFormer, section 2.1 and Figure 1).

patch encoder (ResNet-41) -> transformer over the visible patches with
factorized position embeddings -> attention pooling of the context for each
queried position -> residual upsampling decoder (pretraining only).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.heads import AttentionPool
from ssl_jax.nn.posembed import FactorizedPosEmbed
from ssl_jax.nn.resnet import ResNetStacks
from ssl_jax.nn.transformer import Encoder

Dtype = Any


class PatchFormerNet(nn.Module):
  """Maps visible patches and query positions to pooled context vectors.

  __call__(patches [B, V, h, w, 3] in [-1, 1], visible_idx [B, V],
  query_idx [B, Q]) returns (logits, intermediates): logits [B, Q, t, t,
  levels] when decode=True (else None), and intermediates by name:
    'attention_pool': [B, Q, D], the attention-pooled context per query;
    'tokens':         [B, V, D], the transformer's output;
    'patch_embed':    [B, V, D], the patch encoder's output;
    'layer_k':        [B, V, D], the output of transformer block k.
  """
  grid: tuple[int, int]
  stage_sizes: Sequence[int] = (3, 4, 6)
  resnet_width: int = 64
  stem_width: int = 64
  resnet_norm: str = 'layer'
  width: int = 1024
  num_layers: int = 10
  heads: int = 16
  mlp_ratio: int = 4
  pool_heads: int = 16
  decoder_width: int = 256
  decoder_blocks: int = 1
  target_size: int = 8
  levels: int = 4
  remat: bool = False
  dtype: Dtype = jnp.float32
  attention: str = 'xla'

  @nn.compact
  def __call__(self, patches: jax.Array, visible_idx: jax.Array,
               query_idx: jax.Array, *, train: bool,
               decode: bool = True) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    feats, _ = ResNetStacks(self.stage_sizes, self.resnet_width, self.stem_width,
                            dtype=self.dtype, norm=self.resnet_norm,
                            name='patch_encoder')(patches)
    x = nn.Dense(self.width, dtype=self.dtype, name='patch_proj')(feats)
    out = {'patch_embed': x}
    x = x + FactorizedPosEmbed(self.grid, self.width, name='pos_embed')(visible_idx)
    x, layers = Encoder(self.num_layers, self.heads, self.mlp_ratio,
                        remat=self.remat, dtype=self.dtype, attention=self.attention,
                        name='transformer')(x, train=train)
    queries = FactorizedPosEmbed(self.grid, self.width, name='query_embed')(query_idx)
    pooled = AttentionPool(self.pool_heads, self.mlp_ratio, self.dtype,
                           name='attention_pool')(queries.astype(self.dtype), x)
    out.update(layers, tokens=x, attention_pool=pooled)
    logits = None
    if decode:
      logits = UpsamplingDecoder(
          self.target_size, self.levels, self.decoder_width, self.decoder_blocks,
          self.dtype, name='decoder')(pooled)
    return logits, out


class ResidualBlock(nn.Module):
  """norm -> ReLU -> 3x3 conv, twice, plus the identity (pre-activation)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    y = nn.Conv(c, (3, 3), dtype=self.dtype)(nn.relu(nn.LayerNorm(dtype=self.dtype)(x)))
    y = nn.Conv(c, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(
        nn.relu(nn.LayerNorm(dtype=self.dtype)(y)))
    return x + y


class UpsamplingDecoder(nn.Module):
  """Decodes a vector into [size, size, classes] logits.

  "A regular residual upsampling decoder" (PatchFormer 2.1): a linear map to
  a 2x2 feature map, then (nearest x2 upsampling + residual blocks) until
  `size`, then a 1x1 convolution to per-pixel logits.
  """
  size: int
  classes: int
  width: int = 256
  blocks_per_scale: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lead = x.shape[:-1]
    x = nn.Dense(2 * 2 * self.width, dtype=self.dtype, name='to_map')(
        x.reshape(-1, x.shape[-1]))
    x = x.reshape(-1, 2, 2, self.width)
    res = 2
    while True:
      for _ in range(self.blocks_per_scale):
        x = ResidualBlock(self.dtype)(x)
      if res == self.size:
        break
      x = jax.image.resize(x, (x.shape[0], 2 * res, 2 * res, self.width), 'nearest')
      res *= 2
    x = nn.relu(nn.LayerNorm(dtype=self.dtype)(x))
    x = nn.Conv(self.classes, (1, 1), dtype=self.dtype, name='logits')(x)
    return x.reshape(lead + x.shape[1:])
