r"""DV2's ablation (section 4.5) at the `tiny` scale, with Selfie, Allp and
random initialisation, on the built-in dataset.

Every row pretrains its config (configs/dv2.py:tiny with the row's
overrides, configs/dv2.py's ABLATION; configs/selfie.py:tiny and
:allp_tiny) once per seed, then measures, with the same loop and configs as
users do:

* linear probe: logistic regressions on every representation of the frozen
  network (`--layer_sweep`: ssl_jax.core.feature_probe), each one's l2 and
  the representation itself chosen on the examples held out of the
  training split; the chosen one's test top-1 is reported, and which
  representation it was;
* fine-tune: configs/finetune.py:dv2_tiny (selfie_tiny for Selfie and
  Allp) on the class-balanced 10% of the labels, test top-1 of the last
  step (nothing chosen);
* pretraining ms/step: each row's compiled step on a random batch of its
  shapes, --timing_steps steps after two warm-up steps, all rows back to
  back in one process after the runs (the runs may share the cores with
  other work; figures from one invocation compare as ratios).

The random-init rows probe the DV2 and the Selfie tiny networks (they
differ: DV2's has a fourth stack and an exchange layer) as initialised by
each seed and fine-tune them from scratch (configs/finetune.py:
dv2_tiny_scratch, selfie_tiny_scratch).
Numbers are mean ± sample std over --seeds seeds (the pretraining's and
the probe's / fine-tune's seed vary together). Every run resumes from its
own workdir and a finished one is read back, so an interrupted benchmark
picks up where it stopped, row by row; --rows picks rows (by number).

  python benchmarks/dv2.py --workdir=/tmp/ssl_jax_dv2_bench --seeds=3

Running time on 2 CPU cores: about 12 minutes per row and seed (5 min
pretraining, 3 min layer sweep, 3 min fine-tune); 14 rows x 3 seeds about
8 hours. --quick shortens every run 4x (a smoke run, not a measurement).
The table measured with it is in the README (DV2).
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import common, dv2, finetune, linear_probe, selfie  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ssl_jax_dv2_bench', 'Where every run goes.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: tfds default).')
_QUICK = flags.DEFINE_bool('quick', False, 'Every run 4x shorter (a smoke run).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per row (mean ± std over them).')
_ROWS = flags.DEFINE_list('rows', [], 'Row numbers to run (default: all); see --list.')
_TIMING_STEPS = flags.DEFINE_integer(
    'timing_steps', 20, 'Steps timed per row for the ms/step column (0: no column).')
_LIST = flags.DEFINE_bool('list', False, 'Print the rows and their overrides, run nothing.')


def _set(config, key: str, value) -> None:
  block = config
  *head, last = key.split('.')
  for part in head:
    block = block[part]
  block[last] = value


def rows() -> list[tuple[str, str, str, dict]]:
  """(name, method, variant, {config key: value}) of every row."""
  out = [(name, 'dv2', 'tiny', {f'dv2.{k}': v for k, v in overrides.items()})
         for name, overrides in dv2.ablation(dv2.get_config('tiny')).items()]
  out += [('Selfie', 'selfie', 'tiny', {}), ('Allp', 'selfie', 'allp_tiny', {}),
          ('random init (DV2 network)', 'dv2', 'tiny', {}),
          ('random init (Selfie network)', 'selfie', 'tiny', {})]
  return out


def _shorten(config):
  if _QUICK.value:
    common.shortened(config)
  if _DATA_DIR.value:
    config.data.data_dir = _DATA_DIR.value
  return config


def _backbone(config, pretrain) -> None:
  """The probe's backbone block takes the row's network keys."""
  config.backbone[pretrain.objective] = pretrain[pretrain.objective]


def _layer_sweep(config, workdir: str) -> dict:
  from ssl_jax.core import feature_probe
  done = os.path.join(workdir, 'layers.json')
  if not os.path.exists(done):
    feature_probe.run(config, workdir, 'layers')
  with open(done) as f:
    rows = json.load(f)['rows']
  return next(r for r in rows if r['chosen'])


def _pretrain_config(method: str, variant: str, overrides: dict, seed: int):
  pretrain = (dv2 if method == 'dv2' else selfie).get_config(variant)
  for key, value in overrides.items():
    _set(pretrain, key, value)
  pretrain.seed = seed
  return _shorten(pretrain)


def _one(index: int, name: str, method: str, variant: str, overrides: dict, seed: int) -> dict:
  from ssl_jax.core import train
  root = os.path.join(_WORKDIR.value, f'row{index:02d}', f'seed{seed}')
  random = name.startswith('random init')
  pretrain = _pretrain_config(method, variant, overrides, seed)
  if not random:
    t0 = time.perf_counter()
    train.run_to_end(pretrain, os.path.join(root, 'pretrain'))
    logging.info('%s seed %d pretrained in %.0f s', name, seed, time.perf_counter() - t0)
  init = None if random else os.path.join(root, 'pretrain')
  tiny = 'tiny' if variant == 'tiny' else variant
  probe = _shorten(linear_probe.get_config(f'{method}_{tiny}'))
  _backbone(probe, pretrain)
  probe.seed, probe.init.workdir = seed, init
  chosen = _layer_sweep(probe, os.path.join(root, 'layers'))
  out = {'probe': chosen['top1'], 'representation': chosen['representation']}
  tune = _shorten(finetune.get_config(f'{method}_tiny_scratch' if random
                                      else f'{method}_{tiny}'))
  _backbone(tune, pretrain)
  tune.seed, tune.init.workdir, tune.data.label_fraction = seed, init, 0.1
  out['finetune'] = train.run_to_end(tune, os.path.join(root, 'finetune'))['eval/top1']
  return out


def _step_ms(method: str, variant: str, overrides: dict) -> float:
  """The row's compiled pretraining step on a random batch of its shapes,
  after two warm-up steps (benchmarks/patchformer_step.py's timer)."""
  from benchmarks.patchformer_step import time_compiled_step
  dt, _, _ = time_compiled_step(_pretrain_config(method, variant, overrides, 0),
                                _TIMING_STEPS.value)
  return 1e3 * dt


def main(argv):
  del argv
  from ssl_jax.core import provenance, seeds, train
  all_rows = rows()
  if _LIST.value:
    for i, (name, method, variant, overrides) in enumerate(all_rows):
      print(f'{i:2d} {name}: configs/{method}.py:{variant} {overrides}')
    return
  print('produced by:', provenance.line(), flush=True)
  train.quiet_library_logs()
  picked = [int(r) for r in _ROWS.value if r.isdigit()] or list(range(len(all_rows)))
  bad = [r for r in _ROWS.value if not r.isdigit() or int(r) >= len(all_rows)]
  if bad:
    raise app.UsageError(f'--rows={",".join(_ROWS.value)}: {", ".join(bad)} is not a row '
                         f'(0-{len(all_rows) - 1}; --list prints them)')
  seed_list = range(_SEEDS.value)

  def top1(values: list[float]) -> str:
    return seeds.format_spread(seeds.spread(values), percent=True)

  t0 = time.perf_counter()
  measured = {}
  for i in picked:
    name, method, variant, overrides = all_rows[i]
    got = [_one(i, name, method, variant, overrides, s) for s in seed_list]
    chosen = collections.Counter(g['representation'] for g in got)
    measured[i] = (f'{top1([g["probe"] for g in got])} '
                   f'({", ".join(f"{r} x{n}" for r, n in sorted(chosen.items()))})',
                   top1([g['finetune'] for g in got]))
    print(f'| {name} | {" | ".join(measured[i])} |', flush=True)
  # Step times last, back to back in this one process, so that they compare
  # as ratios (the runs above may have shared the cores with other work).
  ms = {}
  if _TIMING_STEPS.value:
    for i in picked:
      name, method, variant, overrides = all_rows[i]
      if not name.startswith('random init'):
        ms[i] = _step_ms(method, variant, overrides)
  lines = ['| row | linear probe top-1 % (chosen representation x seeds) | fine-tune 10% '
           'labels top-1 % | pretraining ms/step |', '|---|---|---|---|']
  for i in picked:
    lines.append(f'| {all_rows[i][0]} | {" | ".join(measured[i])} | '
                 f'{f"{ms[i]:.0f}" if i in ms else "-"} |')
  table = '\n'.join(lines)
  print(f'\nDV2 ablation at the tiny scale (ssl_jax_shapes, 1000 test images, 10 classes); '
        f'mean ± std over {_SEEDS.value} seeds (pretraining and probe seeds vary together); '
        f'{time.perf_counter() - t0:.0f} s in this invocation\n')
  print(table)
  with open(os.path.join(_WORKDIR.value, 'benchmark.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')


if __name__ == '__main__':
  app.run(main)
