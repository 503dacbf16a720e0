"""The pre-activation ResNet (v2) of Selfie and DV2, as a patch network and a
full-image network with the same weights, with optional self-attention
exchange layers between the patch network's stacks.

DV2 4.1: "We use ResNet-50v2 as the backbone network. We use all four
residual blocks when the whole image is used as the input and use the first
3 three residual blocks if patches are used as the input." Selfie (Trinh et
al. 2019) likewise runs the first three stacks on patches. Our reading:

* stem: one 3x3 convolution at stride 1, no max-pool (a patch of 8 or 16
  pixels is too small for ResNet-50's 7x7/2 convolution and 3x3/2 pool);
  the full image goes through the same stem, so a position of the image's
  res2 map covers as many pixels as one of a patch's;
* stacks res2 ... res5: pre-activation bottlenecks (norm -> ReLU -> 1x1,
  norm -> ReLU -> 3x3 (strided), norm -> ReLU -> dropout -> 1x1 (x4)),
  3, 4, 6, 3 of them for ResNet-50, widths 64 ... 512, strides 1, 2, 2, 2;
  a block that changes the shape projects its pre-activated input (He et
  al. 2016b). Dropout ("0.1 for all dropout layers in ResNet") sits before
  each block's last convolution, where Wide ResNets put it;
* each endpoint (res4 for patches, res5 for images) ends with norm -> ReLU
  (v2's final activation) and global average pooling.

Normalisation (`norm`): 'group' (GroupNorm, 4.1 cites its paper; default),
'layer' or 'none' (a learned scale and bias only). Every statistic is taken
within one patch (or one image): batch statistics across the patches of an
image would let a patch model read the patches it must predict, as CPC v2
noted for its patch encoder, so BatchNorm is not offered.

Initialisation (4.1): convolutions Kaiming normal (fan-in, gain sqrt(2), as
PyTorch's `kaiming_normal_`), biases 0; linear layers normal with standard
deviation `linear_std` (see configs/dv2.py for the reading of "1e-3
standard variance").

Exchange layers (DV2 3.4, Allp 3.2): after res2, res3 and res4 of the patch
network, each patch's feature map is averaged to a vector, projected to
`exchange_width`, given a learned position embedding of its grid cell, and
passed with the other patches of its image through `exchange_layers`
pre-LayerNorm transformer blocks; the result is projected back and added to
every position of the patch's map (the residual link "so that the model can
choose whether or not exchange information"). Only the patches passed in
exchange: a method hides the masked patches by leaving them out of the pass
(and computes their targets with exchange=False, alone), so nothing of
them reaches the context and nothing of the context reaches them. The
position embedding of each patch's grid cell is our addition: without it
the layers would see the patches as an unordered set.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.resnet import make_norm
from ssl_jax.nn.transformer import Encoder

Dtype = Any

NORMS = ('group', 'layer', 'none')
# PyTorch's kaiming_normal_ (fan_in, a=0): an untruncated normal of variance 2 / fan_in.
KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def linear_init(std: float):
  return nn.initializers.normal(stddev=std)


class Norm(nn.Module):
  """GroupNorm (groups = min(groups, channels), which must divide them),
  LayerNorm or a bare affine map, over one example's map [n, h, w, c]."""
  kind: str = 'group'
  groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.kind == 'group':
      return nn.GroupNorm(num_groups=min(self.groups, x.shape[-1]), dtype=self.dtype)(x)
    if self.kind not in NORMS:
      raise ValueError(f'norm={self.kind!r}: allowed {NORMS}')
    return make_norm(self.kind, self.dtype)(x)  # ssl_jax.nn.resnet's LayerNorm / Affine


class PreActBottleneck(nn.Module):
  """ResNet v2 bottleneck (see the module docstring)."""
  width: int
  strides: int = 1
  norm: str = 'group'
  groups: int = 32
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda: Norm(self.norm, self.groups, self.dtype)
    conv = lambda f, k, s=1, name=None: nn.Conv(
        f, (k, k), (s, s), use_bias=False, kernel_init=KAIMING_NORMAL, dtype=self.dtype,
        name=name)
    pre = nn.relu(norm()(x))
    shortcut = x
    if x.shape[-1] != self.width * 4 or self.strides != 1:
      shortcut = conv(self.width * 4, 1, self.strides, 'proj')(pre)
    y = conv(self.width, 1)(pre)
    y = conv(self.width, 3, self.strides)(nn.relu(norm()(y)))
    y = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(norm()(y)))
    return shortcut + conv(self.width * 4, 1)(y)


class Stack(nn.Module):
  """One stack (res2 ... res5) of `blocks` bottlenecks."""
  blocks: int
  width: int
  strides: int
  norm: str
  groups: int
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train):
    for j in range(self.blocks):
      x = PreActBottleneck(self.width, self.strides if j == 0 else 1, self.norm, self.groups,
                           self.dropout, self.dtype, name=f'block{j + 1}')(x, train=train)
    return x


