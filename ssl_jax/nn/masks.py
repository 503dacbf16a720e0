"""Masks drawn on the device from a PRNG key, with static shapes.

Masks are sampled inside the jitted train step, independently per example,
with a fixed count of masked patches, so every shape is static.

PatchFormer (section 2.1) draws its masks on a coarse grid (7x7 for a 14x14
patch grid) and upsamples them with nearest-neighbour upsampling, "to ensure
that our masks are contiguous and blocky". `block_mask` is that construction
for any grid and block size; `random_mask` (Selfie, MAE, fine-tuning) is the
special case block = 1, and `random_split` the same draw for a count of
masked patches, as index sets. `mask_indices` turns a mask into the visible and
masked index sets that `ssl_jax.nn.patches.gather` reads.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def num_masked_blocks(num_blocks: int, ratio: float) -> int:
  """The fixed count of masked blocks: round(ratio * num_blocks), in [1, n-1].

  At least one block is masked and one kept, so both index sets are non-empty.
  """
  if not 0.0 < ratio < 1.0:
    raise ValueError(f'masking ratio must be in (0, 1), got {ratio}')
  if num_blocks < 2:
    raise ValueError(f'need at least 2 blocks to mask, got {num_blocks}')
  return min(max(int(round(ratio * num_blocks)), 1), num_blocks - 1)


def block_grid(grid: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
  """The coarse grid on which blocks are drawn; `block` must divide `grid`."""
  (gh, gw), (bh, bw) = grid, block
  if gh % bh or gw % bw:
    raise ValueError(f'block {block} does not divide the patch grid {grid}')
  return gh // bh, gw // bw


def num_masked(grid: tuple[int, int], block: tuple[int, int], ratio: float) -> int:
  """How many patches `block_mask` masks per example (a static count)."""
  ch, cw = block_grid(grid, block)
  return num_masked_blocks(ch * cw, ratio) * block[0] * block[1]


def block_mask(key: jax.Array, batch: int, grid: tuple[int, int],
               block: tuple[int, int], ratio: float) -> jax.Array:
  """Boolean masks [batch, gh * gw] (True = masked), blocky and contiguous.

  A coarse (gh/bh, gw/bw) grid gets exactly `num_masked_blocks` masked cells
  per example (a uniformly random subset), then each cell is upsampled by
  nearest neighbour to a bh x bw block of patches. Row-major patch order.
  """
  ch, cw = block_grid(grid, block)
  coarse = _subsets(key, batch, ch * cw, num_masked_blocks(ch * cw, ratio))
  fine = jnp.broadcast_to(coarse.reshape(batch, ch, 1, cw, 1),
                          (batch, ch, block[0], cw, block[1]))
  return fine.reshape(batch, grid[0] * grid[1])


def _subsets(key: jax.Array, batch: int, n: int, k: int) -> jax.Array:
  """[batch, n] booleans, each row a uniformly random k-subset: the ranks
  of i.i.d. uniforms below k."""
  noise = jax.random.uniform(key, (batch, n))
  return jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1) < k


def random_mask(key: jax.Array, batch: int, num_patches: int,
                ratio: float) -> jax.Array:
  """Boolean masks [batch, num_patches] with a fixed count, no block structure."""
  return block_mask(key, batch, (1, num_patches), (1, 1), ratio)


class MaskIndices(NamedTuple):
  """Static-shape index sets of a mask: [batch, n_visible] and [batch, n_masked]."""
  visible: jax.Array
  masked: jax.Array


def mask_indices(mask: jax.Array, n_masked: int) -> MaskIndices:
  """Splits each row of a boolean mask with exactly `n_masked` Trues into
  sorted visible and masked patch indices (row-major order kept)."""
  n = mask.shape[-1]
  order = jnp.argsort(mask, axis=-1, stable=True)  # False (visible) first.
  return MaskIndices(visible=order[:, :n - n_masked], masked=order[:, n - n_masked:])


def random_split(key: jax.Array, batch: int, num_patches: int,
                 num_masked: int) -> MaskIndices:
  """Exactly `num_masked` of `num_patches` masked per example, no block
  structure, as index sets (Selfie's and DV2's Q of M): the same draw as
  `random_mask` at ratio num_masked / num_patches, without going through
  a ratio and its rounding."""
  if not 1 <= num_masked < num_patches:
    raise ValueError(f'num_masked={num_masked}: must be in [1, {num_patches - 1}] '
                     f'(of {num_patches} patches)')
  return mask_indices(_subsets(key, batch, num_patches, num_masked), num_masked)


def describe(grid: tuple[int, int], block: tuple[int, int], ratio: float) -> str:
  """A one-line account of the counts, e.g. for logs and docstrings."""
  ch, cw = block_grid(grid, block)
  n = grid[0] * grid[1]
  m = num_masked(grid, block, ratio)
  return (f'{ch}x{cw} block grid, {num_masked_blocks(ch * cw, ratio)} of {ch * cw} '
          f'blocks masked -> {m} of {n} patches masked ({m / n:.1%}), {n - m} visible')
