r"""The colour palette of iGPT: k-means over RGB values, and (de)quantisation.

iGPT (Step 1) reduces each pixel to one of k = 512 colours: the centroids of
k-means over RGB values scaled to [-1, 1], fitted on a sample of a dataset's
pixels. A palette file is a float32 `.npy` array [k, 3] of centroids in
[-1, 1] (the format of the released `kmeans_centers.npy`, which loads as
is), with a `.json` beside it that says how it was fitted.

Fit one (the data, resolution and file come from an iGPT config):

  python -m ssl_jax.palette --config=configs/igpt.py:tiny
  python -m ssl_jax.palette --config=configs/igpt.py:s \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

`quantise` (nearest centroid) and `dequantise` are jnp functions that run on
the device inside the step.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.config.checks import ConfigError
from ssl_jax.nn.patches import to_signed

DEFAULT_DIR = 'ssl_jax_palettes'  # under the tfds data_dir
_CHUNK = 1 << 16                  # pixels per distance block while fitting


class PaletteError(ConfigError):
  """A palette file that is missing, malformed or of the wrong size."""


# -- (de)quantisation, on the device -------------------------------------------


def _relative_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """[..., k]: |x - c|^2 - |x|^2 = |c|^2 - 2 x.c for every centroid c (the
  same argmin as the squared distance, without |x|^2)."""
  scores = jnp.einsum('...c,kc->...k', x, centroids, precision=jax.lax.Precision.HIGHEST)
  return (centroids * centroids).sum(-1) - 2.0 * scores


def quantise(images: jax.Array, palette: jax.Array) -> jax.Array:
  """int32 [..., H, W]: the index of each pixel's nearest centroid
  (Euclidean, in [-1, 1] RGB), for images [..., H, W, 3] in [0, 1]."""
  x = to_signed(images.astype(jnp.float32))
  return jnp.argmin(_relative_distances(x, palette.astype(jnp.float32)),
                    axis=-1).astype(jnp.int32)


def dequantise(tokens: jax.Array, palette: jax.Array) -> jax.Array:
  """Images [..., 3] in [0, 1] of the centroids of `tokens` [...]."""
  return (jnp.asarray(palette, jnp.float32)[tokens] + 1.0) / 2.0


# -- k-means ---------------------------------------------------------------------


def _nearest(pixels: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(index [n], squared distance [n]) of each pixel's nearest centroid, in
  blocks of _CHUNK pixels (n must be a multiple of it)."""
  def block(x):
    d = (x * x).sum(-1, keepdims=True) + _relative_distances(x, centroids)
    i = jnp.argmin(d, axis=-1)
    return i, jnp.maximum(jnp.take_along_axis(d, i[:, None], -1)[:, 0], 0.0)

  idx, dist = jax.lax.map(block, pixels.reshape(-1, _CHUNK, pixels.shape[-1]))
  return idx.reshape(-1), dist.reshape(-1)


def _kmeans_plus_plus(key: jax.Array, pixels: jax.Array, k: int) -> jax.Array:
  """k-means++ seeding: each next centroid drawn with probability
  proportional to the squared distance to the nearest one so far."""
  n = pixels.shape[0]
  first = pixels[jax.random.randint(key, (), 0, n)]
  centroids = jnp.zeros((k, pixels.shape[1]), pixels.dtype).at[0].set(first)
  dist = ((pixels - first) ** 2).sum(-1)

  def body(i, carry):
    centroids, dist = carry
    p = jnp.where(dist.sum() > 0, dist / jnp.maximum(dist.sum(), 1e-30), 1.0 / n)
    pick = pixels[jax.random.choice(jax.random.fold_in(key, i), n, p=p)]
    return centroids.at[i].set(pick), jnp.minimum(dist, ((pixels - pick) ** 2).sum(-1))

  centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, dist))
  return centroids


