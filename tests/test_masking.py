import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.nn import masks as masking
from ssl_jax.nn.patches import gather


def test_paper_counts():
  # PatchFormer: 14x14 patches, 7x7 block grid, 60% -> 29 blocks = 116 patches.
  assert masking.num_masked((14, 14), (2, 2), 0.6) == 116
  assert masking.num_masked((14, 14), (1, 1), 0.6) == 118  # unblocked: the paper's 118
  assert '116 of 196' in masking.describe((14, 14), (2, 2), 0.6)


@pytest.mark.parametrize('grid,block,ratio', [((14, 14), (2, 2), 0.6),
                                              ((8, 8), (2, 2), 0.6),
                                              ((12, 9), (3, 3), 0.3),
                                              ((4, 4), (1, 1), 0.75)])
def test_block_mask_counts_and_contiguity(grid, block, ratio):
  batch = 64
  m = np.asarray(masking.block_mask(jax.random.key(1), batch, grid, block, ratio))
  assert m.shape == (batch, grid[0] * grid[1]) and m.dtype == bool
  np.testing.assert_array_equal(m.sum(1), masking.num_masked(grid, block, ratio))
  blocks = m.reshape(batch, grid[0] // block[0], block[0], grid[1] // block[1], block[1])
  # Every block is entirely masked or entirely visible.
  assert np.all(blocks.all(axis=(2, 4)) == blocks.any(axis=(2, 4)))
  # Masks are drawn independently per example.
  assert len({r.tobytes() for r in m}) > batch // 2


def test_block_mask_is_uniform_over_blocks():
  m = np.asarray(masking.block_mask(jax.random.key(2), 4000, (14, 14), (2, 2), 0.6))
  freq = m.mean(0)
  np.testing.assert_allclose(freq, 29 / 49, atol=0.04)


def test_mask_indices_partition():
  m = masking.block_mask(jax.random.key(3), 8, (8, 8), (2, 2), 0.5)
  n_masked = masking.num_masked((8, 8), (2, 2), 0.5)
  idx = masking.mask_indices(m, n_masked)
  assert idx.visible.shape == (8, 64 - n_masked) and idx.masked.shape == (8, n_masked)
  for row, vis, msk in zip(np.asarray(m), np.asarray(idx.visible), np.asarray(idx.masked)):
    assert not row[vis].any() and row[msk].all()
    assert sorted(np.concatenate([vis, msk]).tolist()) == list(range(64))
    assert np.all(np.diff(vis) > 0) and np.all(np.diff(msk) > 0)


@pytest.mark.parametrize('n,k', [(16, 4), (36, 5), (16, 15), (9, 1)])
def test_random_split_counts_and_draw(n, k):
  """Count-based: every row has k distinct masked and n - k visible indices,
  and the draw is random_mask's at ratio k / n for the same key."""
  key = jax.random.key(4)
  idx = masking.random_split(key, 64, n, k)
  vis, msk = np.asarray(idx.visible), np.asarray(idx.masked)
  assert vis.shape == (64, n - k) and msk.shape == (64, k)
  for v, m in zip(vis, msk):
    assert sorted(np.concatenate([v, m]).tolist()) == list(range(n))
  ref = masking.mask_indices(masking.random_mask(key, 64, n, k / n), k)
  np.testing.assert_array_equal(msk, ref.masked)
  assert len({tuple(m) for m in msk}) > 1  # not the same subset for every row


@pytest.mark.parametrize('k', [0, 16, -1])
def test_random_split_bad_count(k):
  with pytest.raises(ValueError, match=r'num_masked=.*must be in \[1, 15\]'):
    masking.random_split(jax.random.key(0), 2, 16, k)


def test_gather_patches():
  x = jnp.arange(2 * 5 * 3).reshape(2, 5, 3)
  idx = jnp.array([[4, 0], [1, 2]])
  np.testing.assert_array_equal(gather(x, idx), [[x[0, 4], x[0, 0]],
                                                                  [x[1, 1], x[1, 2]]])


@pytest.mark.parametrize('ratio', [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
  with pytest.raises(ValueError, match='masking ratio must be in'):
    masking.num_masked_blocks(49, ratio)


def test_block_must_divide_grid():
  with pytest.raises(ValueError, match='does not divide'):
    masking.block_grid((14, 14), (3, 3))
