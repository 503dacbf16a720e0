"""ResNet stacks for patch encoders.

PatchFormer's "ResNet-41" (Figure 1) is "a customized version of the first 3
stacks of ResNet-50". Our reading (Figure 2 is lost in the text we have):

* stem: one 3x3 convolution at stride 1 and no max-pool, because a 16x16
  patch is too small for ResNet-50's 7x7/2 convolution and 3x3/2 pool;
* stacks 1-3 of ResNet-50: 3, 4 and 6 bottleneck blocks of widths 64, 128,
  256 (x4 expansion: 256, 512, 1024 output channels), strides 1, 2, 2;
* global average pooling, then a linear projection to the transformer width.

That is 1 + 3 * 13 + 1 = 41 weight layers. Normalisation (`norm`):
'layer' is LayerNorm over channels instead of BatchNorm, as CPC v2 (Henaff
et al., 2019) does for its patch encoder: batch statistics across patches of
one image let a model cheat on a patch-prediction task. 'none' keeps each
norm's learned scale and bias but normalises nothing, so a patch keeps its
contrast: LayerNorm divides every position's features by their spread, and
in a flat region of a small patch (most of a background) that spread is
small, so it is amplified to the size of an edge's. The last scale of each
residual branch is zero-initialised either way (each block starts as the
identity).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


NORMS = ('layer', 'none')


class Affine(nn.Module):
  """A per-channel scale and bias without normalisation (norm='none'),
  with LayerNorm's parameter names and initialisers."""
  scale_init: Any = nn.initializers.ones
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', self.scale_init, (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    return x * scale.astype(self.dtype) + bias.astype(self.dtype)


def make_norm(kind: str, dtype: Dtype, name: str | None = None, **kw) -> nn.Module:
  """The normalisation `kind` ('layer' or 'none', see the module docstring)."""
  if kind == 'layer':
    return nn.LayerNorm(dtype=dtype, name=name, **kw)
  if kind == 'none':
    return Affine(dtype=dtype, name=name, **kw)
  raise ValueError(f'norm={kind!r}: allowed {NORMS}')


class Bottleneck(nn.Module):
  """ResNet v1 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), residual."""
  width: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  norm_kind: str = 'layer'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # 1x1 convolutions are per-pixel matrix products: written as Dense, which
    # XLA:CPU runs 1.4-2x faster than its convolution kernels (same FLOPs;
    # on TPU both lower to the same MXU matmul).
    dense = lambda f, name=None: nn.Dense(f, use_bias=False, dtype=self.dtype, name=name)
    norm = lambda name=None, **kw: make_norm(self.norm_kind, self.dtype, name, **kw)
    y = nn.relu(norm()(dense(self.width)(x)))
    y = nn.Conv(self.width, (3, 3), (self.strides, self.strides), use_bias=False,
                dtype=self.dtype)(y)
    y = nn.relu(norm()(y))
    # Zero-initialised last scale: each block starts as the identity.
    y = norm(scale_init=nn.initializers.zeros)(dense(self.width * 4)(y))
    if x.shape[-1] != self.width * 4 or self.strides != 1:
      shortcut = x[:, ::self.strides, ::self.strides]  # a strided 1x1 conv
      x = norm(name='proj_norm')(dense(self.width * 4, 'proj')(shortcut))
    return nn.relu(x + y)


class ResNetStacks(nn.Module):
  """A 3x3 stem and the bottleneck stacks of ResNet-50, globally pooled.

  Input: images [..., H, W, C] with any leading dims. Returns (output,
  intermediates): output [..., features], the last stack's map averaged over
  positions; intermediates {'stage_k': [..., h_k, w_k, c_k]}, stack k's
  unpooled output (ssl_jax.nn.pooling.spatial_mean pools one).
  """
  stage_sizes: Sequence[int] = (3, 4, 6)
  width: int = 64
  stem_width: int = 64
  strides: Sequence[int] = (1, 2, 2)
  dtype: Dtype = jnp.float32
  norm: str = 'layer'

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:]).astype(self.dtype)
    x = nn.Conv(self.stem_width, (3, 3), use_bias=False, dtype=self.dtype,
                name='stem')(x)
    x = nn.relu(make_norm(self.norm, self.dtype, 'stem_norm')(x))
    stages = {}
    for i, (blocks, stride) in enumerate(zip(self.stage_sizes, self.strides)):
      for j in range(blocks):
        x = Bottleneck(self.width * 2**i, stride if j == 0 else 1, dtype=self.dtype,
                       norm_kind=self.norm, name=f'stack{i + 1}_block{j + 1}')(x)
      stages[f'stage_{i + 1}'] = x.reshape(lead + x.shape[1:])
    x = jnp.mean(x, axis=(1, 2))
    return x.reshape(lead + x.shape[-1:]), stages
