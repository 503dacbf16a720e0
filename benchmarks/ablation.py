"""The engine of the ablation benchmarks (benchmarks/dv2.py,
benchmarks/multitask_vit.py): rows of `tiny` pretraining runs, each over
seeds, measured the same way with the loop and configs users run.

Per row and seed (WORKDIR/rowNN/seedS/, every run resumable, a finished one
read back; the unit's measurements are then kept in the benchmark's ledger,
benchmarks/results/NAME.json by default, so a rerun on any machine skips
every row and seed already measured: benchmarks/ledger.py):
* pretraining: configs/METHOD.py:VARIANT with the row's overrides and the
  seed (a random-init row has none: its network as the seed initialises it);
* linear probe: `--layer_sweep` (ssl_jax.core.feature_probe) on
  configs/linear_probe.py:METHOD_VARIANT, every representation probed, each
  one's l2 and the representation chosen on the examples held out of the
  training split; reported: the chosen one's test top-1 and its kNN top-1
  (nothing chosen by kNN);
* fine-tune: configs/finetune.py:METHOD_VARIANT (METHOD_tiny_scratch for a
  random-init row) on the class-balanced 10% of the labels, test top-1 of
  its last step (nothing chosen).
Step times come last, every pretraining row's compiled step timed back to
back in one process (benchmarks/patchformer_step.py's timer on a random
batch of the row's shapes): the runs may share the cores with other work,
one process's figures compare as ratios.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import os
import time
from typing import Any

from absl import logging

from benchmarks import ledger as ledger_lib
from benchmarks.ledger import Ledger, LedgerError
from configs import common, finetune, linear_probe


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  method: str       # configs/METHOD.py
  variant: str      # its pretraining variant; METHOD_VARIANT names the probe and fine-tune
  overrides: tuple[tuple[str, Any], ...] = ()  # dotted keys of the pretraining config
  random: bool = False  # no pretraining: the network as initialised


def set_key(config, key: str, value) -> None:
  block = config
  *head, last = key.split('.')
  for part in head:
    block = block[part]
  block[last] = value


def adjusted(config, quick: bool, data_dir: str | None):
  if quick:
    common.shortened(config)
  if data_dir:
    config.data.data_dir = data_dir
  return config


def pretrain_config(row: Row, seed: int, quick: bool, data_dir: str | None):
  config = importlib.import_module(f'configs.{row.method}').get_config(row.variant)
  for key, value in row.overrides:
    set_key(config, key, value)
  config.seed = seed
  return adjusted(config, quick, data_dir)


def _layer_sweep(config, workdir: str) -> dict:
  from ssl_jax.core import feature_probe
  rows = feature_probe.rows_of(config, workdir)
  return next(r for r in rows if r['chosen'])


def measure(row: Row, index: int, seed: int, *, workdir: str, quick: bool,
            data_dir: str | None) -> dict:
  """{'probe', 'knn', 'representation', 'finetune'} of one row and seed."""
  from ssl_jax.core import train
  root = os.path.join(workdir, f'row{index:02d}', f'seed{seed}')
  pretrain = pretrain_config(row, seed, quick, data_dir)
  if not row.random:
    t0 = time.perf_counter()
    train.run_to_end(pretrain, os.path.join(root, 'pretrain'))
    logging.info('%s seed %d pretrained in %.0f s', row.name, seed, time.perf_counter() - t0)
  init = None if row.random else os.path.join(root, 'pretrain')
  probe = adjusted(linear_probe.get_config(f'{row.method}_{row.variant}'), quick, data_dir)
  probe.backbone[pretrain.objective] = pretrain[pretrain.objective]  # the row's network
  probe.seed, probe.init.workdir = seed, init
  chosen = _layer_sweep(probe, os.path.join(root, 'layers'))
  tune = adjusted(finetune.get_config(f'{row.method}_tiny_scratch' if row.random
                                      else f'{row.method}_{row.variant}'), quick, data_dir)
  tune.backbone[pretrain.objective] = pretrain[pretrain.objective]
  tune.seed, tune.init.workdir, tune.data.label_fraction = seed, init, 0.1
  return {'probe': chosen['top1'], 'knn': chosen.get('knn_top1'),
          'representation': chosen['representation'],
          'finetune': train.run_to_end(tune, os.path.join(root, 'finetune'))['eval/top1']}


def step_ms(row: Row, steps: int, quick: bool, data_dir: str | None) -> float:
  from benchmarks.patchformer_step import time_compiled_step
  dt, _, _ = time_compiled_step(pretrain_config(row, 0, quick, data_dir), steps)
  return 1e3 * dt


def picked_rows(given: list[str], count: int) -> list[int]:
  """--rows values as row numbers (all when empty); ValueError names a bad one."""
  bad = [r for r in given if not r.isdigit() or int(r) >= count]
  if bad:
    raise ValueError(f'--rows={",".join(given)}: {", ".join(bad)} is not a row '
                     f'(0-{count - 1}; --list prints them)')
  return [int(r) for r in given] or list(range(count))


def spec(row: Row) -> dict[str, Any]:
  """What a ledger entry of `row` measured (an entry of another is refused)."""
  return {'method': row.method, 'variant': row.variant,
          'overrides': [list(kv) for kv in row.overrides], 'random': row.random}


def run(rows: list[Row], picked: list[int], *, seeds: int, workdir: str, quick: bool,
        data_dir: str | None, timing_steps: int, knn: bool, ledger: Ledger) -> str:
  """Measures the picked rows over seeds 0..seeds-1 (each row and seed read
  from `ledger` when it holds them, else measured and added to it), prints
  each row as it completes, and returns the markdown table (also
  WORKDIR/benchmark.md)."""
  from ssl_jax.core import seeds as seeds_lib

  def top1(values: list[float]) -> str:
    return seeds_lib.format_spread(seeds_lib.spread(values), percent=True)

  ledger.check({f'{rows[i].name}/seed': spec(rows[i]) for i in picked})
  measured = {}
  for i in picked:
    got = [ledger.measured(
        f'{rows[i].name}/seed{s}', spec(rows[i]),
        lambda i=i, s=s: measure(rows[i], i, s, workdir=workdir, quick=quick,
                                 data_dir=data_dir))
           for s in range(seeds)]
    chosen = collections.Counter(g['representation'] for g in got)
    cells = [f'{top1([g["probe"] for g in got])} '
             f'({", ".join(f"{r} x{n}" for r, n in sorted(chosen.items()))})']
    if knn:
      cells.append(top1([g['knn'] for g in got]))
    cells.append(top1([g['finetune'] for g in got]))
    measured[i] = cells
    print(f'| {rows[i].name} | {" | ".join(cells)} |', flush=True)
  ms = {i: step_ms(rows[i], timing_steps, quick, data_dir) for i in picked
        if timing_steps and not rows[i].random}
  head = ['row', 'linear probe top-1 % (chosen representation x seeds)']
  head += ['kNN top-1 % (same representation)'] if knn else []
  head += ['fine-tune 10% labels top-1 %', 'pretraining ms/step']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for i in picked:
    lines.append(f'| {rows[i].name} | {" | ".join(measured[i])} | '
                 f'{f"{ms[i]:.0f}" if i in ms else "-"} |')
  table = '\n'.join(lines) + '\n' + ''.join(
      f'\nMeasured by: {p}' for p in ledger.producers(
          f'{rows[i].name}/seed{s}' for i in picked for s in range(seeds)))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'benchmark.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  return table


def script(rows_of, *, name: str, default_workdir: str, title: str, knn: bool):
  """Defines the benchmark flags (--workdir, --ledger, --data_dir, --quick,
  --seeds, --rows, --timing_steps, --list) and returns the absl main that
  runs `rows_of()` with them."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  workdir = flags.DEFINE_string('workdir', default_workdir, 'Where every run goes.')
  ledger = flags.DEFINE_string(
      'ledger', os.path.join(RESULTS, f'{name}.json'),
      'The JSON file of finished rows and seeds (read, then extended); "" keeps none. '
      'Default: the committed one (a --quick run keeps none unless given one).')
  data_dir = flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: tfds default).')
  quick = flags.DEFINE_bool('quick', False, 'Every run 4x shorter (a smoke run).')
  seeds = flags.DEFINE_integer('seeds', 3, 'Seeds per row (mean ± std over them).')
  picked = flags.DEFINE_list('rows', [], 'Row numbers to run (default: all); see --list.')
  timing = flags.DEFINE_integer(
      'timing_steps', 20, 'Steps timed per row for the ms/step column (0: no column).')
  listed = flags.DEFINE_bool('list', False, 'Print the rows and their overrides, run nothing.')

  def main(argv):
    del argv
    from ssl_jax.core import console, provenance
    rows = rows_of()
    if listed.value:
      for i, row in enumerate(rows):
        what = 'random init' if row.random else dict(row.overrides)
        print(f'{i:2d} {row.name}: configs/{row.method}.py:{row.variant} {what}')
      return
    try:
      chosen = picked_rows(picked.value, len(rows))
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    print('produced by:', provenance.line(), flush=True)
    book = ledger_lib.from_flag(ledger, quick=quick.value,
                                setting={'benchmark': name, 'quick': quick.value})
    console.quiet_library_logs()
    t0 = time.perf_counter()
    try:
      table = run(rows, chosen, seeds=seeds.value, workdir=workdir.value, quick=quick.value,
                  data_dir=data_dir.value, timing_steps=timing.value, knn=knn, ledger=book)
    except LedgerError as e:
      raise app.UsageError(str(e)) from None
    print(f'\n{title}; mean ± std over {seeds.value} seeds (pretraining and probe seeds vary '
          f'together); {time.perf_counter() - t0:.0f} s in this invocation\n')
    print(table)

  return main
