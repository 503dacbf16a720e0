r"""Samples from a checkpoint of a method that samples (`Method.samples`:
autoregressive generative models), as PNG grids in the workdir.

  python -m ssl_jax.sample --workdir=workdirs/igpt_tiny [--step=600] \
      [--num_images=8] [--completions=3] [--temperature=1.0] [--seed=0]

writes WORKDIR/samples/step_XXXXXXXX_tT_NAME.png for each grid the method
draws (`Method.sample_grids`, e.g. `unconditional` samples and
`completions` of the evaluation images).
--temperature=0: greedy.
"""

from __future__ import annotations

import os
from typing import Any


def main(argv: list[str]) -> None:
  del argv
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  from absl import logging

  from ssl_jax import api, drawing
  from ssl_jax.config.checks import ConfigError
  from ssl_jax.tasks import is_classification
  from ssl_jax.core.checkpoint import CheckpointError
  from ssl_jax.data import DataError
  try:
    run, params, state, step = api.restore_run(FLAGS.workdir, FLAGS.step)
  except (ConfigError, CheckpointError, DataError) as e:
    raise SystemExit(f'error: {e}') from None
  if is_classification(run.config) or not run.method.samples:
    raise SystemExit(f'error: {FLAGS.workdir} holds a {run.config.objective!r} model that '
                     'cannot sample (its method must offer sampling: Method.samples, e.g. an '
                     'autoregressive model)')
  if FLAGS.temperature < 0:
    raise SystemExit(f'error: --temperature={FLAGS.temperature} must be >= 0')
  if run.evaluator.test is None:
    raise SystemExit('error: the run has no evaluation split to take images from')
  k = min(FLAGS.num_images, run.config.eval.batch_size)
  images = jnp.asarray(run.evaluator.eval_images(k))
  method = run.method
  draw = jax.jit(lambda params, state, images, key: method.sample_grids(
      params, images, key, completions=FLAGS.completions, temperature=FLAGS.temperature,
      state=state))
  start = time.perf_counter()
  grids = jax.device_get(draw(params['model'], state, images, jax.random.key(FLAGS.seed)))
  logging.info('sampled in %.1f s', time.perf_counter() - start)
  stem = os.path.join(FLAGS.workdir, 'samples', f'step_{step:08d}_t{FLAGS.temperature:g}')
  for name, grid in grids.items():
    path = f'{stem}_{name}.png'
    drawing.save_png(path, np.asarray(grid))
    print(path)


def _define_flags():
  from absl import flags
  flags.DEFINE_string('workdir', None, 'A pretraining run\'s --workdir.', required=True)
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
