r"""Logistic-regression probes of frozen features: every layer, or few labels.

Both read a linear-probe config (configs/linear_probe.py: the backbone, the
checkpoint in config.init, the data) and its `feature_probe` block, extract
features in evaluation mode, and fit ssl_jax.evaluate.logistic (L-BFGS on
standardised features) on the host. The training features are the first
feature_probe.train_examples of the run's training examples (data.split
without its held-out part); eval.split's features are extracted only after
every choice is made, and read once.

* Layer sweep (accuracy by depth), `python main.py --config=... --layer_sweep`:
  every layer's average-pooled features (or feature_probe.layers), one probe
  per layer, its l2 picked from feature_probe.l2_grid on the examples held
  out of the training split (data.held_out_examples); the layer with the
  best held-out top-1 is marked as chosen. Each layer's kNN top-1 (the
  evaluator's cosine kNN, eval.knn_k neighbours, on the same training
  features) and its few-shot ridge top-1 (feature_probe.ridge_shots labels
  per class drawn from them, the monitors' closed-form ridge: eval.fewshot_l2,
  mean over eval.fewshot_seeds draws) are reported beside it; neither
  chooses anything. Writes layers.json, layers.md and
  layers.png (accuracy by depth).
* Low-data, `--low_data`: feature_probe.shots labelled
  examples per class (class-balanced, drawn from the training features) for
  each of feature_probe.seeds seeds, on classifier.representation, with
  l2 = feature_probe.low_data_l2 (nothing is chosen). Writes low_data.json
  and low_data.md: the mean and standard deviation over seeds of the test
  accuracy and error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ssl_jax.config.checks import ConfigError, differences, flatten, to_json
from ssl_jax.core import assembly, validation
from ssl_jax.core import metrics as metrics_lib
from ssl_jax.core import provenance as provenance_lib
from ssl_jax.core import workdir as workdir_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate import fewshot, knn, logistic

MODES = ('layers', 'low_data')


def _layer_number(name: str) -> int | None:
  match = re.fullmatch(r'layer_(\d+)', name)
  return int(match.group(1)) if match else None


class Features:
  """The probe config's backbone, assembled once; `of(source)` extracts
  {name: features}, labels of every example of a source, each
  representation written batch by batch to a float32 .npy memory map in a
  local directory (feature_probe.features_dir, or a temporary one removed
  by `close`), so that host memory holds one batch whatever the split's
  size (a disk of n x d x 4 bytes per representation is needed)."""

  def __init__(self, config: ml_collections.ConfigDict, names: tuple[str, ...] | None):
    run = assembly.assemble(config)
    available = run.task.representations()
    self.names = tuple(names) if names else available
    bad = [n for n in self.names if n not in available]
    if bad:
      run.close()
      raise ConfigError(f'config.feature_probe.layers: {bad[0]!r} is not a '
                        'representation of this backbone; allowed: ' + ', '.join(available))
    self.state = run.new_state(whiten=False)  # the features are the backbone's
    self.evaluator, self.source = run.evaluator, run.source
    self.num_classes = run.source.num_classes
    limit = config.feature_probe.train_examples
    n = self.source.num_examples if limit is None else min(limit, self.source.num_examples)
    self.train = (self.source if n == self.source.num_examples else
                  pipeline.SubsetSource(self.source, np.arange(n), f':{n}'))
    given = config.feature_probe.get('features_dir', '')
    self._temporary = not given
    self.directory = (tempfile.mkdtemp(prefix='ssl_jax_features_') if not given else
                      os.path.join(given, f'process{jax.process_index()}'))
    os.makedirs(self.directory, exist_ok=True)
    self._files = 0

  def of(self, source: pipeline.Source) -> tuple[dict[str, np.ndarray], np.ndarray]:
    start = time.perf_counter()
    self._files += 1
    maps, labels, count = {}, np.full(source.num_examples, -1, np.int32), 0
    for x, y in self.evaluator.iter_features(self.state.params, source, self.names,
                                             state=self.state.method_state):
      for k in self.names:
        if k not in maps:
          path = os.path.join(self.directory, f'{self._files}_{k}.npy')
          maps[k] = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32,
                                              shape=(source.num_examples, x[k].shape[1]))
        maps[k][count:count + len(y)] = x[k]
      labels[count:count + len(y)] = y
      count += len(y)
    for m in maps.values():
      m.flush()
    logging.info('features of %d images of %s, %d representations, in %s (%.1f s)', count,
                 source.name, len(self.names), self.directory, time.perf_counter() - start)
    # Skipped (undecodable) images leave rows at the end: views without them.
    return {k: m[:count] for k, m in maps.items()}, labels[:count]

  def close(self) -> None:
    if self._temporary:
      shutil.rmtree(self.directory, ignore_errors=True)


def layer_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  if not config.data.held_out_examples:
    raise ConfigError('--layer_sweep chooses each layer\'s l2, and the best layer, on '
                      'examples held out of the training split: set '
                      'config.data.held_out_examples > 0 (e.g. 1000)')
  features = Features(config, tuple(config.feature_probe.layers))
  try:
    return _layer_sweep(config, workdir, features)
  finally:
    features.close()


def _layer_sweep(config, workdir: str, features: Features) -> list[dict[str, Any]]:
  f = config.feature_probe
  train_x, train_y = features.of(features.train)
  val_x, val_y = features.of(features.source.held_out)
  classes, rows, fitted = features.num_classes, [], {}
  for name in features.names:
    moments = logistic.moments(train_x[name])
    scores = {float(l2): logistic.fit(train_x[name], train_y, classes, l2=l2, steps=f.steps,
                                      standardise_with=moments)
              for l2 in f.l2_grid}
    val = {l2: logistic.accuracy(params, val_x[name], val_y) for l2, params in scores.items()}
    l2 = max(val, key=lambda k: (val[k], k))
    fitted[name] = scores[l2]
    rows.append({'representation': name, 'layer': _layer_number(name), 'l2': l2,
                 'val_top1': val[l2],
                 'train_top1': logistic.accuracy(scores[l2], train_x[name], train_y),
                 'features': int(train_x[name].shape[1])})
    logging.info('%s: held-out top-1 %.4f (l2 %g)', name, val[l2], l2)
  chosen = max(range(len(rows)), key=lambda i: rows[i]['val_top1'])
  # Every choice is made: eval.split is read now, once.
  test_x, test_y = features.of(features.evaluator.test)
  shots = f.get('ridge_shots', 0)
  fewest = int(np.bincount(train_y, minlength=classes).min())
  if shots > fewest:
    logging.warning('no %d-shot ridge column: a class has only %d training examples', shots,
                    fewest)
    shots = 0
  for row in rows:
    name = row['representation']
    row['top1'] = logistic.accuracy(fitted[name], test_x[name], test_y)
    row['chosen'] = '*' if row is rows[chosen] else ''
    # kNN on the same features (nothing chosen: eval.knn_k and knn_temperature).
    predicted = knn.knn_predict(train_x[name], train_y, test_x[name], classes,
                                k=min(config.eval.knn_k, len(train_y)),
                                temperature=config.eval.knn_temperature)
    row['knn_top1'] = float(np.mean(predicted == test_y))
    if shots:  # closed-form ridge on `shots` labels per class (nothing chosen)
      row[f'ridge_{shots}shot_top1'] = fewshot.fewshot_accuracy(
          train_x[name], train_y, test_x[name], test_y, classes, shots=(shots,),
          seeds=tuple(range(config.eval.fewshot_seeds)),
          l2=config.eval.fewshot_l2)[f'{shots}shot']
  logging.info('chosen on the held-out examples: %s; its %s top-1 %.4f',
               rows[chosen]['representation'], config.eval.split, rows[chosen]['top1'])
  _write(workdir, 'layers', rows, {
      'train_examples': int(len(train_y)), 'held_out_examples': int(len(val_y)),
      'test_examples': int(len(test_y)), 'chosen': rows[chosen]['representation'],
      'selected_on': f'{len(val_y)} examples held out of {config.data.split}',
      'reported_on': config.eval.split}, config)
  _plot(os.path.join(workdir, 'layers.png'), rows, config)
  return rows


def low_data(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  name = config.classifier.representation
  features = Features(config, (name,))
  try:
    return _low_data(config, workdir, features, name)
  finally:
    features.close()


def _low_data(config, workdir: str, features: Features, name: str) -> list[dict[str, Any]]:
  f = config.feature_probe
  classes = features.num_classes
  train_x, train_y = features.of(features.train)
  test_x, test_y = features.of(features.evaluator.test)
  rows = []
  for shots in f.shots:
    accs = []
    for seed in range(f.seeds):
      idx = logistic.class_balanced(train_y, shots, classes, seed)
      params = logistic.fit(train_x[name][idx], train_y[idx], classes, l2=f.low_data_l2,
                            steps=f.steps)
      accs.append(logistic.accuracy(params, test_x[name], test_y))
    accs = np.asarray(accs)
    std = float(accs.std(ddof=1)) if len(accs) > 1 else 0.0  # sample std, as --seeds
    rows.append({'labels': int(shots * classes), 'per_class': int(shots),
                 'top1': float(accs.mean()), 'std_top1': std,
                 'error_pct': float(100 * (1 - accs.mean())),
                 'error_std_pct': float(100 * std),
                 'seeds': int(f.seeds)})
    logging.info('%d labels: error %.1f +- %.1f%%', rows[-1]['labels'],
                 rows[-1]['error_pct'], rows[-1]['error_std_pct'])
  _write(workdir, 'low_data', rows, {'representation': name,
                                     'test_examples': int(len(test_y))}, config)
  return rows


# Where the data lie: a sweep read back from another path to the same data is
# the same measurement.
_PATH_KEYS = ('data.data_dir', 'backbone.data.data_dir')


def rows_of(config: ml_collections.ConfigDict, workdir: str, mode: str = 'layers'
            ) -> list[dict[str, Any]]:
  """The rows of `mode` on `config`: read back from WORKDIR/MODE.json when a
  run of this very config wrote it (a benchmark that resumes), else measured
  (`run`). One written by another config is refused (ConfigError naming the
  keys), not overwritten: it is a result, and its workdir is in use by
  another measurement. A file written before results recorded their config
  is read back as it is."""
  path = os.path.join(workdir, f'{mode}.json')
  if not os.path.exists(path):
    return run(config, workdir, mode)
  with open(path) as f:
    done = json.load(f)
  if 'config' in done:
    saved, now = flatten(done['config']), flatten(json.loads(to_json(config)))
    bad = [k for k in sorted(set(saved) | set(now))
           if saved.get(k, '<missing>') != now.get(k, '<missing>') and k not in _PATH_KEYS]
    if bad:
      raise ConfigError(f'{path} was measured with another config: '
                        f'{differences(saved, now, bad, "there", "now")}; '
                        'use another workdir, or remove that one to measure again')
  return done['rows']


def _write(workdir: str, stem: str, rows: list[dict[str, Any]], meta: dict[str, Any],
           config: ml_collections.ConfigDict) -> None:
  """STEM.json (the rows, `meta`, the config they were measured with and
  their provenance) and STEM.md."""
  if jax.process_index() > 0:
    return
  os.makedirs(workdir, exist_ok=True)
  made_by = provenance_lib.record()
  metrics_lib.write_atomic(os.path.join(workdir, f'{stem}.json'), json.dumps(
      {'rows': rows, **meta, 'config': json.loads(to_json(config)), 'provenance': made_by},
      indent=2))
  first = (('representation', 'layer', 'val_top1', 'top1', 'chosen', 'knn_top1')
           if stem == 'layers' else ('labels',))
  said = (f'\nl2 and layer chosen on {meta["selected_on"]} (val_top1); top1 reported on '
          f'{meta["reported_on"]}, read once after the choice; knn_top1: kNN on the same '
          'training features, ridge_Nshot_top1: closed-form ridge on N labels per class of '
          'them; neither chooses anything.\n' if 'selected_on' in meta else '')
  metrics_lib.write_atomic(os.path.join(workdir, f'{stem}.md'),
                           metrics_lib.markdown_table(rows, first=first) + said
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
  validation.validate(config, jax.device_count())
  with workdir_lib.hold(workdir):
    return layer_sweep(config, workdir) if mode == 'layers' else low_data(config, workdir)