def kmeans(pixels: np.ndarray, k: int, *, iterations: int, seed: int
           ) -> tuple[np.ndarray, dict[str, float]]:
  """(centroids [k, 3] float32, stats) of Lloyd's k-means from k-means++
  seeds, on pixels [n, 3] in [-1, 1]. A cluster left empty keeps its
  centroid. Deterministic for a given (pixels, k, iterations, seed)."""
  pixels = np.asarray(pixels, np.float32)
  n = len(pixels)
  if n < k:
    raise PaletteError(f'k-means with k={k} needs at least {k} pixels, got {n}')
  padded = -(-n // _CHUNK) * _CHUNK  # whole blocks; padding weighs 0
  weights = np.zeros(padded, np.float32)
  weights[:n] = 1.0
  pixels = np.resize(pixels, (padded, pixels.shape[1]))

  @jax.jit
  def fit(pixels, weights, key):
    centroids = _kmeans_plus_plus(key, pixels[:n], k)

    def step(centroids, _):
      idx, dist = _nearest(pixels, centroids)
      sums = jax.ops.segment_sum(pixels * weights[:, None], idx, num_segments=k)
      counts = jax.ops.segment_sum(weights, idx, num_segments=k)
      new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)
      return new, ((dist * weights).sum() / weights.sum(), (counts == 0).sum())

    centroids, (inertia, empty) = jax.lax.scan(step, centroids, None, length=iterations)
    _, dist = _nearest(pixels, centroids)
    return centroids, inertia, empty, (dist * weights).sum() / weights.sum()

  centroids, inertia, empty, final = jax.device_get(
      fit(jnp.asarray(pixels), jnp.asarray(weights), jax.random.key(seed)))
  stats = {'mean_squared_error': float(final),
           'mean_squared_error_first_iteration': float(inertia[0]),
           'empty_clusters_last_iteration': int(empty[-1])}
  return np.asarray(centroids, np.float32), stats


# -- files -----------------------------------------------------------------------


def default_path(data_name: str, data_dir: str | None, split: str, image_size: int,
                 k: int) -> str:
  """Where the palette of a dataset is kept when a config names none:
  DATA_DIR/ssl_jax_palettes/NAME_SPLIT_SIZEpx_kK.npy."""
  import tensorflow_datasets as tfds
  root = data_dir or tfds.core.constants.DATA_DIR
  safe = ''.join(ch if ch.isalnum() or ch in '-_.' else '-' for ch in f'{data_name}_{split}')
  return os.path.join(root, DEFAULT_DIR, f'{safe}_{image_size}px_k{k}.npy')


def load(path: str, k: int) -> np.ndarray:
  """The palette [k, 3] float32 in `path`; PaletteError names what is wrong."""
  import tensorflow as tf
  if not tf.io.gfile.exists(path):
    raise PaletteError(f'palette file {path} does not exist: fit one with '
                       '`python -m ssl_jax.palette --config=<your iGPT config>` (or set '
                       'igpt.palette.fit_if_missing=True)')
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  if not data.startswith(b'\x93NUMPY'):
    raise PaletteError(f'palette file {path} is not a .npy array (no NumPy header): write '
                       'one with numpy.save or `python -m ssl_jax.palette`')
  try:
    array = np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # noqa: BLE001 (a damaged file)
    raise PaletteError(f'palette file {path} is not a readable .npy array: '
                       f'{type(e).__name__}: {e}') from None
  if array.ndim != 2 or array.shape[1] != 3:
    raise PaletteError(f'palette file {path} holds an array of shape {array.shape}: must be '
                       f'[k, 3] RGB centroids in [-1, 1]')
  if array.shape[0] != k:
    raise PaletteError(f'palette file {path} has {array.shape[0]} colours, but the model\'s '
                       f'vocabulary is igpt.vocab_size={k}: fit a palette with k={k} or set '
                       f'igpt.vocab_size={array.shape[0]}')
  if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
    raise PaletteError(f'palette file {path} must hold finite floats; got dtype {array.dtype}'
                       + ('' if not np.issubdtype(array.dtype, np.floating) else
                          ' with NaN or Inf'))
  if array.min() < -1.0 - 1e-3 or array.max() > 1.0 + 1e-3:
    raise PaletteError(f'palette file {path} has values in [{array.min():.3f}, '
                       f'{array.max():.3f}]: centroids must be RGB scaled to [-1, 1]')
  return array.astype(np.float32)


def fingerprint(palette: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(palette, np.float32).tobytes()).hexdigest()[:16]


