"""The held-out part every selection reads, and the nesting of label
fractions around it (ssl_jax.data.splits, make_source(held_out_examples=))."""

import numpy as np
import pytest

from ssl_jax.data import pipeline, splits

LABELS = np.repeat(np.arange(4), 50)[np.random.default_rng(0).permutation(200)]


def test_held_out_part_is_class_balanced_deterministic_and_seeded():
  held = splits.held_out_ids(LABELS, 41, seed=3)
  assert np.bincount(LABELS[held]).tolist() == [10] * 4  # 41 // 4 per class
  assert np.array_equal(held, splits.held_out_ids(LABELS, 41, seed=3))
  assert not np.array_equal(held, splits.held_out_ids(LABELS, 41, seed=4))
  assert np.all(np.diff(held) > 0) and held.dtype == np.int64
  rest = splits.remaining_ids(200, held)
  assert len(rest) == 160 and not set(rest) & set(held)


def test_held_out_part_avoids_excluded_ids():
  excluded = np.flatnonzero(LABELS == 0)[:45]
  held = splits.held_out_ids(LABELS, 20, exclude=excluded)
  assert not set(held) & set(excluded)
  assert np.bincount(LABELS[held]).tolist() == [5] * 4


@pytest.mark.parametrize('examples, message', [
    (3, 'at least the number of classes'),
    (200, 'some must be left to train on'),
    (0, 'must be an integer > 0'),
])
def test_impossible_held_out_sizes_are_refused(examples, message):
  with pytest.raises(pipeline.DataError, match=message):
    splits.held_out_ids(LABELS, examples)


def test_nested_subset_contains_the_base_list_and_avoids_the_held_out_part():
  base = pipeline.class_balanced_subset(LABELS, 0.1, seed=7)  # e.g. a standard 10% list
  held = splits.held_out_ids(LABELS, 8, exclude=base)
  twenty = splits.nested_ids(LABELS, 0.2, 0, base, held)
  assert set(base) <= set(twenty) and not set(held) & set(twenty)
  assert np.bincount(LABELS[twenty]).tolist() == [10] * 4
  assert np.array_equal(twenty, splits.nested_ids(LABELS, 0.2, 0, base, held))


def test_names_match_examples_and_missing_names_are_named():
  names = np.array([b'a.JPEG', b'b.JPEG', b'c.JPEG', b'd.JPEG'], object)
  assert splits.ids_of_names(names, np.array([b'd.JPEG', b'b.JPEG'], object),
                             'list').tolist() == [1, 3]
  with pytest.raises(pipeline.DataError, match=r"list: 1 of 2 listed files are not in the "
                     r"full split \(e.g. b'x.JPEG'\)"):
    splits.ids_of_names(names, np.array([b'a.JPEG', b'x.JPEG'], object), 'list')


def test_make_source_holds_out_then_draws_nested_fractions_from_the_rest(data_dir):
  kwargs = dict(data_dir=data_dir, split='train', held_out_examples=100)
  whole = pipeline.make_source('ssl_jax_shapes/small', **kwargs)
  ten = pipeline.make_source('ssl_jax_shapes/small', label_fraction=0.1, **kwargs)
  twenty = pipeline.make_source('ssl_jax_shapes/small', label_fraction=0.2, **kwargs)
  held = whole.held_out
  assert held.num_examples == 100 and np.bincount(held.labels()).tolist() == [10] * 10
  assert np.array_equal(held.ids, ten.held_out.ids)  # the same part for every fraction
  assert whole.num_examples == 1900 and not set(whole.ids) & set(held.ids)
  assert set(ten.ids) <= set(twenty.ids) <= set(whole.ids)
  plain = pipeline.make_source('ssl_jax_shapes/small', data_dir=data_dir, split='train')
  assert plain.held_out is None and plain.num_examples == 2000


class _FakeImagenet(pipeline.Source):
  """Labels and file names in memory, for the ImageNet subset wiring."""

  def __init__(self, labels, names, name):
    self.name, self.split = name, 'train'
    self._labels, self._names = np.asarray(labels, np.int32), np.asarray(names, object)
    self.num_examples, self.num_classes = len(labels), 4

  def fetch(self, ids):
    raise NotImplementedError

  def parse(self, handle):
    raise NotImplementedError

  def labels(self):
    return self._labels.copy()

  def strings(self, key):
    assert key == 'file_name'
    return self._names


def _imagenet_opener():
  names = np.array([f'n{c}_{i}.JPEG'.encode() for i, c in enumerate(LABELS)], object)
  one = pipeline.class_balanced_subset(LABELS, 0.04, seed=9)  # stand-ins for the lists
  ten = pipeline.class_balanced_subset(LABELS, 0.1, seed=5)
  sources = {'imagenet2012': _FakeImagenet(LABELS, names, 'imagenet2012')}
  for fraction, listed in ((0.01, one), (0.1, ten)):
    subset = pipeline._IMAGENET_SUBSETS[fraction]
    sources[subset] = _FakeImagenet(LABELS[listed], names[listed], subset)
  return (lambda name, split: sources[name]), one, ten


def test_imagenet_lists_are_kept_and_the_held_out_part_is_the_same_for_every_fraction():
  opener, one, ten = _imagenet_opener()
  made = {f: pipeline._imagenet_subset(opener, 'imagenet2012', f, 0, 8)
          for f in (0.01, 0.1, 0.2, 0.05, 1.0)}
  assert np.array_equal(made[0.01].ids, one) and np.array_equal(made[0.1].ids, ten)
  held = made[0.01].held_out.ids
  assert len(held) == 8 and not set(held) & (set(one) | set(ten))
  for source in made.values():  # one held-out part, outside every training subset
    assert np.array_equal(source.held_out.ids, held) and not set(source.ids) & set(held)
  assert set(ten) <= set(made[0.2].ids)  # 20% contains the 10% list
  assert np.bincount(LABELS[made[0.2].ids]).tolist() == [10] * 4
  assert made[1.0].num_examples == 200 - 8
