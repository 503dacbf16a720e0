"""RandSAC's segments and their serialisation, drawn on the device from a
PRNG key, with static shapes (sections 3.1-3.3 and A.2).

Every function here is pure jnp of a key: serialisations are sampled inside
the jitted train step, independently per example, with static shapes (a
permutation of all tokens plus a segment rank per position, whatever the
segments' sizes).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------
#
# A segmentation of a (gh, gw) token grid is a [batch, n] int32 map from each
# token (row-major) to a segment id; a hierarchy is a list of such maps, finest
# first, each level's groups being unions of the finer level's segments. A
# serialisation sorts the tokens so that every segment is contiguous, and
# tells each position its segment's rank: how many (non-empty) segments come
# before it. Sizes may vary per example (blobs): shapes never do.
# ----------------------------------------------------------------------------

SEGMENT_KINDS = ('square', 'blob')
ORDERS = ('random', 'raster')


def token_positions(grid: tuple[int, int]) -> jax.Array:
  """[gh * gw, 2] (row, col) of each token, normalised to [-2, 2] (A.2: "the
  leftmost top token is at (-2, -2), the rightmost bottom at (2, 2)")."""
  gh, gw = grid
  rows = jnp.linspace(-2.0, 2.0, gh) if gh > 1 else jnp.zeros((1,))
  cols = jnp.linspace(-2.0, 2.0, gw) if gw > 1 else jnp.zeros((1,))
  r, c = jnp.meshgrid(rows, cols, indexing='ij')
  return jnp.stack([r.reshape(-1), c.reshape(-1)], axis=-1)


def square_side(grid: tuple[int, int], count: int) -> int:
  """The side M of `count` equal squares tiling a square grid (3.2:
  "the segment count of an image is (g / M)^2")."""
  gh, gw = grid
  per_side = int(round(count ** 0.5))
  if gh != gw or per_side * per_side != count or gh % per_side:
    raise ValueError(f'{count} square segments do not tile a {gh}x{gw} token grid: '
                     f'need a square grid whose side is a multiple of sqrt(count)')
  return gh // per_side


def square_segments(batch: int, grid: tuple[int, int], count: int) -> jax.Array:
  """[batch, n]: `count` M x M squares, numbered row-major (the same for
  every example: squares are fixed, only their order is random)."""
  m = square_side(grid, count)
  gh, gw = grid
  r, c = jnp.meshgrid(jnp.arange(gh) // m, jnp.arange(gw) // m, indexing='ij')
  ids = (r * (gw // m) + c).reshape(-1).astype(jnp.int32)
  return jnp.broadcast_to(ids, (batch, gh * gw))


def _mahalanobis_assign(key: jax.Array, points: jax.Array, count: int,
                        mean_range: tuple[float, float],
                        std_range: tuple[float, float]) -> jax.Array:
  """points [batch, p, 2] -> [batch, p] index of the closest of `count`
  axis-aligned Gaussians (means ~ U(mean_range)^2, per-axis standard
  deviations ~ U(std_range)) by Mahalanobis distance (A.2, equation 1)."""
  k_mean, k_std = jax.random.split(key)
  b = points.shape[0]
  means = jax.random.uniform(k_mean, (b, count, 2), minval=mean_range[0], maxval=mean_range[1])
  stds = jax.random.uniform(k_std, (b, count, 2), minval=std_range[0], maxval=std_range[1])
  d = (((points[:, :, None, :] - means[:, None]) / stds[:, None]) ** 2).sum(-1)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


def blob_segments(key: jax.Array, batch: int, grid: tuple[int, int], count: int, *,
                  mean_range: tuple[float, float], std_range: tuple[float, float]
                  ) -> jax.Array:
  """[batch, n]: each token goes to the closest of `count` random Gaussians
  over token positions in [-2, 2]^2. Segments vary in size; some may be
  empty (a Gaussian that is nobody's closest), which serialisation skips."""
  pos = jnp.broadcast_to(token_positions(grid), (batch, grid[0] * grid[1], 2))
  return _mahalanobis_assign(key, pos, count, mean_range, std_range)


def blob_partitions(key: jax.Array, segments: jax.Array, grid: tuple[int, int],
                    num_segments: int, count: int, *, mean_range: tuple[float, float],
                    std_range: tuple[float, float]) -> jax.Array:
  """Groups blob segments into `count` partitions "following the same logic"
  (3.3): each segment goes, as a whole, to the Gaussian closest to its
  centroid. Returns the partition of every token, [batch, n]."""
  pos = token_positions(grid)
  one_hot = jax.nn.one_hot(segments, num_segments, dtype=jnp.float32)   # [b, n, s]
  sizes = one_hot.sum(axis=1)                                             # [b, s]
  centroids = jnp.einsum('bns,nd->bsd', one_hot, pos) / jnp.maximum(sizes, 1.0)[..., None]
  parent = _mahalanobis_assign(key, centroids, count, mean_range, std_range)  # [b, s]
  return jnp.take_along_axis(parent, segments, axis=1)


def scramble(key: jax.Array, levels: list[jax.Array]) -> list[jax.Array]:
  """The non-coherent control (Table 5, "Shuffle"): the same segment sizes,
  but each segment's tokens scattered at random over the grid. One random
  permutation of the tokens per example, applied to every level, so a
  hierarchy stays nested."""
  b, n = levels[0].shape
  perm = jnp.argsort(jax.random.uniform(key, (b, n)), axis=-1)
  return [jnp.take_along_axis(ids, perm, axis=1) for ids in levels]


class Serialisation(NamedTuple):
  """A per-example order of all tokens; segments are contiguous in it.

  order [batch, n]: token indices (row-major) in serialised order.
  rank [batch, n]: the segment rank of each serialised position,
      non-decreasing, 0 for the first (non-empty) segment.
  segment, partition [batch, n]: the finest and the coarsest group id of
      each token (row-major, for pictures; equal without a hierarchy), and
      num_segments [batch]: how many segments are non-empty.
  """
  order: jax.Array
  rank: jax.Array
  segment: jax.Array
  partition: jax.Array
  num_segments: jax.Array


def serialise(key: jax.Array, levels: list[jax.Array], counts: tuple[int, ...],
              order: str = 'random') -> Serialisation:
  """Orders the segments of a hierarchy (3.3): the coarsest groups come in a
  random order, then, inside each, the next level's groups in a random
  order, and so on down to the segments; tokens of one segment keep their
  row-major order (they are predicted in parallel). order='raster': every
  level in the order of its ids (row-major for squares): with 1x1 squares,
  the patch-raster serialisation of Table 1.

  levels: per level, finest first, [batch, n] group ids in [0, counts[l]).
  """
  if order not in ORDERS:
    raise ValueError(f'order must be one of {ORDERS}, got {order!r}')
  b, n = levels[0].shape
  keys = []
  for level, (ids, count) in enumerate(zip(levels, counts)):
    if order == 'random':
      u = jax.random.uniform(jax.random.fold_in(key, level), (b, count))
    else:
      u = jnp.broadcast_to(jnp.arange(count, dtype=jnp.float32), (b, count))
    keys.append(jnp.take_along_axis(u, ids, axis=1))
  # lexsort: the last key is the primary one; the token index breaks ties.
  token = jnp.broadcast_to(jnp.arange(n), (b, n))
  perm = jnp.lexsort([token] + keys, axis=-1)
  seg_sorted = jnp.take_along_axis(levels[0], perm, axis=1)
  starts = jnp.concatenate([jnp.zeros((b, 1), bool),
                            seg_sorted[:, 1:] != seg_sorted[:, :-1]], axis=1)
  rank = jnp.cumsum(starts, axis=1).astype(jnp.int32)
  return Serialisation(order=perm.astype(jnp.int32), rank=rank, segment=levels[0],
                       partition=levels[-1], num_segments=rank[:, -1] + 1)


def sample_segments(key: jax.Array, batch: int, grid: tuple[int, int], *, kind: str,
                    counts: tuple[int, ...], order: str = 'random', coherent: bool = True,
                    blob_mean: tuple[float, float] = (-2.0, 2.0),
                    blob_std: tuple[float, float] = (0.5, 1.5)) -> Serialisation:
  """Segments of `kind` ('square' | 'blob'), grouped into the hierarchy
  `counts` (finest first, e.g. (16, 4): 16 segments in 4 partitions), made
  non-coherent if asked, then serialised. One key, per-example draws."""
  if kind not in SEGMENT_KINDS:
    raise ValueError(f'segment kind must be one of {SEGMENT_KINDS}, got {kind!r}')
  k_blob, k_scramble, k_order = jax.random.split(key, 3)
  if kind == 'square':
    levels = [square_segments(batch, grid, c) for c in counts]
  else:
    levels = [blob_segments(jax.random.fold_in(k_blob, 0), batch, grid, counts[0],
                            mean_range=blob_mean, std_range=blob_std)]
    for level in range(1, len(counts)):
      levels.append(blob_partitions(
          jax.random.fold_in(k_blob, level), levels[-1], grid, counts[level - 1],
          counts[level], mean_range=blob_mean, std_range=blob_std))
  if not coherent:
    levels = scramble(k_scramble, levels)
  return serialise(k_order, levels, counts, order)


def static_segment_size(kind: str, grid: tuple[int, int], counts: tuple[int, ...]) -> int | None:
  """The size every segment has when it is the same for all (squares), else
  None. With it, the first and last segments can be cut statically."""
  if kind != 'square':
    return None
  return square_side(grid, counts[0]) ** 2


def attention_masks(source_rank: jax.Array, target_rank: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Boolean attention masks [batch, 1, q, k] (True = may attend) from the
  segment ranks of the encoder's positions (source_rank [batch, m]) and of
  the decoder's targets (target_rank [batch, t]), section 4.1:

  source: a segment sees itself and the segments before it;
  target: the decoder's self-attention, the same rule among targets, where
      the first segment's positions (rank 0: nothing precedes them, so they
      are never predicted) are seen by nobody but themselves;
  memory: a target sees the encoder positions of strictly earlier segments.

  A row that may see nothing (rank-0 targets in `memory`) is given key 0,
  so that no softmax is taken over an empty set; such rows are never used.
  """
  def mask(q, k, allowed):
    m = allowed(q[:, :, None], k[:, None, :])
    return m[:, None]
  source = mask(source_rank, source_rank, lambda q, k: k <= q)
  diagonal = jnp.eye(target_rank.shape[1], dtype=bool)[None, None]
  target = mask(target_rank, target_rank, lambda q, k: (k <= q) & (k > 0)) | diagonal
  memory = mask(target_rank, source_rank, lambda q, k: k < q)
  empty = ~memory.any(axis=-1, keepdims=True)
  first_key = jnp.arange(memory.shape[-1]) == 0
  memory = memory | (empty & first_key)
  return source, target, memory
