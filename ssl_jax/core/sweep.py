"""A grid of classification runs (batch size x learning rate) and one table.

`python main.py --config=configs/finetune.py:... --workdir=W --sweep` trains
one run per point of `config.sweep` into W/batch{B}_lr{LR}, each the same
loop as a single run (so each resumes from its own checkpoints after a
preemption, and a finished point is not retrained; a preempted point
raises train.Preempted), and after every point
rewrites W/sweep.json ({"rows": [...], "provenance": {...}}) and W/sweep.md: one row per point with its final
top-1 / top-5, the best top-1 marked.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from ssl_jax.config.checks import ConfigError
from ssl_jax.core import assembly, train, validation
from ssl_jax.core import metrics as metrics_lib
from ssl_jax.core import provenance as provenance_lib
from ssl_jax.core import workdir as workdir_lib


def points(config: ml_collections.ConfigDict) -> list[tuple[int, float]]:
  return [(int(b), float(lr)) for b in config.sweep.batch_size for lr in config.sweep.lr]


def point_config(config: ml_collections.ConfigDict, batch_size: int, lr: float,
                 num_examples: int) -> ml_collections.ConfigDict:
  """The config of one grid point. With `sweep.epochs`, total_steps covers
  that many epochs of the `num_examples` training examples, and the warmup
  keeps its fraction of the run."""
  c = config.copy_and_resolve_references()
  c.batch_size = batch_size
  c.optimizer.lr = lr
  if config.sweep.epochs:
    total = max(2, math.ceil(config.sweep.epochs * num_examples / batch_size))
    warmup = round(config.optimizer.warmup_steps * total / config.total_steps)
    c.total_steps = total
    c.optimizer.warmup_steps = min(warmup, total - 1)
    c.checkpoint.every = min(config.checkpoint.every, total)
  return c


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Runs (or resumes) every grid point; returns the table's rows."""
  if 'sweep' not in config:
    raise ConfigError(f'config.objective={config.objective!r} has no sweep block: '
                      '--sweep runs classification configs (configs/finetune.py, '
                      'configs/linear_probe.py)')
  validation.validate(config, jax.device_count(), jax.process_count())
  source = assembly.build_source(config)
  grid = points(config)
  for b, lr in grid:  # every point is checked before the first one trains
    validation.validate(point_config(config, b, lr, source.num_examples),
                        jax.device_count(), jax.process_count())
  # SIGTERM between points (each point's run handles its own) stops before the next.
  with train.Preemption() as preemption, workdir_lib.hold(workdir):
    return _run_points(config, workdir, grid, source.num_examples, preemption)


def _run_points(config, workdir: str, grid, num_examples: int,
                preemption) -> list[dict[str, Any]]:
  rows = []
  for i, (b, lr) in enumerate(grid):
    if preemption.requested:
      raise train.Preempted(None, f'before sweep point {i + 1}/{len(grid)} (batch {b}, '
                            f'lr {lr:g})')
    c = point_config(config, b, lr, num_examples)
    sub = os.path.join(workdir, f'batch{b}_lr{lr:g}')
    scores = metrics_lib.final_evaluation(sub, c.total_steps)
    if scores is None:
      logging.info('sweep point %d/%d: batch %d, lr %g, %d steps -> %s', i + 1, len(grid),
                   b, lr, c.total_steps, sub)
      result = train.run(c, sub)
      if result.preempted:
        raise train.Preempted(result.last_step)
      scores = result.evaluation
    rows.append({'batch_size': b, 'lr': lr, 'steps': c.total_steps,
                 **{k: v for k, v in scores.items() if k != 'step'}})
    _write(workdir, rows)
  best = max(rows, key=lambda r: r.get('eval/top1', -1))
  logging.info('sweep done: best top-1 %.4f at batch %d, lr %g; table: %s',
               best.get('eval/top1', float('nan')), best['batch_size'], best['lr'],
               os.path.join(workdir, 'sweep.md'))
  return rows


def _write(workdir: str, rows: list[dict[str, Any]]) -> None:
  if jax.process_index() > 0:
    return
  best = max(range(len(rows)), key=lambda i: rows[i].get('eval/top1', -1))
  marked = [dict(r, best='*' if i == best else '') for i, r in enumerate(rows)]
  made_by = provenance_lib.record()
  metrics_lib.write_atomic(os.path.join(workdir, 'sweep.json'), json.dumps(
      {'rows': rows, 'provenance': made_by}, indent=1) + '\n')
  metrics_lib.write_atomic(os.path.join(workdir, 'sweep.md'), metrics_lib.markdown_table(
      marked, first=('batch_size', 'lr', 'steps', 'eval/top1', 'eval/top5', 'best'))
      + provenance_lib.footer([made_by]))
