"""PatchFormer: decode low-bit grayscale versions of masked patches.

Section 2.1 and Figure 1 of the PatchFormer paper. Per example, on the device:
block masks on a coarse grid (ssl_jax.nn.masks.block_mask); random crops of
the visible patches for spatial jitter and per-patch augmentations
(augment.py); the network (model.py) pools context for every masked position and
decodes logits for a 2-bit grayscale, subsampled version of the missing patch,
trained with a softmax cross-entropy with soft-label noise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config.checks import (ConfigError, boolean, is_int, is_number, positive_int,
                                   range_pair, require, unit_interval)
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.patchformer import augment
from ssl_jax.methods.patchformer.model import PatchFormerNet
from ssl_jax.nn import attention
from ssl_jax.nn import masks as masking
from ssl_jax.nn.losses import example_weights, soft_cross_entropy, weighted_mean
from ssl_jax.nn.patches import gather, patchify, to_signed
from ssl_jax.nn.pooling import pool
from ssl_jax.nn.resnet import NORMS


def patch_targets(patches: jax.Array, crop: int, size: int, bits: int) -> jax.Array:
  """Integer targets [..., size, size] in [0, 2**bits) for patches in [0, 1].

  "The ground truth for the missing patches comes from the 2-bit gray-scale
  centre crop of these patches": the centre `crop` x `crop` pixels, in
  grayscale, average-pooled to `size` x `size` (sub-sampled), then their most
  significant `bits` bits (floor(v * 2**bits)).
  """
  gray = augment.grayscale(augment.centre_crops(patches, crop))[..., 0]
  f = crop // size
  lead = gray.shape[:-2]
  gray = gray.reshape(lead + (size, f, size, f)).mean(axis=(-3, -1))
  levels = 2 ** bits
  return jnp.clip(jnp.floor(gray * levels), 0, levels - 1).astype(jnp.int32)


class PatchFormer(Method):
  """The method: init / loss / represent, pure functions of params and keys."""

  name = 'patchformer'
  self_supervised = True
  # Keys that fix the parameters' shapes and meaning: a checkpoint can
  # initialise a probe or fine-tune only if these match (see ssl_jax.tasks).
  architecture_keys = ('patchformer.model', 'patchformer.patch_size',
                       'patchformer.jitter_crop', 'data.image_size')
  # Checkpoints written before resnet_norm existed used LayerNorm.
  added_keys = {'patchformer.model.resnet_norm': 'layer', 'patchformer.model.attention': 'xla'}
  # Section 2.2: 10% of the patches masked while fine-tuning.
  finetune_masking = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    pf = config.patchformer
    self.patch = pf.patch_size
    size = config.data.image_size
    self.grid = (size // self.patch, size // self.patch)
    self.block = (pf.mask_block, pf.mask_block)
    self.ratio = pf.mask_ratio
    self.n_masked = masking.num_masked(self.grid, self.block, self.ratio)
    self.n_patches = self.grid[0] * self.grid[1]
    self.jitter_crop = pf.jitter_crop
    self.target = pf.target
    a = pf.augment
    self.aug = augment.PatchAugment(
        a.brightness, tuple(a.saturation), a.hue, tuple(a.contrast),
        a.flip_prob, a.min_bits, a.max_bits, a.gray_prob)
    m = pf.model
    self.net = PatchFormerNet(
        grid=self.grid, stage_sizes=tuple(m.stage_sizes),
        resnet_width=m.resnet_width, stem_width=m.stem_width,
        resnet_norm=m.resnet_norm,
        width=m.width,
        num_layers=m.num_layers, heads=m.heads, mlp_ratio=m.mlp_ratio,
        pool_heads=m.pool_heads, decoder_width=m.decoder_width,
        decoder_blocks=m.decoder_blocks, target_size=self.target.size,
        levels=2 ** self.target.bits, remat=m.remat, dtype=dtype, attention=m.attention)

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """PatchFormer's keys: patches, masks, augmentations, targets, model."""
    p = 'patchformer.'
    size = config.data.image_size
    patch = require(config, p + 'patch_size',
                    lambda v: is_int(v) and v > 0 and size % v == 0,
                    f'a positive integer that divides data.image_size={size}')
    grid = size // patch
    if grid * grid < 2:
      raise ConfigError(f'config.{p}patch_size={patch} leaves one patch in a {size}x{size} '
                        'image: need at least 2 patches to mask')
    unit_interval(config, p + 'mask_ratio', open_=True)
    require(config, p + 'mask_block',
            lambda v: is_int(v) and v > 0 and grid % v == 0 and (grid // v) ** 2 >= 2,
            f'a positive integer that divides the {grid}x{grid} patch grid '
            'and leaves at least 2 blocks')
    require(config, p + 'jitter_crop', lambda v: is_int(v) and 0 < v <= patch,
            f'an integer in [1, patch_size={patch}]')
    a = p + 'augment.'
    require(config, a + 'brightness', lambda v: is_number(v) and 0 <= v <= 1,
            'a number in [0, 1]')
    require(config, a + 'hue', lambda v: is_number(v) and 0 <= v <= 0.5,
            'a number in [0, 0.5] (fraction of a full turn)')
    range_pair(config, a + 'saturation')
    range_pair(config, a + 'contrast')
    unit_interval(config, a + 'flip_prob', open_=False)
    unit_interval(config, a + 'gray_prob', open_=False)
    lo = require(config, a + 'min_bits', lambda v: is_int(v) and 1 <= v <= 8,
                 'an integer in [1, 8]')
    require(config, a + 'max_bits', lambda v: is_int(v) and lo <= v <= 8,
            f'an integer in [min_bits={lo}, 8]')
    t = p + 'target.'
    crop = require(config, t + 'crop', lambda v: is_int(v) and 0 < v <= patch,
                   f'an integer in [1, patch_size={patch}]')
    require(config, t + 'size',
            lambda v: is_int(v) and v >= 2 and v & (v - 1) == 0 and crop % v == 0,
            f'a power of two >= 2 that divides target.crop={crop}')
    require(config, t + 'bits', lambda v: is_int(v) and 1 <= v <= 8, 'an integer in [1, 8]')
    require(config, t + 'label_noise', lambda v: is_number(v) and 0 <= v < 1,
            'a number in [0, 1)')
    m = p + 'model.'
    require(config, m + 'stage_sizes',
            lambda v: len(v) >= 1 and all(is_int(s) and s > 0 for s in v),
            'a non-empty tuple of positive integers')
    for k in ('resnet_width', 'stem_width', 'num_layers', 'mlp_ratio', 'decoder_width',
              'decoder_blocks'):
      positive_int(config, m + k)
    width = positive_int(config, m + 'width')
    for k in ('heads', 'pool_heads'):
      require(config, m + k, lambda v: is_int(v) and v > 0 and width % v == 0,
              f'a positive integer that divides model.width={width}')
    boolean(config, m + 'remat')
    attention.validate(config, m + 'attention')
    require(config, m + 'resnet_norm', lambda v: v in NORMS, f'one of {NORMS}')

  # -- pieces -----------------------------------------------------------------

  def _crops(self, rng, patches, train):
    """Spatial jitter: a random window of each patch (train) or its centre."""
    if train:
      return augment.random_crops(rng, patches, self.jitter_crop)
    return augment.centre_crops(patches, self.jitter_crop)

  def _inputs(self, rng, patches, visible_idx, train):
    """Visible patches -> jittered, augmented network inputs in [-1, 1]."""
    k_crop, k_aug = jax.random.split(rng)
    visible = self._crops(k_crop, gather(patches, visible_idx), train)
    if not train:
      return to_signed(visible)
    return augment.augment_patches(k_aug, visible, self.aug)

  def _split(self, rng, batch_size):
    mask = masking.block_mask(rng, batch_size, self.grid, self.block, self.ratio)
    return masking.mask_indices(mask, self.n_masked)

  # -- the method interface ---------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *,
           decoder: bool = True) -> Any:
    """Parameters; decoder=False: only those `represent` uses (section 2.2:
    "we remove the decoder" for fine-tuning)."""
    patches = patchify(batch['image'], self.patch)
    idx = self._split(rng, patches.shape[0])
    inputs = self._inputs(rng, patches, idx.visible, train=False)
    return self.net.init(rng, inputs, idx.visible, idx.masked, train=False,
                         decode=decoder)['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    """(loss, LossAux): its `features` are the representations of this
    (masked, augmented) training view, by name, for the online probe."""
    k_mask, k_inputs, k_dropout = jax.random.split(rng, 3)
    patches = patchify(batch['image'], self.patch)
    idx = self._split(k_mask, patches.shape[0])
    inputs = self._inputs(k_inputs, patches, idx.visible, train)
    logits, intermediates = self.net.apply(
        {'params': params}, inputs, idx.visible, idx.masked, train=train,
        rngs={'dropout': k_dropout})
    t = self.target
    targets = patch_targets(gather(patches, idx.masked), t.crop, t.size, t.bits)
    xent = soft_cross_entropy(logits, targets, t.label_noise)
    weights = example_weights(batch, xent.shape[0])
    loss = weighted_mean(xent.mean(axis=(1, 2, 3)), weights)
    correct = (jnp.argmax(logits, -1) == targets).mean(axis=(1, 2, 3))
    metrics = {'pixel_accuracy': weighted_mean(correct, weights)}
    return loss, LossAux(metrics, pool(intermediates), state)

  def representations(self) -> tuple[str, ...]:
    """The names `represent` returns."""
    return ('attention_pool', 'tokens', 'patch_embed') + tuple(
        f'layer_{k + 1}' for k in range(self.net.num_layers))

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """Features [batch, width] by name (see `representations`).

    'attention_pool': the attention-pooled embedding (section 2.2): the
    context pooled for every grid position, averaged; 'tokens' and
    'layer_k': the transformer's output / block k, averaged over the visible
    patches; 'patch_embed': the patch encoder's embeddings, averaged.

    Evaluation (train=False, mask_ratio=0): every patch, centre crops.
    Fine-tuning (section 2.2): `mask_ratio` of the patches (drawn at random
    from `rng`, unblocked) are hidden from the encoder "to ensure there is no
    mismatch between training and fine-tuning", and with train=True visible
    patches get the random jitter crops and dropout is on.
    """
    patches = patchify(batch['image'], self.patch)
    b = patches.shape[0]
    k_mask, k_crop, k_dropout = jax.random.split(
        jax.random.key(0) if rng is None else rng, 3)
    every = jnp.broadcast_to(jnp.arange(self.n_patches), (b, self.n_patches))
    if mask_ratio > 0:
      n_masked = masking.num_masked_blocks(self.n_patches, mask_ratio)
      visible = masking.random_split(k_mask, b, self.n_patches, n_masked).visible
    else:
      visible = every
    inputs = to_signed(self._crops(k_crop, gather(patches, visible), train))
    _, intermediates = self.net.apply({'params': params}, inputs, visible, every, train=train,
                                      decode=False, rngs={'dropout': k_dropout})
    return pool(intermediates)
