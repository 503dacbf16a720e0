"""RandSAC's segments and serialisations (ssl_jax.methods.randsac.segments): counts, sizes,
hierarchies, the non-coherent control, and the attention masks' rules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods.randsac import segments as masking

GRID = (8, 8)
N = 64


@functools.partial(jax.jit, static_argnums=(1,), static_argnames=(
    'kind', 'counts', 'order', 'coherent'))
def _jit_sample(key, batch, **kw):
  return masking.sample_segments(key, batch, GRID, **kw)


def _sample(key=0, batch=16, **kw):
  return jax.device_get(_jit_sample(jax.random.key(key), batch, **kw))


def _segment_sizes(ser):
  """Per example: the size of every non-empty segment, in serialised order."""
  return [np.bincount(r) for r in ser.rank]


def _is_permutation(order):
  return all(sorted(o) == list(range(N)) for o in order)


@pytest.mark.parametrize('count,size', [(64, 1), (16, 4), (4, 16)])
def test_square_counts_and_sizes(count, size):
  ser = _sample(kind='square', counts=(count,))
  assert _is_permutation(ser.order)
  assert (ser.num_segments == count).all()
  for sizes in _segment_sizes(ser):
    assert (sizes == size).all()
  # Each segment is an M x M square of the grid.
  m = int(size ** 0.5)
  for order, rank in zip(ser.order, ser.rank):
    for r in range(count):
      tokens = order[rank == r]
      rows, cols = tokens // 8, tokens % 8
      assert rows.max() - rows.min() == m - 1 and cols.max() - cols.min() == m - 1
      assert rows.min() % m == 0 and cols.min() % m == 0


def test_random_order_differs_per_example_and_raster_is_row_major():
  ser = _sample(kind='square', counts=(16,))
  firsts = {int(o[0]) for o in ser.order}
  assert len(firsts) > 4  # 16 examples start from many different squares
  raster = _sample(kind='square', counts=(64,), order='raster')
  assert (raster.order == np.arange(N)).all() and (raster.rank == np.arange(N)).all()


def test_hierarchical_order_finishes_each_partition_before_the_next():
  """16 -> 4 on 8x8 tokens: 2x2 segments inside 4x4 partitions; the 4
  segments of a partition come one after another, in random order."""
  ser = _sample(kind='square', counts=(16, 4), batch=32)
  partition = lambda t: (t // 8) // 4 * 2 + (t % 8) // 4  # noqa: E731
  orders_inside = set()
  for order, rank in zip(ser.order, ser.rank):
    parts = partition(order)
    for block in range(4):  # serialised positions 16*block .. 16*block+15
      assert len(set(parts[16 * block:16 * (block + 1)])) == 1
    orders_inside.add(tuple(order[:16:4]))
  assert len(orders_inside) > 16  # the order inside a partition is random too


@pytest.mark.parametrize('counts', [(7,), (16, 4), (7, 3)])
def test_blob_segments(counts):
  ser = _sample(kind='blob', counts=counts, batch=32)
  assert _is_permutation(ser.order)
  assert (ser.num_segments <= counts[0]).all() and (ser.num_segments >= 2).all()
  sizes = _segment_sizes(ser)
  assert all(s.sum() == N and (s > 0).all() for s in sizes)
  assert len({tuple(sorted(s)) for s in sizes}) > 16  # sizes vary per example
  for order, rank, seg in zip(ser.order, ser.rank, ser.segment):
    # A rank holds exactly one segment id, and every id is contiguous.
    for r in np.unique(rank):
      assert len(set(seg[order[rank == r]])) == 1


def test_blob_assignment_is_the_closest_gaussian_by_mahalanobis():
  key = jax.random.key(3)
  pos = masking.token_positions(GRID)
  assert np.allclose(pos[0], (-2, -2)) and np.allclose(pos[-1], (2, 2))
  ids = np.asarray(jax.jit(lambda k: masking.blob_segments(
      k, 4, GRID, 5, mean_range=(-2.0, 2.0), std_range=(0.5, 1.5)))(key))
  k_mean, k_std = jax.random.split(key)
  means = np.asarray(jax.random.uniform(k_mean, (4, 5, 2), minval=-2.0, maxval=2.0))
  stds = np.asarray(jax.random.uniform(k_std, (4, 5, 2), minval=0.5, maxval=1.5))
  d = (((np.asarray(pos)[None, :, None] - means[:, None]) / stds[:, None]) ** 2).sum(-1)
  assert (ids == d.argmin(-1)).all()


def test_hierarchical_blobs_nest_and_keep_partitions_together():
  blobs = dict(mean_range=(-2.0, 2.0), std_range=(0.5, 1.5))

  @jax.jit
  def sample(k1, k2, k3):
    seg = masking.blob_segments(k1, 8, GRID, 16, **blobs)
    part = masking.blob_partitions(k2, seg, GRID, 16, 4, **blobs)
    return seg, part, masking.serialise(k3, [seg, part], (16, 4))

  seg, part, ser = jax.device_get(sample(*jax.random.split(jax.random.key(5), 3)))
  for s, p in zip(seg, part):
    for sid in np.unique(s):
      assert len(set(p[s == sid])) == 1  # a segment lies in one partition
  for order, p in zip(ser.order, part):
    serial_parts = p[order]
    changes = (serial_parts[1:] != serial_parts[:-1]).sum()
    assert changes == len(np.unique(p)) - 1  # each partition visited once


def test_non_coherent_control_keeps_sizes_and_breaks_locality():
  coherent = _sample(kind='blob', counts=(7,), key=9, batch=32)
  shuffled = _sample(kind='blob', counts=(7,), key=9, batch=32, coherent=False)
  for a, b in zip(_segment_sizes(coherent), _segment_sizes(shuffled)):
    assert sorted(a) == sorted(b)

  def neighbour_agreement(ser):
    seg = ser.segment.reshape(-1, 8, 8)
    return ((seg[:, 1:] == seg[:, :-1]).mean() + (seg[:, :, 1:] == seg[:, :, :-1]).mean()) / 2

  assert neighbour_agreement(coherent) > 0.6 > 0.35 > neighbour_agreement(shuffled)


def test_attention_masks_follow_segment_ranks():
  src = jnp.array([[0, 0, 1, 1, 2]])
  tgt = jnp.array([[0, 1, 1, 2, 3]])
  source, target, memory = (np.asarray(m[0, 0]) for m in masking.attention_masks(src, tgt))
  # A source position sees its own segment and the earlier ones.
  assert (source == (src[0][None, :] <= src[0][:, None])).all()
  # A target sees strictly earlier source segments; a rank-0 target (never
  # predicted) is given key 0 only, so no softmax is over an empty set.
  want = np.array(src[0][None, :] < tgt[0][:, None])
  want[0, 0] = True
  assert (memory == want).all()
  # Targets see targets of their own and earlier segments, except rank 0.
  want = (np.asarray(tgt[0])[None, :] <= np.asarray(tgt[0])[:, None]) & (np.asarray(tgt[0]) > 0)[None]
  assert (target == (want | np.eye(5, dtype=bool))).all()


def test_bad_segment_arguments():
  with pytest.raises(ValueError, match='do not tile'):
    masking.square_segments(1, GRID, 9)
  with pytest.raises(ValueError, match='kind'):
    masking.sample_segments(jax.random.key(0), 1, GRID, kind='hexagon', counts=(4,))
  with pytest.raises(ValueError, match='order'):
    masking.serialise(jax.random.key(0), [jnp.zeros((1, N), jnp.int32)], (1,), 'spiral')
