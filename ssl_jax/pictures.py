r"""Pictures of what a method does, for any checkpoint of a run whose method
draws them (`Method.draws_pictures`), as one PNG in WORKDIR/pictures/:

  python -m ssl_jax.pictures --workdir=workdirs/randsac_tiny [--step=1000] [--num_images=8]

Training writes the same pictures into TensorBoard and WORKDIR/pictures/ at
every evaluation.
"""

from __future__ import annotations

from typing import Any


def main(argv: list[str]) -> None:
  del argv
  from absl import logging

  from ssl_jax import api, drawing
  from ssl_jax.config.checks import ConfigError
  from ssl_jax.core.checkpoint import CheckpointError
  from ssl_jax.data import DataError
  try:
    run, params, state, step = api.restore_run(FLAGS.workdir, FLAGS.step)
  except (ConfigError, CheckpointError, DataError) as e:
    raise SystemExit(f'error: {e}') from None
  if not run.evaluator.draws:
    raise SystemExit(f'error: method {run.config.objective!r} has no pictures to draw')
  pictures = run.evaluator.pictures(params, state, FLAGS.num_images)
  path = drawing.png_path(FLAGS.workdir, step)
  drawing.save_png(path, pictures)
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
