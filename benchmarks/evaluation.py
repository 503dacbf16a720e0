r"""Representation quality on the built-in dataset: a method's pretrained
`tiny` network vs the same network randomly initialised vs raw pixels, each
number over several seeds.

Pretrains configs/METHOD.py:tiny (--method, PatchFormer by default; or
reuses a finished pretraining in WORKDIR/pretrain), then trains, with the
same loop and configs as users do (`--seeds` of ssl_jax.core.seeds for each
cell):

* a linear probe (configs/linear_probe.py:METHOD_tiny) of the pretrained
  and of the randomly initialised backbone, and one on raw pixels
  (configs/linear_probe.py:pixels_tiny, at the method's image size);
* a fine-tune of the pretrained backbone (configs/finetune.py:METHOD_tiny)
  and one of the randomly initialised backbone (configs/finetune.py:
  METHOD_tiny_scratch: the supervised-from-scratch ceiling the probes are
  read against); PatchFormer's and RandSAC's two share one short recipe;

each on all the training labels and on the class-balanced 10% split, and
prints one table of top-1 on the test split, mean ± sample std over the
seeds with their number (also WORKDIR/benchmark.md). --vary=probe (the
default) varies the probe's / fine-tune's seed over one pretraining run;
--vary=both pretrains once per seed and probes seed s from pretraining s.
Every run resumes from its own workdir, so an interrupted benchmark picks up
where it stopped.

  python benchmarks/evaluation.py --workdir=/tmp/ssl_jax_eval_bench --seeds=3
  python benchmarks/evaluation.py --method=randsac --workdir=/tmp/ssl_jax_eval_randsac

PatchFormer: about an hour per seed on 2 CPU cores; --quick shortens every run 4x (a
smoke run, not a measurement). The table measured with it is in the README
(Evaluation).
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import common, finetune, linear_probe  # noqa: E402

_METHODS = ('patchformer', 'randsac', 'igpt')
_METHOD = flags.DEFINE_enum('method', 'patchformer', list(_METHODS),
                            'Whose tiny pretraining, probes and fine-tunes.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ssl_jax_eval_bench', 'Where every run goes.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: tfds default).')
_QUICK = flags.DEFINE_bool('quick', False, 'Every run 4x shorter (a smoke run).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per cell (mean ± std over them).')
_VARY = flags.DEFINE_enum('vary', 'probe', ['probe', 'both'],
                          'probe: one pretraining run; both: one pretraining run per seed.')
_FRACTIONS = (1.0, 0.1)


def _shorten(config, quick: bool):
  if quick:
    common.shortened(config)
  if _DATA_DIR.value:
    config.data.data_dir = _DATA_DIR.value
  return config


def _run(config, workdir: str) -> dict:
  from ssl_jax.core import train
  t0 = time.perf_counter()
  final = train.run_to_end(config, workdir)
  logging.info('%s: %.0f s', workdir, time.perf_counter() - t0)
  return final


def _cell(config, workdir: str) -> dict:
  """The test top-1's spread over the seeds of one cell."""
  from ssl_jax.core import seeds
  return seeds.run_seeds(config, workdir, _SEEDS.value)['summary']['eval/top1']


def main(argv):
  del argv
  from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
  from ssl_jax.core import console, seeds
  print('produced by:', provenance.line(), flush=True)
  console.quiet_library_logs()
  root, quick, method = _WORKDIR.value, _QUICK.value, _METHOD.value
  pre_root = os.path.join(root, 'pretrain')
  pretrain_config = _shorten(importlib.import_module(f'configs.{method}').get_config('tiny'),
                             quick)
  if _VARY.value == 'both':
    monitors_of = seeds.run_seeds(pretrain_config, pre_root, _SEEDS.value)['runs'][0]
    pre_dir = os.path.join(pre_root, 'seed{seed}')
  else:
    monitors_of = _run(pretrain_config, pre_root)
    pre_dir = pre_root

  rows = {'pretrained': {}, 'random init (fine-tune: supervised from scratch)': {},
          'raw pixels': {}}
  for kind, configs in (('linear probe', linear_probe), ('fine-tune', finetune)):
    for fraction in _FRACTIONS:  # every probe first: the cheaper cells
      pct = f'{round(100 * fraction)}%'
      for name, variant, init in (('pretrained', f'{method}_tiny', pre_dir),
                                  ('random init (fine-tune: supervised from scratch)',
                                   f'{method}_tiny', None),
                                  ('raw pixels', 'pixels_tiny', None)):
        if kind == 'fine-tune' and variant == 'pixels_tiny':
          continue  # no backbone to fine-tune: the probe is the whole model
        if kind == 'fine-tune' and init is None:
          variant = f'{method}_tiny_scratch'  # a recipe for training from scratch
        c = _shorten(configs.get_config(variant), quick)
        c.init.workdir, c.data.label_fraction = init, fraction
        if variant == 'pixels_tiny':  # the method's data, at its size
          c.data.name = pretrain_config.data.name
          c.data.image_size = pretrain_config.data.image_size
        tag = name.split(' (')[0].replace(' ', '_')
        prefix = 'probe' if kind == 'linear probe' else 'finetune'
        rows[name][f'{kind}, {pct} labels'] = _cell(
            c, os.path.join(root, f'{prefix}_{tag}_{pct[:-1]}pct'))

  columns = [f'{kind}, {round(100 * f)}% labels' for kind in ('linear probe', 'fine-tune')
             for f in _FRACTIONS]
  lines = ['| features | ' + ' | '.join(f'{c} (top-1 %)' for c in columns) + ' |',
           '|---|' + '---|' * len(columns)]
  for name, scores in rows.items():
    cells = [seeds.format_spread(scores[c], True) if c in scores else 'n/a (= probe)'
             for c in columns]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  varies = ('the probe\'s / fine-tune\'s seed, one pretraining run' if _VARY.value == 'probe'
            else 'both: one pretraining run per seed, probed with the same seed')
  table = '\n'.join(lines) + f'\n\nSeeds vary: {varies}.'
  monitors = ', '.join(f'{k} {100 * v:.1f}%' for k, v in monitors_of.items()
                       if k in ('knn/top1', 'fewshot/10shot', 'fewshot/25shot'))
  print(f'\n{method} tiny, ssl_jax_shapes test split (1000 images, 10 classes); mean ± std '
        f'over {_SEEDS.value} seeds; pretraining monitors at the end: {monitors}\n')
  print(table)
  a = rows['pretrained']['linear probe, 100% labels']
  b = rows['random init (fine-tune: supervised from scratch)']['linear probe, 100% labels']
  gap, noise = a['mean'] - b['mean'], a['std'] + b['std']
  print(f'\npretrained minus random init, linear probe: {100 * gap:.1f} points; the two '
        f'stds add to {100 * noise:.1f}: {"larger" if gap > noise else "NOT larger"} than '
        'the spread')
  with open(os.path.join(root, 'benchmark.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')


if __name__ == '__main__':
  app.run(main)
