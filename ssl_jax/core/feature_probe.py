r"""Logistic-regression probes of frozen features: every layer, or few labels.

Both read a linear-probe config (configs/linear_probe.py: the backbone, the
checkpoint in config.init, the data) and its `feature_probe` block, extract
the features of the training images (the first feature_probe.train_examples
of data.split) and of eval.split once, in evaluation mode, and fit
ssl_jax.evaluate.logistic (L-BFGS on standardised features) on the host.

* Layer sweep (accuracy by depth), `python main.py --config=... --layer_sweep`:
  every layer's average-pooled features (or feature_probe.layers), one probe
  per layer, its l2 picked from feature_probe.l2_grid on a held-out
  val_fraction of the training features, then refitted on all of them.
  Writes layers.json, layers.md and layers.png (accuracy by depth).
* Low-data, `--low_data`: feature_probe.shots labelled
  examples per class (class-balanced, drawn from the training features) for
  each of feature_probe.seeds seeds, on classifier.representation, with
  l2 = feature_probe.low_data_l2. Writes low_data.json and low_data.md: the
  mean and standard deviation over seeds of the test accuracy and error.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from ssl_jax.config.checks import ConfigError
from ssl_jax.core import assembly, validation
from ssl_jax.core import metrics as metrics_lib
from ssl_jax.core import provenance as provenance_lib
from ssl_jax.core import workdir as workdir_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate import logistic
from ssl_jax.evaluate.evaluator import open_split

MODES = ('layers', 'low_data')


def _layer_number(name: str) -> int | None:
  match = re.fullmatch(r'layer_(\d+)', name)
  return int(match.group(1)) if match else None


def extract(config: ml_collections.ConfigDict, names: tuple[str, ...] | None):
  """(train features by name, train labels, test features, test labels,
  num_classes, the names) of the probe config's backbone."""
  run = assembly.assemble(config)
  available = run.task.representations()
  names = tuple(names) if names else available
  bad = [n for n in names if n not in available]
  if bad:
    run.close()
    raise ConfigError(f'config.feature_probe.layers: {bad[0]!r} is not a '
                      'representation of this backbone; allowed: ' + ', '.join(available))
  state = run.new_state(whiten=False)  # the features are the backbone's
  params, evaluator, source = state.params, run.evaluator, run.source
  split = open_split(config, config.data.split)
  n = min(config.feature_probe.train_examples, split.num_examples)
  pool = pipeline.SubsetSource(split, np.arange(n), f':{n}')
  start = time.perf_counter()
  train_x, train_y = evaluator.features_by_name(params, pool, names, state=state.method_state)
  test_x, test_y = evaluator.features_by_name(params, evaluator.test, names,
                                              state=state.method_state)
  logging.info('features of %d + %d images, %d representations (%.1f s)', len(train_y),
               len(test_y), len(names), time.perf_counter() - start)
  return train_x, train_y, test_x, test_y, source.num_classes, names


def layer_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  f = config.feature_probe
  train_x, train_y, test_x, test_y, classes, names = extract(config, tuple(f.layers))
  rows = []
  for name in names:
    l2, scores = logistic.select_l2(train_x[name], train_y, classes, tuple(f.l2_grid),
                                    val_fraction=f.val_fraction, steps=f.steps)
    xt, xs = logistic.standardise(train_x[name], test_x[name])
    params = logistic.fit(xt, train_y, classes, l2=l2, steps=f.steps)
    rows.append({'representation': name, 'layer': _layer_number(name),
                 'top1': logistic.accuracy(params, xs, test_y),
                 'train_top1': logistic.accuracy(params, xt, train_y),
                 'l2': l2, 'val_top1': scores[l2], 'features': int(xt.shape[1])})
    logging.info('%s: top-1 %.4f (l2 %g)', name, rows[-1]['top1'], l2)
  _write(workdir, 'layers', rows, {'train_examples': int(len(train_y)),
                                   'test_examples': int(len(test_y))})
  _plot(os.path.join(workdir, 'layers.png'), rows, config)
  return rows


def low_data(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  f = config.feature_probe
  name = config.classifier.representation
  train_x, train_y, test_x, test_y, classes, _ = extract(config, (name,))
  rows = []
  for shots in f.shots:
    accs = []
    for seed in range(f.seeds):
      idx = logistic.class_balanced(train_y, shots, classes, seed)
      xt, xs = logistic.standardise(train_x[name][idx], test_x[name])
      params = logistic.fit(xt, train_y[idx], classes, l2=f.low_data_l2, steps=f.steps)
      accs.append(logistic.accuracy(params, xs, test_y))
    accs = np.asarray(accs)
    rows.append({'labels': int(shots * classes), 'per_class': int(shots),
                 'top1': float(accs.mean()), 'std_top1': float(accs.std()),
                 'error_pct': float(100 * (1 - accs.mean())),
                 'error_std_pct': float(100 * accs.std()),
                 'seeds': int(f.seeds)})
    logging.info('%d labels: error %.1f +- %.1f%%', rows[-1]['labels'],
                 rows[-1]['error_pct'], rows[-1]['error_std_pct'])
  _write(workdir, 'low_data', rows, {'representation': name,
                                     'test_examples': int(len(test_y))})
  return rows


def _write(workdir: str, stem: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
  os.makedirs(workdir, exist_ok=True)
  made_by = provenance_lib.record()
  metrics_lib.write_atomic(os.path.join(workdir, f'{stem}.json'),
                           json.dumps({'rows': rows, **meta, 'provenance': made_by}, indent=2))
  first = ('representation',) if stem == 'layers' else ('labels',)
  metrics_lib.write_atomic(os.path.join(workdir, f'{stem}.md'),
                           metrics_lib.markdown_table(rows, first=first)
                           + provenance_lib.footer([made_by]))


def _plot(path: str, rows: list[dict[str, Any]], config: ml_collections.ConfigDict) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  layers = [r for r in rows if r['layer'] is not None]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  ax.plot([r['layer'] for r in layers], [100 * r['top1'] for r in layers], 'o-')
  ax.set_xlabel('layer (0: embeddings)')
  ax.set_ylabel(f'linear probe top-1 (%), {config.eval.split}')
  ax.set_title(f'{config.backbone.objective}: representation quality by depth '
               f'({config.data.name})')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  tmp = f'{path}.tmp{os.getpid()}.png'
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> list[dict[str, Any]]:
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  if config.objective != validation.CLASSIFICATION or 'feature_probe' not in config:
    raise ConfigError('--layer_sweep / --low_data need a linear-probe config '
                      '(configs/linear_probe.py) with a feature_probe block')
  import jax
  validation.validate(config, jax.device_count())
  with workdir_lib.hold(workdir):
    return layer_sweep(config, workdir) if mode == 'layers' else low_data(config, workdir)
