"""Which labelled examples a classification run learns from, and which it
holds out to choose with.

Model selection (a sweep's best point, early stopping, a regulariser, a
layer) must never read the split whose numbers are reported. A run with
``held_out`` examples sets aside a deterministic, class-balanced part of its
*training* split (:func:`held_out_ids`); it never trains on them, and every
choice is made on them. The label fraction is then drawn from what is left
(``pipeline.make_source``), so the held-out part is the same for every fraction
and the fractions stay nested (1% inside 10% inside 20%).

ImageNet's standard low-label lists (``imagenet2012_subset/1pct`` and
``/10pct``, which the papers' 1% / 10% results use) are separate TFDS
datasets; their examples are matched to ``imagenet2012``'s train split by
file name (:func:`ids_of_names`), so that the held-out part avoids them and
a 20% subset contains the 10% list (:func:`nested_ids`).

Every draw is a prefix of a per-class pseudo-random order from a PCG64 bit
generator seeded by ``SeedSequence([stream, seed, class])``: stable across
numpy versions and machines, and independent between the held-out part
and the label fractions.
"""

from __future__ import annotations

import numpy as np

from ssl_jax.data.errors import DataError

# Streams of the per-class orders (any distinct constants).
_HELD_OUT_STREAM = 0x68656C64  # 'held'
_TOP_UP_STREAM = 0x746F7075    # 'topu'


def _by_class(labels: np.ndarray, candidates: np.ndarray):
  """(class, ids of `candidates` with that label in id order) for every
  class present among the labelled candidates."""
  candidates = candidates[labels[candidates] >= 0]
  grouped = candidates[np.argsort(labels[candidates], kind='stable')]
  classes, starts = np.unique(labels[grouped], return_index=True)
  return list(zip(classes.tolist(), np.split(grouped, starts[1:])))


def _order(stream: int, seed: int, c: int, n: int) -> np.ndarray:
  bits = np.random.PCG64(np.random.SeedSequence([stream, seed, c]))
  return np.argsort(bits.random_raw(n), kind='stable')


def _labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'labels must be a 1-D integer array, got {labels.dtype} {labels.shape}.')
  return labels


def held_out_ids(labels, examples: int, seed: int = 0,
                 exclude=()) -> np.ndarray:
  """The sorted ids (int64) of `examples` labelled examples held out for
  model selection: examples // (number of classes) of every class (the
  remainder is dropped, so the part is exactly balanced), never one of
  `exclude`.

  Raises DataError when `examples` is smaller than the number of classes,
  or a class has too few examples to keep at least one for training.
  """
  labels = _labels(labels)
  if not (isinstance(examples, (int, np.integer)) and examples > 0):
    raise DataError(f'held-out examples must be an integer > 0, got {examples!r}.')
  allowed = np.setdiff1d(np.arange(labels.size), np.asarray(exclude, np.int64))
  groups = _by_class(labels, allowed)
  if not groups:
    raise DataError(f'cannot hold out {examples} examples: none of the {labels.size} '
                    'examples has a label.')
  per_class = examples // len(groups)
  if per_class < 1:
    raise DataError(f'cannot hold out {examples} examples class-balanced over '
                    f'{len(groups)} classes: it must be at least the number of classes.')
  chosen = []
  for c, ids in groups:
    total = int(np.sum(labels == c))
    if per_class >= total:
      raise DataError(f'cannot hold out {per_class} examples of class {c}: it has {total} '
                      'in this split, and some must be left to train on. Lower the '
                      'held-out size.')
    if per_class > len(ids):
      raise DataError(f'cannot hold out {per_class} examples of class {c}: only '
                      f'{len(ids)} are outside the training subset.')
    chosen.append(ids[_order(_HELD_OUT_STREAM, seed, c, len(ids))[:per_class]])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def remaining_ids(num_examples: int, held_out) -> np.ndarray:
  """Every id in [0, num_examples) not in `held_out`, sorted (int64)."""
  return np.setdiff1d(np.arange(num_examples, dtype=np.int64),
                      np.asarray(held_out, np.int64))


def ids_of_names(names: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
  """The sorted ids i with names[i] in `wanted` (bytes or str); DataError if
  some wanted name is missing or a name repeats (the match would be
  ambiguous)."""
  names = np.asarray(names)
  wanted = np.asarray(wanted)
  unique, counts = np.unique(names, return_counts=True)
  if np.any(counts > 1):
    raise DataError(f'{what}: file name {unique[counts > 1][0]!r} appears more than once; '
                    'examples cannot be matched by file name.')
  found = np.isin(wanted, names)
  if not found.all():
    raise DataError(f'{what}: {int((~found).sum())} of {wanted.size} listed files are not in '
                    f'the full split (e.g. {wanted[~found][0]!r}); both must come from the '
                    'same ImageNet release.')
  return np.flatnonzero(np.isin(names, wanted)).astype(np.int64)


def nested_ids(labels, fraction: float, seed: int, base, exclude=()) -> np.ndarray:
  """A class-balanced `fraction` of the labelled examples that contains
  `base` (e.g. a 20% subset containing the 10% list): every class keeps
  max(1, round(fraction * n_c)) examples (n_c: the class's examples in the
  split), `base`'s first and then a seeded prefix of the rest, none of
  `exclude`. Sorted int64 ids."""
  labels = _labels(labels)
  base = np.asarray(base, np.int64)
  allowed = np.setdiff1d(np.arange(labels.size), np.concatenate(
      [base, np.asarray(exclude, np.int64)]))
  extra_by_class = dict(_by_class(labels, allowed))
  chosen = [base]
  for c, base_ids in _by_class(labels, base):
    want = max(1, round(fraction * int(np.sum(labels == c))))
    if want < len(base_ids):
      raise DataError(f'a {fraction:g} subset cannot contain the base list: class {c} '
                      f'would keep {want} examples, the list has {len(base_ids)}.')
    rest = extra_by_class.get(c, np.zeros([0], np.int64))
    chosen.append(rest[_order(_TOP_UP_STREAM, seed, c, len(rest))[:want - len(base_ids)]])
  return np.sort(np.concatenate(chosen)).astype(np.int64)
