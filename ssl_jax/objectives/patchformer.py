"""PatchFormer: decode low-bit grayscale versions of masked patches.

Section 2.1 and Figure 1 of the PatchFormer paper. Per example, on the device:
block masks on a coarse grid (masking.block_mask); random crops of the visible
patches for spatial jitter and per-patch augmentations (ssl_jax.augment); the
network (models.patchformer) pools context for every masked position and
decodes logits for a 2-bit grayscale, subsampled version of the missing patch,
trained with a softmax cross-entropy with soft-label noise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax import augment, masking
from ssl_jax.models.patchformer import PatchFormerNet


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p) * (W/p), p, p, C], row-major, stride = p."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch, patch, c)


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


def soft_label_cross_entropy(logits: jax.Array, labels: jax.Array,
                             noise: float) -> jax.Array:
  """Per-element softmax cross-entropy against (1 - noise) * one_hot + noise / K."""
  k = logits.shape[-1]
  soft = optax.smooth_labels(jax.nn.one_hot(labels, k), noise)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), soft)


class PatchFormer:
  """The objective: init / loss / represent, pure functions of params and keys."""

  name = 'patchformer'
  self_supervised = True
  # Keys that fix the parameters' shapes and meaning: a checkpoint can
  # initialise a probe or fine-tune only if these match (see ssl_jax.tasks).
  architecture_keys = ('patchformer.model', 'patchformer.patch_size',
                       'patchformer.jitter_crop', 'data.image_size')

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
        resnet_width=m.resnet_width, stem_width=m.stem_width, width=m.width,
        num_layers=m.num_layers, heads=m.heads, mlp_ratio=m.mlp_ratio,
        pool_heads=m.pool_heads, decoder_width=m.decoder_width,
        decoder_blocks=m.decoder_blocks, target_size=self.target.size,
        levels=2 ** self.target.bits, remat=m.remat, dtype=dtype)

  # -- pieces -----------------------------------------------------------------

  def _crops(self, rng, patches, train):
    """Spatial jitter: a random window of each patch (train) or its centre."""
    if train:
      return augment.random_crops(rng, patches, self.jitter_crop)
    return augment.centre_crops(patches, self.jitter_crop)

  def _inputs(self, rng, patches, visible_idx, train):
    """Visible patches -> jittered, augmented network inputs in [-1, 1]."""
    k_crop, k_aug = jax.random.split(rng)
    visible = self._crops(k_crop, masking.gather_patches(patches, visible_idx), train)
    if not train:
      return augment.to_signed(visible)
    return augment.augment_patches(k_aug, visible, self.aug)

  def _split(self, rng, batch_size):
    mask = masking.block_mask(rng, batch_size, self.grid, self.block, self.ratio)
    return masking.mask_indices(mask, self.n_masked)

  # -- the objective interface ------------------------------------------------

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
           train: bool = True) -> tuple[jax.Array, tuple[dict, dict]]:
    """(loss, (metrics, features)): `features` are the representations of
    this (masked, augmented) training view, by name, for the online probe."""
    k_mask, k_inputs, k_dropout = jax.random.split(rng, 3)
    patches = patchify(batch['image'], self.patch)
    idx = self._split(k_mask, patches.shape[0])
    inputs = self._inputs(k_inputs, patches, idx.visible, train)
    out = self.net.apply({'params': params}, inputs, idx.visible, idx.masked,
                         train=train, rngs={'dropout': k_dropout})
    t = self.target
    targets = patch_targets(masking.gather_patches(patches, idx.masked),
                            t.crop, t.size, t.bits)
    xent = soft_label_cross_entropy(out['logits'], targets, t.label_noise)
    valid = batch.get('valid')
    weights = (jnp.ones(xent.shape[:1]) if valid is None
               else valid.astype(jnp.float32))
    per_example = xent.mean(axis=(1, 2, 3))
    denom = jnp.maximum(weights.sum(), 1.0)
    loss = (per_example * weights).sum() / denom
    correct = (jnp.argmax(out['logits'], -1) == targets).mean(axis=(1, 2, 3))
    metrics = {'pixel_accuracy': (correct * weights).sum() / denom}
    return loss, (metrics, self._pool(out))

  def representations(self) -> tuple[str, ...]:
    """The names `represent` returns."""
    return ('attention_pool', 'tokens', 'patch_embed') + tuple(
        f'layer_{k + 1}' for k in range(self.net.num_layers))

  @staticmethod
  def _pool(out: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v.mean(axis=1).astype(jnp.float32) for k, v in out.items() if k != 'logits'}

  def represent(self, params: Any, batch: dict[str, jax.Array], *,
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
      mask = masking.random_mask(k_mask, b, self.n_patches, mask_ratio)
      n_masked = masking.num_masked((1, self.n_patches), (1, 1), mask_ratio)
      visible = masking.mask_indices(mask, n_masked).visible
    else:
      visible = every
    inputs = augment.to_signed(
        self._crops(k_crop, masking.gather_patches(patches, visible), train))
    out = self.net.apply({'params': params}, inputs, visible, every, train=train,
                         decode=False, rngs={'dropout': k_dropout})
    return self._pool(out)
