"""The periodic evaluation of a run, from its `config.eval` block.

* Classification runs: top-1, top-5 and the cross-entropy of the classifier,
  summed on the device over one padded pass (each example counted once), on
  two parts that never mix: `select` scores the examples held out of the
  training split (`val/...`, data.held_out_examples), which every choice
  reads (early stopping, a sweep's best point); `report` scores `eval.split`
  (`eval/...`), the reported number, read once at the end for the chosen
  parameters.
* Monitors of frozen features (`eval.monitors`), for any run: few-shot ridge
  regression and kNN, with the representation `eval.representation` of the
  labelled `eval.train_split` and of `eval.split`, gathered to the host.

The evaluation functions are jit-compiled on first use with the parameters'
own shardings (FSDP-sharded parameters stay sharded); batches are global
jax.Arrays split over the mesh as in training.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ssl_jax import peers, tasks
from ssl_jax import sharding as sharding_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate import fewshot, knn
from ssl_jax.nn.losses import topk_correct


def open_split(config: ml_collections.ConfigDict, split: str) -> pipeline.Source:
  """The dataset of `config.data` at another split (whole: no label fraction)."""
  try:
    return pipeline.make_source(config.data.name, data_dir=config.data.data_dir, split=split,
                                skip_bad_images=config.data.get('skip_bad_images', False))
  except pipeline.DataError as e:
    raise pipeline.DataError(f'config.eval: split {split!r} of {config.data.name!r}: {e}') from e


class Evaluator:
  """Opens the evaluation splits at construction (so a missing split fails
  before anything compiles); call it with the parameters to evaluate."""

  def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh: jax.sharding.Mesh,
               num_classes: int | None, held_out: pipeline.Source | None = None):
    self.config = config
    self.val = held_out  # the training split's held-out part (None: none)
    self.task = task
    self.num_classes = num_classes
    self.batch_sharding = sharding_lib.batch_sharding(mesh)
    self.replicated = sharding_lib.replicated(mesh)
    e = config.eval
    self.classify = tasks.is_classification(config)
    self.monitors = tuple(e.monitors)
    if self.monitors and not num_classes:
      logging.warning('%s has no labels: few-shot and kNN monitors are off', config.data.name)
      self.monitors = ()
    self.test = open_split(config, e.split) if (self.classify or self.monitors) else None
    self.pool = open_split(config, e.train_split) if self.monitors else None
    for source in (self.test, self.pool):
      if source is not None and source.num_classes is None:
        raise pipeline.DataError(f'config.eval: {source!r} has no labels to evaluate with')
    self._compiled: dict[str, Callable] = {}
    self._warned_shots: set[int] = set()
    self._picture_sources: dict[int, pipeline.Source] = {}

  @property
  def enabled(self) -> bool:
    return self.test is not None

  def _keyed(self, source: pipeline.Source):
    """(batch, its index) of every evaluation batch of `source`: the index
    keys the batch's random draws (a BERT model's masks), fresh for every
    batch and the same in every evaluation."""
    for i, batch in enumerate(self._batches(source)):
      yield batch, np.int32(i)

  def _key(self, index: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), index)

  def _batches(self, source: pipeline.Source):
    batches = pipeline.iterate(
        source, seed=self.config.seed, global_batch_size=self.config.eval.batch_size,
        start_step=0, image_size=self.config.data.image_size, train=False,
        process_index=jax.process_index(), process_count=jax.process_count(),
        eval_crop_fraction=self.config.eval.crop_fraction)
    for local in batches:
      yield sharding_lib.to_global(local, self.batch_sharding)

  def _jit(self, name: str, fn: Callable, params: Any, state: Any) -> Callable:
    """fn(params, state, batch, batch index) jit-compiled with the
    parameters' and the state's own shardings (once per name)."""
    if name not in self._compiled:
      shardings = jax.tree.map(lambda a: a.sharding, (params, state))
      self._compiled[name] = peers.together(jax.jit(
          fn, in_shardings=shardings + (self.batch_sharding, self.replicated),
          out_shardings=self.replicated), f'evaluate/{name}')
    return self._compiled[name]

  def _classification(self, params: Any, state: Any, source: pipeline.Source,
                      prefix: str) -> dict[str, float]:
    def sums(params, state, batch, index):
      logits = self.task.predict(params, batch, state, rng=self._key(index))
      labels, w = batch['label'], batch['valid'].astype(jnp.float32)
      xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return {'top1': (topk_correct(logits, labels, 1) * w).sum(),
              'top5': (topk_correct(logits, labels, 5) * w).sum(),
              'loss': (xent * w).sum(), 'examples': w.sum()}

    fn = self._jit('classify', sums, params, state)
    total = None
    for batch, index in self._keyed(source):
      out = fn(params, state, batch, index)
      total = out if total is None else jax.tree.map(jnp.add, total, out)
    host = {k: float(v) for k, v in jax.device_get(total).items()}
    n = host.pop('examples')
    return dict({f'{prefix}/{k}': v / n for k, v in host.items()}, **{f'{prefix}/examples': n})

  def features(self, params: Any, source: pipeline.Source,
               representation: str | None = None, *, state: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, d], labels [n]) of every example of `source`, in order,
    in evaluation mode; `representation` defaults to eval.representation."""
    name = representation or self.config.eval.representation
    feats, labels = self.features_by_name(params, source, (name,), state=state)
    return feats[name], labels

  def features_by_name(self, params: Any, source: pipeline.Source, names: tuple[str, ...],
                       *, state: Any = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({name: features [n, d]}, labels [n]) of several representations of
    every example of `source`, from one pass."""
    xs, ys = {k: [] for k in names}, []
    for x, y in self.iter_features(params, source, names, state=state):
      for k in names:
        xs[k].append(x[k])
      ys.append(y)
    return {k: np.concatenate(v) for k, v in xs.items()}, np.concatenate(ys)

  def iter_features(self, params: Any, source: pipeline.Source, names: tuple[str, ...],
                    *, state: Any = None):
    """({name: features [b, d]}, labels [b]) of each evaluation batch of
    `source` in order, valid examples only (host numpy): features of a
    split larger than memory, one batch at a time."""
    state = {} if state is None else state

    def represent(params, state, batch, index):
      feats = self.task.represent(params, batch, state, rng=self._key(index))
      return {k: feats[k] for k in names}, batch['label'], batch['valid']

    fn = self._jit('represent/' + ','.join(names), represent, params, state)
    for batch, index in self._keyed(source):
      x, y, valid = jax.device_get(fn(params, state, batch, index))
      valid = np.asarray(valid)
      yield {k: np.asarray(x[k])[valid] for k in names}, np.asarray(y)[valid]

  def _shots(self, labels: np.ndarray) -> tuple[int, ...]:
    counts = np.bincount(labels, minlength=self.num_classes)
    smallest = int(counts.argmin())
    fewest = int(counts[smallest])
    names = getattr(self.pool, 'class_names', None)  # a folder source names its classes
    name = repr(names[smallest]) if names and smallest < len(names) else str(smallest)
    shots = tuple(n for n in self.config.eval.fewshot_shots if n <= fewest)
    for n in set(self.config.eval.fewshot_shots) - set(shots) - self._warned_shots:
      logging.warning('%d-shot evaluation skipped: class %s of %s (config.eval.train_split) '
                      'has only %d examples', n, name, self.config.eval.train_split, fewest)
      self._warned_shots.add(n)
    return shots

  def _monitors(self, params: Any, state: Any) -> dict[str, float]:
    e = self.config.eval
    train_x, train_y = self.features(params, self.pool, state=state)
    test_x, test_y = self.features(params, self.test, state=state)
    out = {}
    if 'fewshot' in self.monitors:
      scores = fewshot.fewshot_accuracy(
          train_x, train_y, test_x, test_y, self.num_classes, shots=self._shots(train_y),
          seeds=tuple(range(e.fewshot_seeds)), l2=e.fewshot_l2)
      out.update({f'fewshot/{k}': v for k, v in scores.items()})
    if 'knn' in self.monitors:
      pred = knn.knn_predict(train_x, train_y, test_x, self.num_classes,
                             k=min(e.knn_k, len(train_x)), temperature=e.knn_temperature)
      out['knn/top1'] = float(np.mean(pred == test_y))
    return out

  @property
  def draws(self) -> bool:
    """Whether `pictures` has something to draw (a pretraining method that
    draws pictures, and an evaluation split)."""
    return (self.test is not None and not self.classify
            and self.task.method.draws_pictures)

  def _picture_source(self, num_images: int) -> pipeline.Source:
    """`num_images` images of eval.split spread over its classes
    (`pipeline.class_spread_ids`: round-robin over the labels of evenly
    spaced examples; the first images when unlabelled), chosen once."""
    if num_images not in self._picture_sources:
      ids = pipeline.class_spread_ids(self.test, num_images)
      self._picture_sources[num_images] = pipeline.SubsetSource(
          self.test, ids, f'{len(ids)} pictures')
    return self._picture_sources[num_images]

  def eval_images(self, num_images: int) -> np.ndarray:
    """`num_images` images of eval.split from several classes (host numpy;
    see `_picture_source`)."""
    batch = next(iter(self._batches(self._picture_source(num_images))))
    return np.asarray(jax.device_get(batch['image']))[:num_images]

  def pictures(self, params: Any, state: Any = None,
               num_images: int = 8) -> np.ndarray | None:
    """uint8 [k, H, W, 3]: the method's pictures of k images of eval.split
    from several classes (`eval_images`), drawn with a fixed key (the same
    images, segments and orders at every step, so pictures from different
    steps compare). None if there is nothing to draw."""
    if not self.draws:
      return None
    method = self.task.method
    k = min(num_images, self.config.eval.batch_size)
    key = jax.random.key(self.config.seed)
    state = {} if state is None else state

    def draw(params, state, batch, index):
      del index  # the pictures use the fixed key above
      return method.pictures(params['model'], batch['image'][:k], key, state=state)

    fn = self._jit(f'pictures/{k}', draw, params, state)
    batch = next(iter(self._batches(self._picture_source(k))))
    return np.asarray(jax.device_get(fn(params, state, batch, np.int32(0))))

  def select(self, params: Any, state: Any = None) -> dict[str, float]:
    """What a run may choose with, {metric name: value}: a classifier's
    `val/...` on the held-out part (nothing without one), and the monitors
    of frozen features (pretraining's curves, on eval.split)."""
    state = {} if state is None else state
    out = {}
    if self.classify and self.val is not None:
      out.update(self._classification(params, state, self.val, 'val'))
    if self.monitors:
      out.update(self._monitors(params, state))
    return out

  def report(self, params: Any, state: Any = None) -> dict[str, float]:
    """The reported numbers of a classifier, `eval/...` on eval.split
    ({} for pretraining). Read once, for the parameters already chosen."""
    if not self.classify:
      return {}
    return self._classification(params, {} if state is None else state, self.test, 'eval')

  def __call__(self, params: Any, state: Any = None) -> dict[str, float]:
    """`select` and `report` of the same parameters."""
    return dict(self.select(params, state), **self.report(params, state))
