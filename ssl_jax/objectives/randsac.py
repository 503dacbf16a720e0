"""RandSAC: random hierarchical segments with autoregressive coding.

Sections 3-4 of the RandSAC paper. Per example, inside the step: the image
is cut into p x p patches (tokens); the tokens are grouped into segments
(squares, blobs, or the non-coherent control), the segments into a hierarchy
of partitions, and serialised in a random hierarchical order
(ssl_jax.masking.sample_segments). The network (models.randsac) predicts
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

from ssl_jax import masking, pictures
from ssl_jax.models.randsac import RandSACNet
from ssl_jax.objectives.patchformer import patchify

NORM_PIX_EPS = 1e-6


def patch_vectors(images: jax.Array, patch: int) -> jax.Array:
  """Images in [0, 1], [B, H, W, C] -> patches in [-1, 1], [B, n, p * p * C]."""
  x = patchify(images * 2.0 - 1.0, patch)
  return x.reshape(x.shape[:2] + (-1,))


def normalise_patches(patches: jax.Array) -> jax.Array:
  """Each patch's pixels minus their mean, over their standard deviation
  (MAE's norm_pix_loss target: all pixels and channels of a patch)."""
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + NORM_PIX_EPS)


class RandSAC:
  """The objective: init / loss / represent (see ssl_jax.objectives)."""

  name = 'randsac'
  self_supervised = True
  # What fixes the encoder's parameters (the decoder is dropped for probes
  # and fine-tunes; two-stream's depth counts the decoder's layers).
  architecture_keys = ('data.image_size', 'randsac.patch_size', 'randsac.model.architecture',
                       'randsac.model.width', 'randsac.model.num_layers',
                       'randsac.model.heads', 'randsac.model.mlp_ratio',
                       'randsac.model.decoder_layers')
  # Fine-tuning sees whole images (D.3): no masking while fine-tuning.
  supports_finetune_masking = False

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
    self.static_size = masking.static_segment_size(s.kind, self.grid, tuple(s.counts))
    self.norm_pix_loss = r.norm_pix_loss
    m = r.model
    self.net = RandSACNet(
        grid=self.grid, patch_dim=self.patch * self.patch * 3, architecture=m.architecture,
        width=m.width, num_layers=m.num_layers, heads=m.heads, mlp_ratio=m.mlp_ratio,
        decoder_layers=m.decoder_layers, decoder_heads=m.decoder_heads,
        drop_path=m.drop_path, remat=m.remat, dtype=dtype)

  # -- pieces -----------------------------------------------------------------

  def serialise(self, rng: jax.Array, batch_size: int) -> masking.Serialisation:
    return masking.sample_segments(rng, batch_size, self.grid, **self.segments)

  def split(self, ser: masking.Serialisation):
    """(source idx, source rank, target idx, target rank), serialised."""
    s = self.static_size
    if s is None:
      return ser.order, ser.rank, ser.order, ser.rank
    m = self.n - s
    return ser.order[:, :m], ser.rank[:, :m], ser.order[:, s:], ser.rank[:, s:]

  def forward(self, params: Any, patches: jax.Array, ser: masking.Serialisation, *,
              train: bool = False, rng: jax.Array | None = None):
    """(pixels predicted for the targets [b, t, p*p*3], pooled encoder
    features by name, target idx [b, t], target rank [b, t]) from patches
    [b, n, p*p*3] in [-1, 1], row-major."""
    src_idx, src_rank, tgt_idx, tgt_rank = self.split(ser)
    masks = masking.attention_masks(src_rank, tgt_rank)
    pred, feats = self.net.apply(
        {'params': params}, masking.gather_patches(patches, src_idx), src_idx, tgt_idx, masks,
        train=train, rngs={'dropout': jax.random.key(0) if rng is None else rng})
    return pred, feats, tgt_idx, tgt_rank

  def targets(self, patches: jax.Array) -> jax.Array:
    return normalise_patches(patches) if self.norm_pix_loss else patches

  # -- the objective interface ------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *,
           decoder: bool = True) -> Any:
    """Parameters; decoder=False: the encoder only (what `represent` uses)."""
    patches = patch_vectors(batch['image'], self.patch)
    if not decoder:
      idx = jnp.broadcast_to(jnp.arange(self.n), patches.shape[:2])
      return self.net.init(rng, patches, idx, method=RandSACNet.encode)['params']
    ser = self.serialise(rng, patches.shape[0])
    src_idx, src_rank, tgt_idx, tgt_rank = self.split(ser)
    masks = masking.attention_masks(src_rank, tgt_rank)
    return self.net.init(rng, masking.gather_patches(patches, src_idx), src_idx, tgt_idx,
                         masks)['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True) -> tuple[jax.Array, tuple[dict, dict]]:
    """(loss, (metrics, features)): the mean squared error over predicted
    tokens (every segment but the first) and valid examples; `features` are
    the encoder's outputs of this view, for the online probe."""
    k_order, k_dropout = jax.random.split(rng)
    patches = patch_vectors(batch['image'], self.patch)
    b = patches.shape[0]
    ser = self.serialise(k_order, b)
    pred, feats, tgt_idx, tgt_rank = self.forward(params, patches, ser, train=train,
                                                  rng=k_dropout)
    target = masking.gather_patches(self.targets(patches), tgt_idx)
    mse = ((pred - target) ** 2).mean(axis=-1)  # [b, t]
    valid = batch.get('valid')
    example_w = jnp.ones((b,), jnp.float32) if valid is None else valid.astype(jnp.float32)
    w = (tgt_rank > 0).astype(jnp.float32) * example_w[:, None]
    loss = (mse * w).sum() / jnp.maximum(w.sum(), 1.0)
    segments = (ser.num_segments * example_w).sum() / jnp.maximum(example_w.sum(), 1.0)
    return loss, ({'segments': segments}, feats)

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

  def represent(self, params: Any, batch: dict[str, jax.Array], *,
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
    feats = {'encoder': out, **layers}
    return {k: v.mean(axis=1).astype(jnp.float32) for k, v in feats.items()}

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array) -> jax.Array:
    """uint8 [b, H', W', 3]: image | segments | serialisation | reconstruction
    (see ssl_jax.pictures), for images [b, H, W, 3] in [0, 1]."""
    b = images.shape[0]
    patches = patch_vectors(images, self.patch)
    ser = self.serialise(rng, b)
    pred, _, tgt_idx, tgt_rank = self.forward(params, patches, ser)
    if self.norm_pix_loss:  # back to pixels with each true patch's statistics
      true = masking.gather_patches(patches, tgt_idx)
      pred = pred * jnp.sqrt(true.var(-1, keepdims=True) + NORM_PIX_EPS) + true.mean(
          -1, keepdims=True)
    rows = jnp.arange(b)[:, None]
    predicted = jnp.where((tgt_rank > 0)[..., None], pred,
                          masking.gather_patches(patches, tgt_idx))
    recon = patches.at[rows, tgt_idx].set(predicted)
    token_rank = jnp.zeros_like(ser.rank).at[rows, ser.order].set(ser.rank)
    colours = jnp.asarray(pictures.palette(self.segments['counts'][0]))[ser.segment]
    if len(self.segments['counts']) > 1:  # partitions: four brightness levels
      colours = colours * (1.0 - 0.2 * (ser.partition % 4))[..., None]
    late = token_rank / jnp.maximum(ser.num_segments - 1, 1)[:, None]
    order = jnp.broadcast_to(late[..., None], late.shape + (3,))
    first = pictures.token_image((token_rank == 0)[..., None], self.grid, self.patch)
    order = jnp.where(first, jnp.array([0.8, 0.1, 0.1]),
                      pictures.token_image(order, self.grid, self.patch))
    return pictures.panels([
        images, pictures.token_image(colours, self.grid, self.patch), order,
        pictures.unpatchify((recon + 1.0) / 2.0, self.grid, self.patch)])
