"""Position embeddings: learned factorized (rows + columns) and fixed 2D
sine-cosine."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np


class FactorizedPosEmbed(nn.Module):
  """Learned position embeddings factorized into rows and columns.

  PatchFormer 2.1 (after Selfie): "factorized position embeddings ... for the
  X and Y coordinates". `idx` holds row-major patch indices on a (gh, gw) grid;
  the embedding of index i is row[i // gw] + col[i % gw].
  """
  grid: tuple[int, int]
  width: int

  @nn.compact
  def __call__(self, idx: jax.Array) -> jax.Array:
    init = nn.initializers.normal(0.02)
    rows = self.param('row', init, (self.grid[0], self.width))
    cols = self.param('col', init, (self.grid[1], self.width))
    return rows[idx // self.grid[1]] + cols[idx % self.grid[1]]


def sincos_1d(width: int, positions: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
  angles = positions.reshape(-1)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(grid: tuple[int, int], width: int) -> np.ndarray:
  """[gh * gw, width] fixed encodings, row-major: the first half of the
  channels encodes the row, the second the column (MAE's
  get_2d_sincos_pos_embed with its halves swapped: its first half encodes
  the column)."""
  if width % 4:
    raise ValueError(f'sine-cosine position encodings need a width divisible by 4, got {width}')
  rows, cols = np.meshgrid(np.arange(grid[0], dtype=np.float64),
                           np.arange(grid[1], dtype=np.float64), indexing='ij')
  return np.concatenate([sincos_1d(width // 2, rows), sincos_1d(width // 2, cols)],
                        axis=1).astype(np.float32)
