r"""Samples from an autoregressive iGPT checkpoint, as PNG grids in the workdir.

  python -m ssl_jax.sample --workdir=workdirs/igpt_tiny [--step=600] \
      [--num_images=8] [--completions=3] [--temperature=1.0] [--seed=0]

writes, under WORKDIR/samples/:
  step_XXXXXXXX_t1.0_unconditional.png  num_images rows of `completions`
      samples drawn from nothing (the start-of-sequence vector alone);
  step_XXXXXXXX_t1.0_completions.png    one row per evaluation image: the
      image | its palette version | the first half of the reading order
      given (the rest grey) | `completions` samples of the second half.
Colours come from the checkpoint's own palette. --temperature=0: greedy.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import pictures


def sample_grids(objective, params: Any, images: jax.Array, key: jax.Array, *,
                 completions: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
  """(unconditional uint8 [b, H, W', 3], completions uint8 [b, H, W'', 3])
  for the model parameters `params` of an iGPT objective."""
  b = images.shape[0]
  half = objective.n // 2

  @jax.jit
  def draw(params, images, key):
    keys = jax.random.split(key, 2 * completions)
    empty = jnp.zeros((b, 0), jnp.int32)
    free = [objective.to_images(params, objective.generate(params, keys[i], empty,
                                                            temperature=temperature))
            for i in range(completions)]
    tokens = objective.tokens(params, images)
    given = objective.to_images(params, tokens.at[:, half:].set(0))
    shown = jnp.zeros((b, objective.n), bool).at[:, :half].set(True)
    if objective.inverse is not None:
      shown = shown[:, objective.inverse]
    given = jnp.where(shown.reshape(given.shape[:3])[..., None], given, 0.5)
    completed = [objective.to_images(params, objective.generate(
        params, keys[completions + i], tokens[:, :half], temperature=temperature))
                 for i in range(completions)]
    return (pictures.panels(free),
            pictures.panels([images, objective.to_images(params, tokens), given] + completed))

  free, completed = jax.device_get(draw(params, images, key))
  return np.asarray(free), np.asarray(completed)


def main(argv: list[str]) -> None:
  del argv
  import time

  from absl import logging
  config, trainer, evaluator, params, step = pictures.restore(FLAGS.workdir, FLAGS.step)
  objective = getattr(trainer.task, 'objective', None)
  if config.objective != 'igpt' or objective.bert:
    raise SystemExit('error: sampling needs an autoregressive iGPT checkpoint '
                     f'(objective igpt with igpt.objective=\'ar\'); {FLAGS.workdir} holds '
                     f'{config.objective!r}'
                     + (' with the BERT objective' if config.objective == 'igpt' else ''))
  if FLAGS.temperature < 0:
    raise SystemExit(f'error: --temperature={FLAGS.temperature} must be >= 0')
  if evaluator.test is None:
    raise SystemExit('error: the run has no evaluation split to take images from')
  k = min(FLAGS.num_images, config.eval.batch_size)
  batch = next(iter(evaluator._batches(evaluator.test)))  # noqa: SLF001
  images = jax.device_get(batch['image'])[:k]
  start = time.perf_counter()
  free, completed = sample_grids(objective, params['model'], jnp.asarray(images),
                                 jax.random.key(FLAGS.seed), completions=FLAGS.completions,
                                 temperature=FLAGS.temperature)
  logging.info('sampled in %.1f s', time.perf_counter() - start)
  stem = os.path.join(FLAGS.workdir, 'samples', f'step_{step:08d}_t{FLAGS.temperature:g}')
  for name, grid in (('unconditional', free), ('completions', completed)):
    path = f'{stem}_{name}.png'
    pictures.save_png(path, grid)
    print(path)


def _define_flags():
  from absl import flags
  flags.DEFINE_string('workdir', None, 'An iGPT pretraining run\'s --workdir.', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('num_images', 8, 'Rows of each grid.')
  flags.DEFINE_integer('completions', 3, 'Samples per row.')
  flags.DEFINE_float('temperature', 1.0, 'Softmax temperature (0: greedy).')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  return flags.FLAGS


FLAGS: Any = None

if __name__ == '__main__':
  from absl import app
  FLAGS = _define_flags()
  app.run(main)
