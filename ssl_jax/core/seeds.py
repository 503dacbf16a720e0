"""One run repeated over seeds, and its numbers with their spread.

`python main.py --config=... --workdir=W --seeds=3` trains the config with
config.seed = s, s + 1, s + 2 (s: the config's seed) into W/seed{S}, each
the same loop as a single run (resumable; a finished seed is read back,
not retrained), then writes W/seeds.json and W/seeds.md: every run's final
numbers and, for each, the mean, the sample standard deviation and the
number of seeds.

Which seeds vary is said in both files:
* a probe or fine-tune whose config.init.workdir holds '{seed}' reads the
  pretraining run of the same seed (pretrain with --seeds=3
  --workdir=workdirs/pf, then probe with --seeds=3
  --config.init.workdir='workdirs/pf/seed{seed}'): both the pretraining's
  and the probe's seeds vary;
* otherwise only the probe's (or fine-tune's, or pretraining's) own seed
  varies: its initialisation, data order, augmentation and random draws.
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
from ssl_jax.core import metrics as metrics_lib
from ssl_jax.core import provenance as provenance_lib
from ssl_jax.core import train, validation
from ssl_jax.core import workdir as workdir_lib

SEED_FIELD = '{seed}'


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The config of one seed: config.seed, and '{seed}' in init.workdir."""
  c = config.copy_and_resolve_references()
  c.seed = seed
  if 'init' in c and c.init.workdir and SEED_FIELD in c.init.workdir:
    c.init.workdir = c.init.workdir.replace(SEED_FIELD, str(seed))
  return c


def what_varies(config: ml_collections.ConfigDict) -> str:
  if config.objective != validation.CLASSIFICATION:
    return 'the pretraining seed (config.seed)'
  if config.init.workdir and SEED_FIELD in config.init.workdir:
    return ("both: the pretraining run of each seed (config.init.workdir="
            f"{config.init.workdir!r}) and the probe's own seed (config.seed)")
  if config.init.workdir:
    return (f"the {config.classifier.mode} seed only (config.seed: initialisation, data "
            f"order, augmentation); one pretraining run, {config.init.workdir!r}")
  return (f"the {config.classifier.mode} seed (config.seed), on a randomly initialised "
          'backbone drawn from it')


def spread(values: list[float]) -> dict[str, float]:
  """{'mean', 'std' (sample standard deviation, 0 for one value), 'n'}."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return {'mean': mean, 'std': std, 'n': n}


def format_spread(s: dict[str, float], percent: bool) -> str:
  """'31.1 ± 1.2 (n=3)' (percent) or '0.4321 ± 0.0123 (n=3)'; one value
  has no spread to show: '31.1 (n=1)', not '± 0.0'."""
  scale, digits = (100.0, 1) if percent else (1.0, 4)
  if s['n'] == 1:
    return f'{scale * s["mean"]:.{digits}f} (n=1)'
  return f'{scale * s["mean"]:.{digits}f} ± {scale * s["std"]:.{digits}f} (n={s["n"]})'


def run_seeds(config: ml_collections.ConfigDict, workdir: str, num_seeds: int
              ) -> dict[str, Any]:
  """Runs (or resumes) the config over `num_seeds` seeds; returns what
  seeds.json holds."""
  if not (isinstance(num_seeds, int) and num_seeds >= 1):
    raise ConfigError(f'--seeds={num_seeds!r}: must be an integer >= 1')
  seeds = [config.seed + i for i in range(num_seeds)]
  validation.validate(config, jax.device_count(), jax.process_count())
  for s in seeds:  # every seed's config is checked before the first one trains
    validation.validate(seed_config(config, s), jax.device_count(), jax.process_count())
  with train.Preemption() as preemption, workdir_lib.hold(workdir):
    runs = []
    for i, s in enumerate(seeds):
      if preemption.anywhere():
        raise train.Preempted(None, f'before seed {s} ({i + 1}/{len(seeds)})')
      sub = os.path.join(workdir, f'seed{s}')
      logging.info('seed %d (%d/%d) -> %s', s, i + 1, len(seeds), sub)
      final = train.run_to_end(seed_config(config, s), sub)
      runs.append({'seed': s, **{k: v for k, v in final.items() if k != 'step'}})
    summary = _summary(runs)
    saved = {'runs': runs, 'summary': summary, 'varies': what_varies(config),
             'provenance': provenance_lib.record()}
    _write(workdir, saved)
  logging.info('%d seeds: %s; table: %s', len(seeds), ' | '.join(
      f'{k} {format_spread(v, metrics_lib.is_accuracy(k))}' for k, v in summary.items()
      if k.endswith('top1')), os.path.join(workdir, 'seeds.md'))
  return saved


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  keys = [k for k in runs[0] if k not in ('seed', 'selected_step')
          and all(isinstance(r.get(k), (int, float)) for r in runs)]
  return {k: spread([float(r[k]) for r in runs]) for k in keys}


def _write(workdir: str, saved: dict[str, Any]) -> None:
  if jax.process_index() > 0:
    return
  metrics_lib.write_atomic(os.path.join(workdir, 'seeds.json'),
                           json.dumps(saved, indent=1) + '\n')
  lines = [metrics_lib.markdown_table(saved['runs'], first=('seed',)), '',
           f'Seeds vary: {saved["varies"]}.', '', '| metric | mean ± std (n) |', '|---|---|']
  lines += [f'| {k} | {format_spread(v, metrics_lib.is_accuracy(k))}'
            f'{" %" if metrics_lib.is_accuracy(k) else ""} |'
            for k, v in saved['summary'].items()]
  metrics_lib.write_atomic(os.path.join(workdir, 'seeds.md'), '\n'.join(lines) + '\n'
                           + provenance_lib.footer([saved['provenance']]))
