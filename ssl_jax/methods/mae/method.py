"""MAE as a method of this house (He et al. 2021; the defaults of its paper
and official code, configs/mae.py).

Per example, on the device, from the step's key: int(N (1 - mask_ratio))
of the N patches stay visible (75% masked by default), chosen uniformly
(ssl_jax.nn.masks.random_split, the same draw as MAE's argsort of uniform
noise). The encoder reads the visible patches only (with their position
embeddings) behind a [CLS] token; the decoder fills the masked cells with a
mask token and predicts their pixels. The loss: the squared error, averaged
over each masked patch's p * p * 3 values and then over the masked patches
of valid examples, against the patch's pixels normalised by their own mean
and standard deviation (`norm_pix_loss`, MAE's default for representations)
or the raw pixels in [-1, 1].

Representations (whole images, no masking, no decoder): 'cls' (the [CLS]
token's output: MAE's linear probe), 'tokens' (the patch tokens' outputs
averaged: MAE's global-pool fine-tune reads this average, before its own
LayerNorm, fc_norm, where this one reads the final norm's output),
'layer_k' (block k's patch tokens averaged, before the final norm).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import drawing
from ssl_jax.config.checks import boolean, is_int, is_number, require
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.mae.model import MAENet
from ssl_jax.nn import attention, masks
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn import vit
from ssl_jax.nn.patches import (denormalise_patches, gather, normalise_patches, patch_vectors,
                                unpatchify)

TRAINING_REPRESENTATIONS = ('cls', 'tokens')


def visible_count(num_patches: int, mask_ratio: float) -> int:
  """Patches left visible: int(N (1 - ratio)), as MAE's random_masking."""
  return int(num_patches * (1 - mask_ratio))