def save(path: str, palette: np.ndarray, info: dict[str, Any]) -> None:
  """Writes the palette (.npy) and how it was fitted (.json), each
  atomically (a temporary file renamed), on any filesystem tf.io.gfile knows."""
  import tensorflow as tf
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(palette, np.float32), allow_pickle=False)
  info = dict(info, fingerprint=fingerprint(palette), k=int(len(palette)))
  for target, data in ((os.path.splitext(path)[0] + '.json',
                        json.dumps(info, indent=2, sort_keys=True).encode()),
                       (path, buffer.getvalue())):
    tmp = f'{target}.tmp{os.getpid()}'
    with tf.io.gfile.GFile(tmp, 'wb') as f:
      f.write(data)
    tf.io.gfile.rename(tmp, target, overwrite=True)


def sample_pixels(config, *, num_images: int, num_pixels: int, seed: int) -> np.ndarray:
  """[num_pixels, 3] in [-1, 1]: pixels drawn uniformly from `num_images`
  images of config.data's split (chosen at random, seeded), seen as the model
  sees them (resized and centre-cropped to data.image_size)."""
  from ssl_jax.data import pipeline
  source = pipeline.make_source(config.data.name, data_dir=config.data.data_dir,
                                split=config.data.split,
                                skip_bad_images=config.data.get('skip_bad_images', False))
  rng = np.random.default_rng(seed)
  count = min(num_images, source.num_examples)
  ids = np.sort(rng.choice(source.num_examples, count, replace=False))
  subset = pipeline.SubsetSource(source, ids, f'{count} images')
  batches = pipeline.iterate(subset, seed=seed, global_batch_size=min(256, count),
                             start_step=0, image_size=config.data.image_size, train=False)
  chunks = []
  for batch in batches:
    chunks.append(batch['image'][batch['valid']].reshape(-1, 3))
  pixels = to_signed(np.concatenate(chunks))
  take = rng.choice(len(pixels), min(num_pixels, len(pixels)), replace=False)
  return pixels[np.sort(take)].astype(np.float32)


def fit_for_config(config, path: str) -> np.ndarray:
  """Fits the palette of an iGPT config (igpt.palette.*) and writes it to
  `path`; returns it."""
  p = config.igpt.palette
  start = time.perf_counter()
  pixels = sample_pixels(config, num_images=p.fit_images, num_pixels=p.fit_pixels,
                         seed=p.fit_seed)
  centroids, stats = kmeans(pixels, config.igpt.vocab_size, iterations=p.fit_iterations,
                            seed=p.fit_seed)
  info = dict(stats, data=config.data.name, split=config.data.split,
              image_size=config.data.image_size, images=p.fit_images,
              pixels=int(len(pixels)), iterations=p.fit_iterations, seed=p.fit_seed,
              seconds=round(time.perf_counter() - start, 1))
  save(path, centroids, info)
  return centroids


def main(argv: list[str]) -> None:
  del argv
  from absl import logging

  from ssl_jax.data import pipeline
  config = _CONFIG.value
  if config.get('objective') != 'igpt':
    raise SystemExit(f'error: --config must be an iGPT config (objective \'igpt\'), got '
                     f'{config.get("objective")!r}')
  path = resolve_path(config)
  if os.path.exists(path) and not _FORCE.value:
    raise SystemExit(f'error: {path} exists; pass --force to fit it again')
  try:
    centroids = fit_for_config(config, path)
  except (pipeline.DataError, ConfigError) as e:
    raise SystemExit(f'error: {e}') from None
  logging.info('wrote %s (%d colours, fingerprint %s)', path, len(centroids),
               fingerprint(centroids))
  print(path)


def resolve_path(config) -> str:
  """config.igpt.palette.path, or the dataset's default path when it is ''."""
  p = config.igpt.palette
  if p.path:
    return p.path
  return default_path(config.data.name, config.data.data_dir, config.data.split,
                      config.data.image_size, config.igpt.vocab_size)


_CONFIG: Any = None
_FORCE: Any = None


def cli() -> None:
  """`python -m ssl_jax.methods.igpt.palette --config=...` (also `python -m
  ssl_jax.palette`)."""
  global _CONFIG, _FORCE
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'An iGPT config file[:variant].',
                                            lock_config=True)
  _FORCE = flags.DEFINE_bool('force', False, 'Overwrite an existing palette file.')
  flags.mark_flags_as_required(['config'])
  app.run(main)


if __name__ == '__main__':
  cli()
