"""Transformer blocks (pre-LayerNorm ViT / BERT blocks) and stochastic depth."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.attention import attention_fn

Dtype = Any


def _init(kernel_init) -> dict:
  """Dense / attention keyword arguments: flax's default initialiser unless
  one is given (DV2's small-normal linear weights)."""
  return {} if kernel_init is None else {'kernel_init': kernel_init}


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, with a `ratio` x widening layer (BERT)."""
  ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    d = x.shape[-1]
    x = nn.gelu(nn.Dense(d * self.ratio, dtype=self.dtype, **_init(self.kernel_init))(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(d, dtype=self.dtype, **_init(self.kernel_init))(x)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm self-attention + MLP block; `drop_path`: stochastic depth
  on both residual branches (0: none, and no random draw)."""
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernel_init: Any = None
  drop_path: float = 0.0
  attention: str = 'xla'  # ssl_jax.nn.attention.IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, dropout_rate=self.dropout,
        deterministic=not train, attention_fn=attention_fn(self.attention),
        **_init(self.kernel_init))(y, y, mask=mask)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = x + DropPath(self.drop_path)(y, train=train)
    y = MlpBlock(self.mlp_ratio, self.dropout, self.dtype, self.kernel_init)(
        nn.LayerNorm(dtype=self.dtype)(x), train=train)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return x + DropPath(self.drop_path)(y, train=train)


class Encoder(nn.Module):
  """A stack of encoder blocks with a final LayerNorm.

  Returns (output, intermediates) where intermediates maps 'layer_k' (k from
  1) to the output of block k, so that probes can pick any layer by name.
  """
  num_layers: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = None  # None: flax's default (lecun normal)
  drop_path: float = 0.0  # the last block's rate; block k of L: drop_path * (k-1) / (L-1)
  attention: str = 'xla'  # ssl_jax.nn.attention.IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    block_cls = nn.remat(EncoderBlock, static_argnums=(3,)) if self.remat else EncoderBlock
    layers = {}
    for i in range(self.num_layers):
      rate = self.drop_path * i / max(self.num_layers - 1, 1)  # DeiT / timm's linear rule
      x = block_cls(self.heads, self.mlp_ratio, self.dropout, self.dtype, self.kernel_init,
                    rate, self.attention, name=f'block{i + 1}')(x, mask, train)
      layers[f'layer_{i + 1}'] = x
    return nn.LayerNorm(dtype=self.dtype, name='final_norm')(x), layers


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch per example (rate = drop
  probability), rescaling the kept ones; uses the 'dropout' RNG stream."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)