class MAE(Method):
  name = 'mae'
  added_keys = {'mae.model.attention': 'xla'}  # the kernel, not the network
  # The encoder's shapes only: a probe or fine-tune reads the encoder (no
  # decoder), whatever masking, loss or decoder trained it.
  architecture_keys = ('data.image_size', 'mae.patch_size', 'mae.model.width', 'mae.model.depth',
                       'mae.model.heads', 'mae.model.mlp_ratio')
  layer_decay = True
  draws_pictures = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    m = config.mae
    size = config.data.image_size
    self.patch = m.patch_size
    self.grid = (size // self.patch, size // self.patch)
    self.n = self.grid[0] * self.grid[1]
    self.num_visible = visible_count(self.n, m.get('mask_ratio', 0.75))
    self.norm_pix_loss = m.get('norm_pix_loss', True)
    md = m.model
    self.depth = md.depth
    self.net = MAENet(
        grid=self.grid, patch_dim=self.patch * self.patch * 3, width=md.width, depth=md.depth,
        heads=md.heads, mlp_ratio=md.mlp_ratio, decoder_width=md.get('decoder_width', 512),
        decoder_depth=md.get('decoder_depth', 8), decoder_heads=md.get('decoder_heads', 16),
        drop_path=md.drop_path, remat=md.get('remat', False), dtype=dtype,
        attention=md.attention)

  # -- configuration --------------------------------------------------------

  @classmethod
  def validate_backbone(cls, config: ml_collections.ConfigDict) -> None:
    """The encoder's keys (what a probe or fine-tune builds)."""
    size = config.data.image_size
    require(config, 'mae.patch_size',
            lambda v: is_int(v) and v > 0 and size % v == 0 and size // v >= 2,
            f'a positive integer dividing data.image_size={size} into a grid of at least 2 x 2')
    m = 'mae.model.'
    width = require(config, m + 'width', lambda v: is_int(v) and v > 0 and v % 4 == 0,
                    'a positive multiple of 4 (the sine-cosine positions split it in four)')
    require(config, m + 'heads', lambda v: is_int(v) and v > 0 and width % v == 0,
            f'a positive integer dividing model.width={width}')
    for key in ('depth', 'mlp_ratio'):
      require(config, m + key, lambda v: is_int(v) and v > 0, 'a positive integer')
    require(config, m + 'drop_path', lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
    boolean(config, m + 'remat')
    attention.validate(config, m + 'attention')

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """The encoder's keys, then the masking, the loss and the decoder."""
    cls.validate_backbone(config)
    n = (config.data.image_size // config.mae.patch_size) ** 2
    require(config, 'mae.mask_ratio',
            lambda v: is_number(v) and 0 < v < 1 and 1 <= visible_count(n, v) < n,
            f'a number in (0, 1) that leaves between 1 and {n - 1} of the {n} patches visible '
            '(int(N (1 - ratio)) stay visible)')
    boolean(config, 'mae.norm_pix_loss')
    m = 'mae.model.'
    width = require(config, m + 'decoder_width', lambda v: is_int(v) and v > 0 and v % 4 == 0,
                    'a positive multiple of 4 (the sine-cosine positions split it in four)')
    require(config, m + 'decoder_heads', lambda v: is_int(v) and v > 0 and width % v == 0,
            f'a positive integer dividing model.decoder_width={width}')
    require(config, m + 'decoder_depth', lambda v: is_int(v) and v > 0, 'a positive integer')
    require(config, 'online_probe.representation',
            lambda v: v in ('',) + TRAINING_REPRESENTATIONS,
            "'cls' or 'tokens' (what the training pass offers: the visible patches' encoding)")

  # -- the method interface ---------------------------------------------------

  def split(self, rng: jax.Array, batch_size: int) -> masks.MaskIndices:
    """Visible [b, v] and masked [b, N - v] cells, each sorted."""
    return masks.random_split(rng, batch_size, self.n, self.n - self.num_visible)

  def forward(self, params: Any, patches: jax.Array, cells: masks.MaskIndices, *,
              train: bool, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return self.net.apply({'params': params}, patches, cells.visible, cells.masked,
                          train=train, rngs={'dropout': jax.random.key(0) if rng is None else rng})

  def targets(self, patches: jax.Array) -> jax.Array:
    return normalise_patches(patches) if self.norm_pix_loss else patches

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *, decoder: bool = True) -> Any:
    patches = patch_vectors(batch['image'], self.patch)
    if not decoder:
      return self.net.init(rng, patches, train=False, method=MAENet.encode)['params']
    cells = self.split(rng, patches.shape[0])
    return self.net.init(rng, patches, cells.visible, cells.masked, train=False)['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    """(loss, LossAux): the normalised-pixel MSE over the masked patches of
    valid examples; the features are the visible patches' encoding ('cls',
    'tokens') for the online probe."""
    k_mask, k_dropout = jax.random.split(rng)
    patches = patch_vectors(batch['image'], self.patch)
    b = patches.shape[0]
    cells = self.split(k_mask, b)
    pred, tokens = self.forward(params, patches, cells, train=train, rng=k_dropout)
    target = gather(self.targets(patches), cells.masked)
    per_example = jnp.square(pred.astype(jnp.float32) - target).mean(axis=(1, 2))
    loss = weighted_mean(per_example, example_weights(batch, b))
    features = {'cls': tokens[:, 0], 'tokens': tokens[:, 1:].mean(1)}
    return loss, LossAux({}, {k: v.astype(jnp.float32) for k, v in features.items()}, state)

  def representations(self) -> tuple[str, ...]:
    return TRAINING_REPRESENTATIONS + tuple(f'layer_{k + 1}' for k in range(self.depth))

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """{'cls', 'tokens', 'layer_k'} of whole images (see the module
    docstring); train=True (fine-tune): drop path on."""
    if mask_ratio:
      raise ValueError('MAE fine-tunes on whole images: mask_ratio must be 0')
    patches = patch_vectors(batch['image'], self.patch)
    tokens, layers = self.net.apply(
        {'params': params}, patches, train=train, method=MAENet.encode,
        rngs={'dropout': jax.random.key(0) if rng is None else rng})
    out = {'cls': tokens[:, 0], 'tokens': tokens[:, 1:].mean(1)}
    out.update({name: x[:, 1:].mean(1) for name, x in layers.items()})
    return {name: x.astype(jnp.float32) for name, x in out.items()}

  @property
  def num_blocks(self) -> int:
    return self.depth

  def layer_of(self, path: tuple[str, ...]) -> int:
    """0: the patch embedding and the [CLS] token; k: encoder block k;
    depth + 1: the final norm (and anything outside the encoder)."""
    return vit.layer_of(path, self.depth)

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array, *,
               state: Any = None) -> jax.Array:
    """uint8 [b, H', W', 3] panels: the image | what the encoder sees (masked
    cells grey) | the reconstruction (masked cells predicted, de-normalised
    with the true patch's mean and spread under norm_pix_loss; visible cells
    the image's), as MAE's figures."""
    patches = patch_vectors(images, self.patch)
    b = patches.shape[0]
    cells = self.split(rng, b)
    pred, _ = self.forward(params, patches, cells, train=False)
    if self.norm_pix_loss:
      pred = denormalise_patches(pred, gather(patches, cells.masked))
    rows = jnp.arange(b)[:, None]
    grey = patches.at[rows, cells.masked].set(0.0)
    recon = patches.at[rows, cells.masked].set(jnp.clip(pred.astype(patches.dtype), -1, 1))
    show = lambda x: unpatchify((x + 1.0) / 2.0, self.grid, self.patch)  # noqa: E731
    return drawing.panels([images, show(grey), show(recon)])
