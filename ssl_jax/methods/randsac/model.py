"""RandSAC's networks (section 4 and A.3): a ViT encoder that reads the
serialised tokens under a segment-causal mask, and one of three predictors.

* 'masked': the masked transformer of Figure 4. The encoder reads every
  segment but the last under the source mask; the decoder reads fixed
  position encodings of the targets (every segment but the first), its
  self-attention masked the same way and its cross-attention limited to the
  encoder positions of strictly earlier segments (the memory mask). Every
  decoder layer attends to the encoder's last layer (after its final norm).
* 'masked_skip': the same, with trainable skip connections (4.2, A.3):
  decoder layer l attends to its own memory sum_k W[l, k] h_k over the
  encoder's layer outputs h_1..h_L, then a LayerNorm. W [L_dec, L_enc]
  starts as the last layer only (one-hot), i.e. as 'masked'.
* 'two_stream': XLNet's two-stream attention with shared weights (A.3): a
  content stream over the tokens under the source mask and a query stream,
  started from the targets' position encodings, whose attention reads the
  content stream under the memory mask. No separate decoder.

Position encodings are fixed 2D sine-cosine (MAE's), added to the linearly
projected patches. No class token: representations are averages over tokens.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.attention import attention_fn
from ssl_jax.nn.posembed import sincos_2d
from ssl_jax.nn.transformer import DropPath, MlpBlock

Dtype = Any
ARCHITECTURES = ('masked', 'masked_skip', 'two_stream')


def _attention(heads: int, dtype: Dtype, name: str,
               implementation: str = 'xla') -> nn.MultiHeadDotProductAttention:
  return nn.MultiHeadDotProductAttention(num_heads=heads, dtype=dtype, name=name,
                                         attention_fn=attention_fn(implementation))


class Block(nn.Module):
  """A pre-LayerNorm ViT block. With a query stream `g`, the same weights
  also update g, whose attention reads the content stream (two-stream)."""
  heads: int
  mlp_ratio: int = 4
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'xla'

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array | None, g: jax.Array | None = None,
               query_mask: jax.Array | None = None, train: bool = False):
    norm1 = nn.LayerNorm(dtype=self.dtype, name='norm1')
    norm2 = nn.LayerNorm(dtype=self.dtype, name='norm2')
    attention = _attention(self.heads, self.dtype, 'attention', self.attention)
    mlp = MlpBlock(self.mlp_ratio, 0.0, self.dtype, name='mlp')
    drop = DropPath(self.drop_path)

    def mlp_residual(x):
      return x + drop(mlp(norm2(x), train=train), train=train)

    hn = norm1(h)
    new_h = mlp_residual(h + drop(attention(hn, hn, mask=mask), train=train))
    if g is None:
      return new_h, None
    new_g = mlp_residual(g + drop(attention(norm1(g), hn, mask=query_mask), train=train))
    return new_h, new_g


class DecoderBlock(nn.Module):
  """Self-attention over the targets, cross-attention to a memory, MLP."""
  heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  attention: str = 'xla'

  @nn.compact
  def __call__(self, x, memory, self_mask, memory_mask):
    y = nn.LayerNorm(dtype=self.dtype, name='norm1')(x)
    x = x + _attention(self.heads, self.dtype, 'self_attention', self.attention)(
        y, y, mask=self_mask)
    y = nn.LayerNorm(dtype=self.dtype, name='norm2')(x)
    x = x + _attention(self.heads, self.dtype, 'cross_attention', self.attention)(
        y, memory, mask=memory_mask)
    y = nn.LayerNorm(dtype=self.dtype, name='norm3')(x)
    return x + MlpBlock(self.mlp_ratio, 0.0, self.dtype, name='mlp')(y, train=False)


class SkipMemory(nn.Module):
  """Trainable skip connections (A.3): memory_l = sum_k W[l, k] h_k, then a
  LayerNorm per decoder layer. W starts as "the last encoder layer only"."""
  decoder_layers: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, layers: list[jax.Array]) -> list[jax.Array]:
    n = len(layers)
    init = lambda _, shape, dtype: jnp.zeros(shape, dtype).at[:, -1].set(1.0)  # noqa: E731
    w = self.param('weights', init, (self.decoder_layers, n), jnp.float32)
    stacked = jnp.stack(layers)  # [L_enc, b, m, d]
    mixed = jnp.einsum('le,ebmd->lbmd', w.astype(stacked.dtype), stacked)
    return [nn.LayerNorm(dtype=self.dtype, name=f'norm{l + 1}')(mixed[l])
            for l in range(self.decoder_layers)]


class RandSACNet(nn.Module):
  """Encoder + predictor. `encode` gives the features; `__call__` predicts
  the pixels of every target token."""
  grid: tuple[int, int]
  patch_dim: int
  architecture: str = 'masked_skip'
  width: int = 192
  num_layers: int = 12
  heads: int = 3
  mlp_ratio: int = 4
  decoder_layers: int = 4
  decoder_heads: int = 3
  drop_path: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  attention: str = 'xla'

  @property
  def encoder_layers(self) -> int:
    """Two-stream has no decoder: it gets the decoder's layers too, so that
    its parameter count matches the others' (Table 10: 7M vs 5M + 2M)."""
    if self.architecture == 'two_stream':
      return self.num_layers + self.decoder_layers
    return self.num_layers

  def setup(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f'architecture must be one of {ARCHITECTURES}, '
                       f'got {self.architecture!r}')
    self.pos = jnp.asarray(sincos_2d(self.grid, self.width))
    self.embed = nn.Dense(self.width, dtype=self.dtype, name='patch_embed')
    # train is positional argument 5 (counting self): static under remat.
    block = nn.remat(Block, static_argnums=(5,)) if self.remat else Block
    n = self.encoder_layers
    self.blocks = [block(self.heads, self.mlp_ratio, self.drop_path * i / max(n - 1, 1),
                         self.dtype, self.attention, name=f'block{i + 1}') for i in range(n)]
    self.final_norm = nn.LayerNorm(dtype=self.dtype, name='final_norm')
    if self.architecture != 'two_stream':
      self.decoder = [DecoderBlock(self.decoder_heads, self.mlp_ratio, self.dtype,
                                   self.attention, name=f'decoder{i + 1}') for i in range(self.decoder_layers)]
      self.decoder_norm = nn.LayerNorm(dtype=self.dtype, name='decoder_norm')
    if self.architecture == 'masked_skip':
      self.skip = SkipMemory(self.decoder_layers, self.dtype, name='skip')
    self.head = nn.Dense(self.patch_dim, dtype=self.dtype, name='pixels')

  def _tokens(self, patches: jax.Array, idx: jax.Array) -> jax.Array:
    """Embedded patches [b, m, patch_dim] at grid positions idx [b, m]."""
    return self.embed(patches.astype(self.dtype)) + self.pos[idx].astype(self.dtype)

  def encode(self, patches: jax.Array, idx: jax.Array, mask: jax.Array | None = None, *,
             train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(final-normed output [b, m, d], {'layer_k': block k's output})."""
    h = self._tokens(patches, idx)
    layers = {}
    for i, block in enumerate(self.blocks):
      h, _ = block(h, mask, None, None, train)
      layers[f'layer_{i + 1}'] = h
    return self.final_norm(h), layers

  def __call__(self, patches: jax.Array, source_idx: jax.Array, target_idx: jax.Array,
               masks: tuple[jax.Array, jax.Array, jax.Array], *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(pixels [b, t, patch_dim] predicted at target_idx [b, t], features):
    from the patches at source_idx [b, m] (patches [b, m, patch_dim],
    serialised). Intermediates, per source token [b, m, d]: 'encoder', the
    encoder's (content stream's) final-normed output, and 'layer_k', block
    k's output."""
    source_mask, target_mask, memory_mask = masks
    queries = jnp.broadcast_to(self.pos[target_idx], target_idx.shape + (self.width,)
                               ).astype(self.dtype)
    if self.architecture == 'two_stream':
      h, g = self._tokens(patches, source_idx), queries
      layers = {}
      for i, block in enumerate(self.blocks):
        h, g = block(h, source_mask, g, memory_mask, train)
        layers[f'layer_{i + 1}'] = h
      return (self.head(self.final_norm(g)).astype(jnp.float32),
              {'encoder': self.final_norm(h), **layers})
    out, layers = self.encode(patches, source_idx, source_mask, train=train)
    if self.architecture == 'masked_skip':
      memories = self.skip([layers[f'layer_{i + 1}'] for i in range(self.num_layers)])
    else:
      memories = [out] * self.decoder_layers
    x = queries
    for block, memory in zip(self.decoder, memories):
      x = block(x, memory, target_mask, memory_mask)
    return self.head(self.decoder_norm(x)).astype(jnp.float32), {'encoder': out, **layers}
