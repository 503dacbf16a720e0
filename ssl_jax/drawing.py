"""Drawing what a method does, for a researcher to look at: panels side by
side, distinct colours, PNG grids (any filesystem tf.io.gfile knows).

Methods draw their pictures with these (e.g. image | segments | order |
reconstruction); the loop writes them into TensorBoard (image
summary `pictures`) and WORKDIR/pictures/ at every evaluation, and
`python -m ssl_jax.pictures --workdir=W` draws them for any checkpoint.
"""

from __future__ import annotations

import colorsys
import os

import jax
import jax.numpy as jnp
import numpy as np

SEPARATOR = 2      # pixels between panels
MIN_PANEL = 128    # small images are upscaled (nearest) to at least this


def colours(n: int) -> np.ndarray:
  """[n, 3] distinct colours in [0, 1] (golden-ratio hues)."""
  hues = (np.arange(n) * 0.618033988749895) % 1.0
  return np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues], np.float32)


def panels(rows: list[jax.Array]) -> jax.Array:
  """Panels [b, H, W, 3] in [0, 1], side by side with white separators,
  upscaled to at least MIN_PANEL pixels -> uint8 [b, H', W', 3]."""
  b, h = rows[0].shape[:2]
  scale = max(1, -(-MIN_PANEL // h))
  out = []
  for i, p in enumerate(rows):
    p = jnp.repeat(jnp.repeat(jnp.clip(p, 0.0, 1.0), scale, axis=1), scale, axis=2)
    if i:
      out.append(jnp.ones((b, h * scale, SEPARATOR, 3)))
    out.append(p)
  return (jnp.concatenate(out, axis=2) * 255.0 + 0.5).astype(jnp.uint8)


def mosaic(tiles: jax.Array, size: tuple[int, int]) -> jax.Array:
  """tiles [b, 4, p, p, 3] -> [b, H, W, 3] (size): a 2 x 2 mosaic, each tile
  resized (nearest) to H/2 x W/2."""
  b = tiles.shape[0]
  h, w = size[0] // 2, size[1] // 2
  x = jax.image.resize(tiles, (b, 4, h, w, tiles.shape[-1]), 'nearest')
  x = x.reshape(b, 2, 2, h, w, -1).transpose(0, 1, 3, 2, 4, 5)
  out = x.reshape(b, 2 * h, 2 * w, -1)
  return jnp.pad(out, ((0, 0), (0, size[0] - 2 * h), (0, size[1] - 2 * w), (0, 0)),
                 constant_values=1.0)


def grid_image(pictures: np.ndarray) -> np.ndarray:
  """[k, H, W, 3] rows -> one [k * (H + sep) - sep, W, 3] image."""
  k, h, w, _ = pictures.shape
  out = np.full((k * (h + SEPARATOR) - SEPARATOR, w, 3), 255, np.uint8)
  for i, p in enumerate(pictures):
    out[i * (h + SEPARATOR):i * (h + SEPARATOR) + h] = p
  return out


def save_png(path: str, pictures: np.ndarray) -> None:
  """Writes the rows of `pictures` [k, H, W, 3] uint8 as one PNG (any
  filesystem tf.io.gfile knows, e.g. gs://)."""
  import tensorflow as tf
  data = tf.io.encode_png(grid_image(np.asarray(pictures))).numpy()
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def png_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, 'pictures', f'step_{step:08d}.png')
