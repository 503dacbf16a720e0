"""Heads on top of a backbone: attention pooling and the classifier head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class AttentionPool(nn.Module):
  """Pools a set of context vectors into one vector per query.

  PatchFormer 2.1: "attention-pooled context vectors" decode the missing
  patches; each query is the position embedding of the patch to decode and
  attends over the transformer's outputs for the visible patches. A
  residual MLP follows the attention, as in a transformer block.
  """
  heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, context: jax.Array) -> jax.Array:
    kv = nn.LayerNorm(dtype=self.dtype, name='context_norm')(context)
    q = nn.LayerNorm(dtype=self.dtype, name='query_norm')(queries)
    x = queries + nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, name='attention')(q, kv)
    y = nn.LayerNorm(dtype=self.dtype, name='mlp_norm')(x)
    d = x.shape[-1]
    y = nn.Dense(d, dtype=self.dtype)(
        nn.gelu(nn.Dense(d * self.mlp_ratio, dtype=self.dtype)(y)))
    return x + y


class ResidualMlpBlock(nn.Module):
  """The ResNet bottleneck block applied to a vector (a 1x1 feature map).

  PatchFormer 2.2: "a residual layer operates on top of the attention pooled
  embedding ... the same as what we use for our convolutional encoder". On a
  1x1 map the 3x3 convolution reduces to its centre tap, so the block is
  dense(D/4) -> norm -> ReLU -> dense(D/4) -> norm -> ReLU -> dense(D) ->
  norm (zero-initialised scale, so it starts as the identity), plus x.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    inner = max(d // 4, 1)
    y = nn.relu(nn.LayerNorm(dtype=self.dtype)(nn.Dense(inner, dtype=self.dtype)(x)))
    y = nn.relu(nn.LayerNorm(dtype=self.dtype)(nn.Dense(inner, dtype=self.dtype)(y)))
    y = nn.LayerNorm(dtype=self.dtype, scale_init=nn.initializers.zeros)(
        nn.Dense(d, dtype=self.dtype)(y))
    return nn.relu(x + y)


class ClassifierHead(nn.Module):
  """Features [B, D] -> logits [B, classes]: optional whitening, optional
  residual block, dropout ("dropout noise at the end", PatchFormer 2.2), then
  a linear classifier, zero-initialised (zero_init) or LeCun normal.

  whiten=True: the features are first mapped to (x - feature_mean) @
  whitening, two parameters that start as the identity map and are meant to
  be set once from the starting backbone's feature statistics
  (ssl_jax.tasks.whitening) and then kept frozen, also while a fine-tune
  trains the backbone. An invertible linear map followed by a linear
  classifier is still a linear classifier of x: whitening only preconditions
  the optimisation.
  """
  classes: int
  residual: bool = False
  dropout: float = 0.0
  whiten: bool = False
  zero_init: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.whiten:
      d = x.shape[-1]
      mean = self.param('feature_mean', nn.initializers.zeros, (d,), jnp.float32)
      whitening = self.param('whitening', lambda _, s: jnp.eye(*s), (d, d))
      x = (x.astype(jnp.float32) - mean) @ whitening
    if self.residual:
      x = ResidualMlpBlock(self.dtype, name='residual')(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    kernel_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    logits = nn.Dense(self.classes, dtype=self.dtype, kernel_init=kernel_init,
                      name='classifier')(x)
    return logits.astype(jnp.float32)
