"""A grid of classification runs (batch size x learning rate) and one table.

`python main.py --config=configs/finetune.py:... --workdir=W --sweep` trains
one run per point of `config.sweep` into W/batch{B}_lr{LR}, each the same
loop as a single run (so each resumes from its own checkpoints after a
preemption, and a finished point is not retrained; a preempted point
raises train.Preempted). The points are scored on the examples held out of
the training split (data.held_out_examples, `val/top1`) and never read
eval.split; the best point is chosen on them, and only its parameters are
then scored on eval.split (`train.report`), once. After every point
W/sweep.json ({"rows": [...], "chosen": {...}, "selected_on", "reported_on",
"provenance"}) and W/sweep.md are rewritten.
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
  """Runs (or resumes) every grid point; returns the table's rows (the
  chosen one also holds its `eval/...` numbers)."""
  if 'sweep' not in config:
    raise ConfigError(f'config.objective={config.objective!r} has no sweep block: '
                      '--sweep runs classification configs (configs/finetune.py, '
                      'configs/linear_probe.py)')
  validation.validate(config, jax.device_count(), jax.process_count())
  if not config.data.get('held_out_examples', 0):
    raise ConfigError('--sweep chooses among its points on examples held out of the '
                      'training split, so config.data.held_out_examples must be > 0 (e.g. '
                      '1000; the reported split, config.eval.split, is never used to choose)')
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
    if preemption.anywhere():
      raise train.Preempted(None, f'before sweep point {i + 1}/{len(grid)} (batch {b}, '
                            f'lr {lr:g})')
    c = point_config(config, b, lr, num_examples)
    sub = os.path.join(workdir, point_name(b, lr))
    logging.info('sweep point %d/%d: batch %d, lr %g, %d steps -> %s', i + 1, len(grid),
                 b, lr, c.total_steps, sub)
    scores = train.run_to_end(c, sub, report=False)
    if train.SELECTED not in scores:
      raise ConfigError(f'{sub} finished without {train.SELECTED!r} in its eval.json (it was '
                        'trained before selection on held-out examples): move it away so the '
                        'point is trained again')
    rows.append({'batch_size': b, 'lr': lr, 'steps': c.total_steps,
                 **{k: v for k, v in scores.items() if k.startswith(('val/', 'selected'))}})
    _write(config, workdir, rows, None)
  best = choose(rows)
  c = point_config(config, best['batch_size'], best['lr'], num_examples)
  reported = train.report(c, os.path.join(workdir, point_name(best['batch_size'],
                                                               best['lr'])))
  best.update({k: v for k, v in reported.items() if k.startswith('eval/')})
  _write(config, workdir, rows, best)
  logging.info('sweep done: chose batch %d, lr %g on %s (%.4f); %s top-1 %.4f; table: %s',
               best['batch_size'], best['lr'], train.SELECTED, best[train.SELECTED],
               config.eval.split, best.get('eval/top1', float('nan')),
               os.path.join(workdir, 'sweep.md'))
  return rows


def point_name(batch_size: int, lr: float) -> str:
  return f'batch{batch_size}_lr{lr:g}'


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The row whose selected parameters have the best held-out top-1 (the
  first of ties)."""
  return max(rows, key=lambda r: r[train.SELECTED])


def _write(config, workdir: str, rows: list[dict[str, Any]],
           chosen: dict[str, Any] | None) -> None:
  if jax.process_index() > 0:
    return
  held = config.data.held_out_examples
  selected_on = (f'{held} examples held out of {config.data.split} (data.held_out_examples, '
                 f'class-balanced, subset_seed {config.data.subset_seed})')
  reported_on = f'{config.eval.split} (once, for the chosen point)'
  marked = [dict(r, chosen='*' if r is chosen else '') for r in rows]
  made_by = provenance_lib.record()
  metrics_lib.write_atomic(os.path.join(workdir, 'sweep.json'), json.dumps(
      {'rows': rows, 'chosen': rows.index(chosen) if chosen else None, 'selected_on': selected_on,
       'reported_on': reported_on, 'provenance': made_by}, indent=1) + '\n')
  text = metrics_lib.markdown_table(
      marked, first=('batch_size', 'lr', 'steps', 'val/top1', 'val/top5', 'chosen'))
  text += f'\nChosen on: {selected_on}, by {train.SELECTED}.\n'
  if chosen:
    text += (f'Reported on {reported_on}: batch {chosen["batch_size"]}, lr {chosen["lr"]:g}: '
             f'top-1 {100 * chosen["eval/top1"]:.2f}%, top-5 {100 * chosen["eval/top5"]:.2f}%.'
             '\n')
  metrics_lib.write_atomic(os.path.join(workdir, 'sweep.md'),
                           text + provenance_lib.footer([made_by]))
