r"""Pictures of what an objective does, for a researcher to look at.

RandSAC (`RandSAC.pictures`): one row per image, four panels: the image; its
segments (a colour per segment, partitions told apart by brightness); the
serialisation (early segments dark, late ones bright; the first segment,
never predicted, in red); the reconstruction (every predicted token
replaced by the model's prediction, the first segment kept as it is).

Training writes these into TensorBoard (image summary `pictures`) and as
PNG files into WORKDIR/pictures/ at every evaluation. For any checkpoint:

  python -m ssl_jax.pictures --workdir=workdirs/randsac_tiny [--step=1000] [--num_images=8]
"""

from __future__ import annotations

import colorsys
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SEPARATOR = 2      # pixels between panels
MIN_PANEL = 128    # small images are upscaled (nearest) to at least this


def palette(n: int) -> np.ndarray:
  """[n, 3] distinct colours in [0, 1] (golden-ratio hues)."""
  hues = (np.arange(n) * 0.618033988749895) % 1.0
  return np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues], np.float32)


def token_image(values: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
  """Per-token values [b, n, c] -> [b, gh * patch, gw * patch, c]."""
  b, _, c = values.shape
  x = values.reshape(b, grid[0], 1, grid[1], 1, c)
  x = jnp.broadcast_to(x, (b, grid[0], patch, grid[1], patch, c))
  return x.reshape(b, grid[0] * patch, grid[1] * patch, c)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
  """[b, n, p * p * 3] row-major -> [b, gh * p, gw * p, 3]."""
  b = patches.shape[0]
  x = patches.reshape(b, grid[0], grid[1], patch, patch, 3).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid[0] * patch, grid[1] * patch, 3)


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


def restore(workdir: str, step: int | None):
  """(config, trainer, evaluator, params, step) of a pretraining run's
  checkpoint `step` (None: the latest), for drawing from it. SystemExit
  with a one-line message when there is nothing to restore."""
  import ml_collections

  from ssl_jax import checkpoint as ckpt_lib
  from ssl_jax import train
  from ssl_jax.evaluate.evaluator import Evaluator
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=None, read_only=True)
  steps = checkpointer.all_steps()
  if not steps:
    raise SystemExit(f'error: {workdir} has no checkpoint to draw from')
  step = step if step is not None else max(steps)
  if step not in steps:
    raise SystemExit(f'error: no checkpoint {step} in {workdir}; available: {sorted(steps)}')
  config = ml_collections.ConfigDict(checkpointer.restore_meta(step)['config'])
  source = train.build_source(config)
  trainer = train.Trainer(config, num_classes=source.num_classes)
  evaluator = Evaluator(config, trainer.task, trainer.mesh, source.num_classes)
  params = checkpointer.restore_subtree(step, ('params',), trainer.abstract_state().params)
  checkpointer.close()
  return config, trainer, evaluator, params, step


def main(argv: list[str]) -> None:
  del argv
  from absl import logging
  config, _, evaluator, params, step = restore(FLAGS.workdir, FLAGS.step)
  if not evaluator.draws:
    raise SystemExit(f'error: objective {config.objective!r} has no pictures to draw')
  pictures = evaluator.pictures(params, FLAGS.num_images)
  path = png_path(FLAGS.workdir, step)
  save_png(path, pictures)
  logging.info('wrote %s', path)
  print(path)


def _define_flags():
  from absl import flags
  flags.DEFINE_string('workdir', None, 'A pretraining run\'s --workdir.', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('num_images', 8, 'Images (rows) to draw.')
  return flags.FLAGS


FLAGS: Any = None

if __name__ == '__main__':
  from absl import app
  FLAGS = _define_flags()
  app.run(main)
