"""RandSAC: random hierarchical segments with autoregressive coding.

Sections 3-4 of the RandSAC paper. Per example, inside the step: the image
is cut into p x p patches (tokens); the tokens are grouped into segments
(squares, blobs, or the non-coherent control), the segments into a hierarchy
of partitions, and serialised in a random hierarchical order
(segments.sample_segments). The network (model.py) predicts
every segment's pixels from the segments before it, the tokens of a segment
in parallel; the loss is the mean squared error on the pixels of every
predicted token, normalised per patch (norm_pix_loss) or raw.

Static shapes: the serialisation is a permutation of all n tokens with a
segment rank per position. With equal-sized segments (squares, size S) the
encoder reads the first n - S serialised tokens and the decoder predicts the
last n - S, as in Figure 4. With blobs (sizes vary per example) both read all
n positions: the last segment's encoder outputs are attended by no target,
and the first segment's targets are masked out of the attention and the loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import drawing
from ssl_jax.config.checks import (ConfigError, boolean, is_int, is_number, one_of,
                                   positive_int, require)
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.randsac import segments as segments_lib
from ssl_jax.methods.randsac.model import ARCHITECTURES, RandSACNet
from ssl_jax.nn import attention
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn.patches import (denormalise_patches, gather, normalise_patches, patch_vectors,
                                 token_image, unpatchify)
from ssl_jax.nn.pooling import pool

class RandSAC(Method):
  """The method: init / loss / represent / pictures (see ssl_jax.methods.base)."""

  name = 'randsac'
  added_keys = {'randsac.model.attention': 'xla'}  # the kernel, not the network
  self_supervised = True
  # What fixes the encoder's parameters (the decoder is dropped for probes
  # and fine-tunes; two-stream's depth counts the decoder's layers).
  # Not data.image_size: the position encodings are fixed sine-cosine
  # functions of the grid, so a backbone fine-tunes at another resolution
  # (ImageNet-1K pretrains at 192).
  architecture_keys = ('randsac.patch_size', 'randsac.model.architecture',
                       'randsac.model.width', 'randsac.model.num_layers',
                       'randsac.model.heads', 'randsac.model.mlp_ratio',
                       'randsac.model.decoder_layers')
  # Fine-tuning sees whole images (D.3): no masking while fine-tuning.
  finetune_masking = False
  layer_decay = True       # D.3: layer-wise lr decay 0.65
  draws_pictures = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    r = config.randsac
    self.patch = r.patch_size
    size = config.data.image_size
    self.grid = (size // self.patch, size // self.patch)
    self.n = self.grid[0] * self.grid[1]
    s = r.segments
    self.segments = dict(kind=s.kind, counts=tuple(s.counts), order=s.order,
                         coherent=s.coherent, blob_mean=tuple(s.blob_mean),
                         blob_std=tuple(s.blob_std))
    self.norm_pix_loss = r.norm_pix_loss
    m = r.model
    self.net = RandSACNet(
        grid=self.grid, patch_dim=self.patch * self.patch * 3, architecture=m.architecture,
        width=m.width, num_layers=m.num_layers, heads=m.heads, mlp_ratio=m.mlp_ratio,
        decoder_layers=m.decoder_layers, decoder_heads=m.decoder_heads,
        drop_path=m.drop_path, remat=m.remat, dtype=dtype, attention=m.attention)

  @property
  def static_size(self) -> int | None:
    """Tokens per segment when all segments are squares (segments_lib)."""
    return segments_lib.static_segment_size(self.segments['kind'], self.grid,
                                            self.segments['counts'])

  @classmethod
  def validate_backbone(cls, config: ml_collections.ConfigDict) -> None:
    """The encoder's keys only: a probe or fine-tune draws no segments, so
    its image size need not suit them."""
    cls._validate_patches(config)
    cls._validate_model(config)

  @classmethod
  def _validate_patches(cls, config: ml_collections.ConfigDict) -> int:
    size = config.data.image_size
    patch = require(config, 'randsac.patch_size',
                    lambda v: is_int(v) and v > 0 and size % v == 0,
                    f'a positive integer that divides data.image_size={size}')
    return size // patch

  @classmethod
  def _validate_model(cls, config: ml_collections.ConfigDict) -> None:
    m = 'randsac.model.'
    one_of(config, m + 'architecture', ARCHITECTURES)
    width = require(config, m + 'width', lambda v: is_int(v) and v > 0 and v % 4 == 0,
                    'a positive multiple of 4 (2D sine-cosine position encodings)')
    for k in ('num_layers', 'mlp_ratio', 'decoder_layers'):
      positive_int(config, m + k)
    for k in ('heads', 'decoder_heads'):
      require(config, m + k, lambda v: is_int(v) and v > 0 and width % v == 0,
              f'a positive integer that divides model.width={width}')
    require(config, m + 'drop_path', lambda v: is_number(v) and 0 <= v < 1,
            'a number in [0, 1)')
    boolean(config, m + 'remat')
    attention.validate(config, m + 'attention')

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """RandSAC's keys: patches, segments and their hierarchy, loss, model."""
    r = 'randsac.'
    grid = cls._validate_patches(config)
    n = grid * grid
    s = r + 'segments.'
    kind = one_of(config, s + 'kind', segments_lib.SEGMENT_KINDS)
    counts = require(config, s + 'counts',
                     lambda v: len(v) >= 1 and all(is_int(c) for c in v)
                     and 2 <= v[0] <= n and all(a > b >= 1 for a, b in zip(v, v[1:])),
                     f'a non-empty tuple of segment counts, finest first and decreasing '
                     f'(e.g. (16, 4): 16 segments grouped into 4 partitions), the first in '
                     f'[2, {n}] (the {grid}x{grid} tokens; one segment leaves nothing to '
                     'predict)')
    if kind == 'square':
      sides = []
      for level, count in enumerate(counts):
        try:
          sides.append(segments_lib.square_side((grid, grid), count))
        except ValueError:
          allowed = [(grid // m) ** 2 for m in range(1, grid + 1) if grid % m == 0]
          raise ConfigError(
              f'config.{s}counts={tuple(counts)!r} is not allowed: {count} squares do not tile '
              f'the {grid}x{grid} token grid; square counts for it: '
              + ', '.join(map(str, sorted(allowed, reverse=True)))) from None
      for fine, coarse in zip(sides, sides[1:]):
        if coarse % fine:
          raise ConfigError(f'config.{s}counts={tuple(counts)!r} is not allowed: {fine}x{fine} '
                            f'squares do not nest in {coarse}x{coarse} partitions')
    order = one_of(config, s + 'order', segments_lib.ORDERS)
    if order == 'raster' and kind != 'square':
      raise ConfigError(f"config.{s}order='raster' is not allowed with kind={kind!r}: blobs have "
                        "no raster order; use order='random' (or kind='square')")
    boolean(config, s + 'coherent')
    require(config, s + 'blob_mean', lambda v: len(v) == 2 and all(map(is_number, v))
            and v[0] <= v[1], 'a pair (lo, hi) with lo <= hi (token positions are in [-2, 2])')
    require(config, s + 'blob_std', lambda v: len(v) == 2 and all(map(is_number, v))
            and 0 < v[0] <= v[1], 'a pair (lo, hi) with 0 < lo <= hi')
    boolean(config, r + 'norm_pix_loss')
    cls._validate_model(config)

  # -- pieces -----------------------------------------------------------------

  def serialise(self, rng: jax.Array, batch_size: int) -> segments_lib.Serialisation:
    return segments_lib.sample_segments(rng, batch_size, self.grid, **self.segments)

  def split(self, ser: segments_lib.Serialisation):
    """(source idx, source rank, target idx, target rank), serialised."""
    s = self.static_size
    if s is None:
      return ser.order, ser.rank, ser.order, ser.rank
    m = self.n - s
    return ser.order[:, :m], ser.rank[:, :m], ser.order[:, s:], ser.rank[:, s:]

  def forward(self, params: Any, patches: jax.Array, ser: segments_lib.Serialisation, *,
              train: bool = False, rng: jax.Array | None = None):
    """(pixels predicted for the targets [b, t, p*p*3], the encoder's
    intermediates by name (per source token), target idx [b, t], target
    rank [b, t]) from patches [b, n, p*p*3] in [-1, 1], row-major."""
    src_idx, src_rank, tgt_idx, tgt_rank = self.split(ser)
    masks = segments_lib.attention_masks(src_rank, tgt_rank)
    pred, feats = self.net.apply(
        {'params': params}, gather(patches, src_idx), src_idx, tgt_idx, masks,
        train=train, rngs={'dropout': jax.random.key(0) if rng is None else rng})
    return pred, feats, tgt_idx, tgt_rank

  def targets(self, patches: jax.Array) -> jax.Array:
    return normalise_patches(patches) if self.norm_pix_loss else patches

  # -- the method interface ---------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *,
           decoder: bool = True) -> Any:
    """Parameters; decoder=False: the encoder only (what `represent` uses)."""
    patches = patch_vectors(batch['image'], self.patch)
    if not decoder:
      idx = jnp.broadcast_to(jnp.arange(self.n), patches.shape[:2])
      return self.net.init(rng, patches, idx, method=RandSACNet.encode)['params']
    ser = self.serialise(rng, patches.shape[0])
    src_idx, src_rank, tgt_idx, tgt_rank = self.split(ser)
    masks = segments_lib.attention_masks(src_rank, tgt_rank)
    return self.net.init(rng, gather(patches, src_idx), src_idx, tgt_idx,
                         masks)['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    """(loss, LossAux): the mean squared error over predicted tokens (every
    segment but the first) and valid examples; the features are the
    encoder's outputs of this view, pooled, for the online probe."""
    k_order, k_dropout = jax.random.split(rng)
    patches = patch_vectors(batch['image'], self.patch)
    b = patches.shape[0]
    ser = self.serialise(k_order, b)
    pred, feats, tgt_idx, tgt_rank = self.forward(params, patches, ser, train=train,
                                                  rng=k_dropout)
    target = gather(self.targets(patches), tgt_idx)
    mse = ((pred - target) ** 2).mean(axis=-1)  # [b, t]
    example_w = example_weights(batch, b)
    w = (tgt_rank > 0).astype(jnp.float32) * example_w[:, None]
    loss = weighted_mean(mse, w)
    segments = weighted_mean(ser.num_segments, example_w)
    return loss, LossAux({'segments': segments}, pool(feats), state)

  @property
  def num_blocks(self) -> int:
    return self.net.encoder_layers

  def layer_of(self, path: tuple[str, ...]) -> int:
    """The layer of an encoder parameter (its key path in the encoder's
    params), for layer-wise lr decay: 0 patch embedding, k block k, and
    num_blocks + 1 for what follows the blocks (final norm)."""
    if path[0] == 'patch_embed':
      return 0
    if path[0].startswith('block'):
      return int(path[0][len('block'):])
    return self.num_blocks + 1

  def representations(self) -> tuple[str, ...]:
    return ('encoder',) + tuple(f'layer_{k + 1}' for k in range(self.net.encoder_layers))

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """Features [batch, width] by name: 'encoder', the encoder's final-normed
    output averaged over all tokens (D.3: no class token, masks and decoder
    removed); 'layer_k', block k's output averaged. train=True (fine-tune):
    drop path on."""
    if mask_ratio:
      raise ValueError('RandSAC fine-tunes on whole images: mask_ratio must be 0')
    patches = patch_vectors(batch['image'], self.patch)
    idx = jnp.broadcast_to(jnp.arange(self.n), patches.shape[:2])
    out, layers = self.net.apply(
        {'params': params}, patches, idx, train=train, method=RandSACNet.encode,
        rngs={'dropout': jax.random.key(0) if rng is None else rng})
    return pool({'encoder': out, **layers})

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array, *,
               state: Any = None) -> jax.Array:
    """uint8 [b, H', W', 3]: image | segments | serialisation | reconstruction
    (ssl_jax.drawing.panels), for images [b, H, W, 3] in [0, 1]."""
    b = images.shape[0]
    patches = patch_vectors(images, self.patch)
    ser = self.serialise(rng, b)
    pred, _, tgt_idx, tgt_rank = self.forward(params, patches, ser)
    if self.norm_pix_loss:  # back to pixels with each true patch's statistics
      pred = denormalise_patches(pred, gather(patches, tgt_idx))
    rows = jnp.arange(b)[:, None]
    predicted = jnp.where((tgt_rank > 0)[..., None], pred,
                          gather(patches, tgt_idx))
    recon = patches.at[rows, tgt_idx].set(predicted)
    token_rank = jnp.zeros_like(ser.rank).at[rows, ser.order].set(ser.rank)
    colours = jnp.asarray(drawing.colours(self.segments['counts'][0]))[ser.segment]
    if len(self.segments['counts']) > 1:  # partitions: four brightness levels
      colours = colours * (1.0 - 0.2 * (ser.partition % 4))[..., None]
    late = token_rank / jnp.maximum(ser.num_segments - 1, 1)[:, None]
    order = jnp.broadcast_to(late[..., None], late.shape + (3,))
    first = token_image((token_rank == 0)[..., None], self.grid, self.patch)
    order = jnp.where(first, jnp.array([0.8, 0.1, 0.1]),
                      token_image(order, self.grid, self.patch))
    return drawing.panels([
        images, token_image(colours, self.grid, self.patch), order,
        unpatchify((recon + 1.0) / 2.0, self.grid, self.patch)])
