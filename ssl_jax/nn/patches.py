"""Patches and tokens: cutting images into patches and back, gathering
tokens by index, drawing per-token values as images. Row-major everywhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p) * (W/p), p, p, C], row-major, stride = p."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch, patch, c)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
  """[b, n, p * p * 3] row-major -> [b, gh * p, gw * p, 3]."""
  b = patches.shape[0]
  x = patches.reshape(b, grid[0], grid[1], patch, patch, 3).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid[0] * patch, grid[1] * patch, 3)


def filled_image(patches: jax.Array, cells: jax.Array, fill: jax.Array,
                 grid: tuple[int, int]) -> jax.Array:
  """The image [b, gh * p, gw * p, 3] of patches [b, n, p, p, 3] with the
  patches at cells [b, k] replaced by fill [b, k, p, p, 3]."""
  b, n, p = patches.shape[:3]
  x = patches.at[jnp.arange(b)[:, None], cells].set(fill)
  return unpatchify(x.reshape(b, n, -1), grid, p)


def masked_image(patches: jax.Array, cells: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """The image of patches [b, n, p, p, 3] with the patches at cells [b, k] grey."""
  grey = jnp.full(cells.shape + patches.shape[2:], 0.5, patches.dtype)
  return filled_image(patches, cells, grey, grid)


def token_image(values: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
  """Per-token values [b, n, c] -> [b, gh * patch, gw * patch, c]."""
  b, _, c = values.shape
  x = values.reshape(b, grid[0], 1, grid[1], 1, c)
  x = jnp.broadcast_to(x, (b, grid[0], patch, grid[1], patch, c))
  return x.reshape(b, grid[0] * patch, grid[1] * patch, c)


def gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [batch, n, ...] gathered at idx [batch, m] -> [batch, m, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def to_signed(x: jax.Array) -> jax.Array:
  """Pixels in [0, 1] -> [-1, 1] (what every network reads)."""
  return x * 2.0 - 1.0


NORM_PIX_EPS = 1e-6


def patch_vectors(images: jax.Array, patch: int) -> jax.Array:
  """Images in [0, 1], [B, H, W, C] -> patches in [-1, 1], [B, n, p * p * C]."""
  x = patchify(to_signed(images), patch)
  return x.reshape(x.shape[:2] + (-1,))


def normalise_patches(patches: jax.Array) -> jax.Array:
  """[..., d] -> each vector minus its mean, over its standard deviation
  (MAE's norm_pix_loss target: all pixels and channels of a patch)."""
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def denormalise_patches(predicted: jax.Array, true: jax.Array) -> jax.Array:
  """Normalised-pixel predictions [..., d] back to pixels with the
  statistics of the true patches [..., d] (for pictures only: the model
  never sees them)."""
  return (predicted * jnp.sqrt(true.var(-1, keepdims=True) + NORM_PIX_EPS)
          + true.mean(-1, keepdims=True))