class Exchange(nn.Module):
  """A self-attention exchange layer between the patches of one image (see
  the module docstring). maps [b, n, h, w, c] of n patches of one image
  each, positions [b, n] their grid cells (of `num_patches`)."""
  num_patches: int
  width: int
  layers: int
  heads: int
  dropout: float
  linear_std: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, maps: jax.Array, positions: jax.Array, *, train: bool) -> jax.Array:
    dense = lambda f, name: nn.Dense(f, kernel_init=linear_init(self.linear_std),
                                     dtype=self.dtype, name=name)
    x = dense(self.width, 'embed')(maps.mean(axis=(2, 3)))
    table = self.param('position', linear_init(self.linear_std), (self.num_patches, self.width))
    x = x + table[positions].astype(x.dtype)
    x, _ = Encoder(self.layers, self.heads, dropout=self.dropout,
                   kernel_init=linear_init(self.linear_std), dtype=self.dtype,
                   name='encoder')(x, train=train)
    delta = dense(maps.shape[-1], 'out')(x)
    return maps + delta[:, :, None, None, :].astype(maps.dtype)


class HybridResNet(nn.Module):
  """The stem and stacks of a pre-activation ResNet, shared by the patch
  network (`patches`) and the full-image network (`image`).

  exchange: 0 (none) or the number of exchange layers after each of the
  patch network's stacks (its width `exchange_width`); num_patches: the
  grid cells the exchange layers' position embeddings tell apart.
  """
  num_patches: int = 16
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stem_width: int = 64
  patch_stages: int = 3
  norm: str = 'group'
  groups: int = 32
  dropout: float = 0.1
  exchange: int = 0
  exchange_width: int = 512
  exchange_heads: int = 8
  linear_std: float = 1e-3
  dtype: Dtype = jnp.float32

  def setup(self):
    self.stem = nn.Conv(self.stem_width, (3, 3), use_bias=False, kernel_init=KAIMING_NORMAL,
                        dtype=self.dtype)
    strides = (1,) + (2,) * (len(self.stage_sizes) - 1)
    self.stacks = [Stack(n, self.width * 2**i, s, self.norm, self.groups, self.dropout,
                         self.dtype, name=f'res{i + 2}')
                   for i, (n, s) in enumerate(zip(self.stage_sizes, strides))]
    # v2's final norm -> ReLU, one per endpoint (res4 for patches, res5 for images).
    self.final_norm_patch = Norm(self.norm, self.groups, self.dtype)
    self.final_norm_image = Norm(self.norm, self.groups, self.dtype)
    if self.exchange:
      self.exchanges = [Exchange(self.num_patches, self.exchange_width, self.exchange, self.exchange_heads,
                                 self.dropout, self.linear_std, self.dtype,
                                 name=f'exchange_res{i + 2}')
                        for i in range(self.patch_stages)]

  def _run(self, x, stages, final_norm, train, exchange=None):
    """x [n, H, W, 3] through the stem and the first `stages` stacks; after
    stack k, `exchange(k, x)` if given. (pooled output [n, c], {resK: map})."""
    x = self.stem(x.astype(self.dtype))
    maps = {}
    for i in range(stages):
      x = self.stacks[i](x, train=train)
      if exchange is not None:
        x = exchange(i, x)
      maps[f'res{i + 2}'] = x
    x = nn.relu(final_norm(x))
    return x.mean(axis=(1, 2)).astype(jnp.float32), maps

  def patches(self, patches: jax.Array, positions: jax.Array | None = None, *,
              exchange: bool = True, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """patches [b, n, p, p, 3] in [-1, 1], n patches of one image each at
    grid cells `positions` [b, n] (None: 0 ... n - 1) -> (representations
    [b, n, c], {'res2'...: maps [b, n, h, w, c_k]}). With exchange layers
    (and exchange=True) the n patches exchange information after every
    stack; patches left out of `patches` are invisible to them. With
    exchange=False, every patch is computed alone."""
    b, n = patches.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(n), (b, n)) if positions is None else positions

    def hook(i, x):
      maps = x.reshape((b, n) + x.shape[1:])
      return self.exchanges[i](maps, pos, train=train).reshape(x.shape)
    out, maps = self._run(patches.reshape((b * n,) + patches.shape[2:]), self.patch_stages,
                          self.final_norm_patch, train,
                          hook if self.exchange and exchange else None)
    return (out.reshape(b, n, -1),
            {k: v.reshape((b, n) + v.shape[1:]) for k, v in maps.items()})

  def image(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """images [b, H, W, 3] in [-1, 1] through every stack: (representation
    [b, c], {'res2'...'res5': maps [b, h, w, c_k]})."""
    return self._run(images, len(self.stage_sizes), self.final_norm_image, train)
