"""Tests of the built-in shapes dataset and the index-based input pipeline."""

import os
import pathlib
import re
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from ssl_jax.data import pipeline
from ssl_jax.data import shapes

SHAPES_SMALL = 'ssl_jax_shapes/small'


@pytest.fixture(scope='session')
def shapes_dir(data_dir):
  """The 'small' config of the built-in dataset (conftest builds it once)."""
  return data_dir


@pytest.fixture(scope='session')
def train_source(shapes_dir):
  return pipeline.make_source(SHAPES_SMALL, data_dir=shapes_dir, split='train')


@pytest.fixture(scope='session')
def tiny_source(shapes_dir):
  """40 examples: small enough to cover several epochs in a few batches."""
  return pipeline.make_source(SHAPES_SMALL, data_dir=shapes_dir,
                              split='train[:40]')


def take(ds, n):
  return [b for _, b in zip(range(n), pipeline.iterate_numpy(ds))]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def concat(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def train_ds(source, **kwargs):
  args = dict(seed=0, global_batch_size=16, start_step=0, image_size=32,
              train=True)
  args.update(kwargs)
  return pipeline.make_dataset(source, **args)


# ----------------------------------------------------------------------------
# The shapes dataset.
# ----------------------------------------------------------------------------


def test_render_is_deterministic():
  a, label_a = shapes.render_example('train', 123)
  b, label_b = shapes.render_example('train', 123)
  np.testing.assert_array_equal(a, b)
  assert label_a == label_b == 123 % shapes.NUM_CLASSES
  c = shapes.render(np.random.default_rng([shapes.FIXED_SEED, 0, 123]), 3)
  np.testing.assert_array_equal(a, c)
  assert not np.array_equal(a, shapes.render_example('test', 123)[0])
  assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_every_class_renders_and_is_not_constant():
  assert len(shapes.CLASS_NAMES) == len(set(shapes.CLASS_NAMES)) >= 10
  images = np.stack([shapes.render_example('train', i)[0] for i in range(50)])
  assert images.std(axis=(1, 2, 3)).min() > 10.0
  colours = [len(np.unique(im.reshape(-1, 3), axis=0)) for im in images]
  assert min(colours) > 50
  # The shape is visible: some pixels are far from the median colour.
  far = np.abs(images - np.median(images, axis=(1, 2), keepdims=True))
  assert (far.max(axis=(1, 2, 3)) > 80).all()
  assert len({im.tobytes() for im in images}) == len(images)


def test_stored_dataset_matches_render_and_is_balanced(shapes_dir,
                                                       train_source):
  builder = shapes.prepare(shapes_dir, 'small')
  assert builder.info.splits['train'].num_examples == 2000
  assert builder.info.splits['test'].num_examples == 500
  assert builder.info.features['label'].names == list(shapes.CLASS_NAMES)
  assert builder.info.supervised_keys == ('image', 'label')
  for k in (0, 7, 1999):
    image, label = train_source.get(k)
    expected, expected_label = shapes.render_example('train', k)
    np.testing.assert_array_equal(image, expected)
    assert label == expected_label
  test = pipeline.make_source(SHAPES_SMALL, data_dir=shapes_dir, split='test')
  ds = pipeline.make_dataset(test, seed=0, global_batch_size=100,
                             start_step=0, image_size=64, train=False)
  labels = concat(list(pipeline.iterate_numpy(ds)))['label']
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                np.full(10, 50))


def _luma(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_upright_images_say_which_way_is_up():
  """Rotation is learnable on `upright` and not on the default images: the
  top edge is lighter than the bottom edge (light from above) in nearly
  every upright image and in about half of the default ones; the shadow
  darkens the background just below the shape."""
  n = 200
  upright = np.stack([shapes.render_example('train', i, upright=True)[0] for i in range(n)])
  default = np.stack([shapes.render_example('train', i)[0] for i in range(n)])
  np.testing.assert_array_equal(default[7], shapes.render_example('train', 7, upright=False)[0])
  assert [shapes.label_of(i) for i in range(n)] == [shapes.render_example(
      'train', i, upright=True)[1] for i in range(n)]

  def lighter_on_top(images):
    luma = _luma(images)
    return np.mean(luma[:, :3].mean(axis=(1, 2)) > luma[:, -3:].mean(axis=(1, 2)))

  assert lighter_on_top(upright) > 0.95
  assert 0.3 < lighter_on_top(default) < 0.7
  # Shadow: under the shape's lowest covered pixel in each column the
  # background is darker than above its highest one, in most images.
  darker_below = []
  for i in range(50):
    rng = shapes.example_rng('train', i)
    radius, cx, cy, angle = shapes._shape_pose(rng, 64, True)
    cover = shapes._coverage(shapes.label_of(i), 64, radius, cx, cy, angle) > 0.5
    col = int(round(cx))
    rows = np.flatnonzero(cover[:, col])
    luma = _luma(upright[i])[:, col]
    below, above = rows.max() + 2, rows.min() - 2
    if below < 64 and above >= 0:
      darker_below.append(luma[below] < luma[above])
  assert np.mean(darker_below) > 0.9, np.mean(darker_below)


def test_upright_config_is_stored_and_resolves(data_dir):
  source = pipeline.make_source('ssl_jax_shapes/upright_small', data_dir=data_dir,
                                split='train')
  assert source.num_examples == 2000
  for k in (0, 1999):
    image, label = source.get(k)
    expected, expected_label = shapes.render_example('train', k, upright=True)
    np.testing.assert_array_equal(image, expected)
    assert label == expected_label
  with pytest.raises(pipeline.DataError, match="Unknown ssl_jax_shapes config 'uprite'"):
    pipeline.make_source('ssl_jax_shapes/uprite', data_dir=data_dir, split='train')


def test_prepare_is_cached(shapes_dir):
  files = sorted(pathlib.Path(shapes_dir).rglob('*'))
  mtimes = [f.stat().st_mtime for f in files]
  start = time.perf_counter()
  shapes.prepare(shapes_dir, 'small')
  assert time.perf_counter() - start < 2.0
  assert sorted(pathlib.Path(shapes_dir).rglob('*')) == files
  assert [f.stat().st_mtime for f in files] == mtimes


def _ridge_accuracy(x_train, y_train, x_test, y_test, lam):
  """Closed-form ridge regression (dual form) on one-hot targets."""
  targets = np.eye(shapes.NUM_CLASSES)[y_train]
  gram = (x_train @ x_train.T).astype(np.float64)
  alpha = np.linalg.solve(gram + lam * np.eye(len(gram)), targets)
  scores = x_test @ (x_train.T @ alpha)
  return float(np.mean(np.argmax(scores, axis=1) == y_test))


@pytest.mark.slow  # over 8 s: the slow tier (the fast one stays under 4 minutes)
def test_linear_classifier_on_raw_pixels_does_poorly():
  def load(split, n):
    images, labels = zip(*(shapes.render_example(split, i) for i in range(n)))
    pixels = np.stack(images).reshape(n, -1).astype(np.float32) / 255.0
    return pixels, np.array(labels)

  x_train, y_train = load('train', 2000)
  x_test, y_test = load('test', 1000)
  mean, std = x_train.mean(0), x_train.std(0) + 1e-3
  x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
  accuracies = {lam: _ridge_accuracy(x_train, y_train, x_test, y_test, lam)
                for lam in (1e1, 1e3, 1e5)}
  print(f'ridge accuracy on raw pixels (10 classes): {accuracies}')
  assert max(accuracies.values()) < 0.35


# ----------------------------------------------------------------------------
# The pipeline.
# ----------------------------------------------------------------------------


def test_output_shapes_dtypes_and_range(train_source):
  ds = train_ds(train_source, global_batch_size=8, image_size=48)
  spec = ds.element_spec
  assert spec['image'].shape == (8, 48, 48, 3)
  assert spec['image'].dtype == tf.float32
  assert spec['label'].dtype == tf.int32
  assert spec['index'].dtype == tf.int64
  assert spec['valid'].dtype == tf.bool
  for i, batch in enumerate(take(ds, 3)):
    assert batch['image'].min() >= 0.0 and batch['image'].max() <= 1.0
    assert batch['image'].std() > 0.05
    assert ((batch['label'] >= 0) & (batch['label'] < 10)).all()
    np.testing.assert_array_equal(batch['index'], np.arange(8) + 8 * i)
    assert batch['valid'].all()


def test_same_seed_same_batches_other_seed_differs(train_source):
  first = take(train_ds(train_source, seed=7), 3)
  assert_batches_equal(first, take(train_ds(train_source, seed=7), 3))
  other = take(train_ds(train_source, seed=8), 1)[0]
  assert not np.array_equal(first[0]['image'], other['image'])


def test_resume_yields_the_same_batches(tiny_source):
  # 40 examples, 16 per step: steps 0..5 span 2.4 epochs.
  full = take(train_ds(tiny_source, seed=3), 6)
  resumed = take(train_ds(tiny_source, seed=3, start_step=3), 3)
  assert_batches_equal(full[3:], resumed)


@pytest.mark.parametrize('train', [True, False])
def test_processes_split_the_global_batch(tiny_source, train):
  kwargs = dict(seed=5, train=train, global_batch_size=16)
  single = take(train_ds(tiny_source, **kwargs), 3)
  parts = [take(train_ds(tiny_source, process_index=i, process_count=2,
                         **kwargs), 3) for i in range(2)]
  for step in range(3):
    assert parts[0][step]['image'].shape[0] == 8
    joined = concat([parts[0][step], parts[1][step]])
    assert_batches_equal([single[step]], [joined])


def test_example_ids_are_a_new_permutation_each_epoch():
  n = 37
  ids = pipeline.example_ids(seed=11, num_examples=n,
                             global_indices=np.arange(3 * n))
  epochs = ids.reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(n))
  np.testing.assert_array_equal(
      ids[n + 5:n + 9],
      pipeline.example_ids(seed=11, num_examples=n,
                           global_indices=np.arange(n + 5, n + 9)))


def test_each_epoch_reads_every_example_once(tiny_source):
  # Without augmentation (whole-image crop, no flip) each training image is
  # one stored image exactly, so the stream can be matched to example ids.
  stored = {tiny_source.get(k)[0].tobytes(): k for k in range(40)}
  ds = train_ds(tiny_source, seed=1, global_batch_size=8, image_size=64,
                min_area=1.0, flip=False)
  batches = concat(take(ds, 10))  # 80 examples: two epochs.
  images = np.round(batches['image'] * 255).astype(np.uint8)
  ids = np.array([stored[im.tobytes()] for im in images])
  for epoch in ids.reshape(2, 40):
    np.testing.assert_array_equal(np.sort(epoch), np.arange(40))
  np.testing.assert_array_equal(
      ids, pipeline.example_ids(1, 40, batches['index']))
  assert not np.array_equal(ids[:40], ids[40:])


def test_eval_is_one_ordered_padded_pass(tiny_source):
  ds = pipeline.make_dataset(tiny_source, seed=0, global_batch_size=16,
                             start_step=0, image_size=64, train=False)
  batches = list(pipeline.iterate_numpy(ds))
  assert len(batches) == 3  # ceil(40 / 16)
  everything = concat(batches)
  np.testing.assert_array_equal(everything['index'], np.arange(48))
  np.testing.assert_array_equal(everything['valid'], np.arange(48) < 40)
  for k in (0, 17, 39):  # 64x64 at image_size 64: the identity.
    expected, label = shapes.render_example('train', k)
    np.testing.assert_array_equal(
        np.round(everything['image'][k] * 255).astype(np.uint8), expected)
    assert everything['label'][k] == label
  np.testing.assert_array_equal(everything['image'][40:48],
                                everything['image'][0:8])
  smaller = pipeline.make_dataset(tiny_source, seed=0, global_batch_size=16,
                                  start_step=0, image_size=32, train=False)
  assert next(pipeline.iterate_numpy(smaller))['image'].shape == (16, 32, 32,
                                                                  3)


def test_bad_arguments_raise(tiny_source):
  with pytest.raises(pipeline.DataError, match='multiple of process_count'):
    train_ds(tiny_source, global_batch_size=15, process_count=2)
  with pytest.raises(ValueError, match='seed'):
    train_ds(tiny_source, seed=-1)


# ----------------------------------------------------------------------------
# Low-label subsets.
# ----------------------------------------------------------------------------

# Synthetic classes: sizes that round up, down and to even, a class smaller
# than 1/fraction, a gap in the class numbers, and unlabelled examples.
SUBSET_CLASS_SIZES = {0: 1, 1: 2, 2: 15, 3: 25, 5: 50, 6: 149, 7: 150, 9: 612}


def _synthetic_labels():
  labels = np.concatenate([np.full(n, c) for c, n in SUBSET_CLASS_SIZES.items()]
                          + [np.full(40, -1)])
  return np.random.default_rng(0).permutation(labels)


def _class_counts(labels, ids):
  return {c: int(np.sum(labels[ids] == c)) for c in SUBSET_CLASS_SIZES}


@pytest.fixture(scope='module')
def subset_source(data_dir):
  return pipeline.make_source(SHAPES_SMALL, data_dir=data_dir, split='train',
                              label_fraction=0.1)


def test_class_balanced_subset_counts_determinism_and_nesting():
  labels = _synthetic_labels()
  subsets = {}
  for fraction in (0.01, 0.1, 0.2, 0.5, 1.0):
    ids = pipeline.class_balanced_subset(labels, fraction, seed=3)
    assert ids.dtype == np.int64 and (np.diff(ids) > 0).all()
    assert (labels[ids] >= 0).all()
    assert _class_counts(labels, ids) == {
        c: max(1, round(fraction * n)) for c, n in SUBSET_CLASS_SIZES.items()}
    np.testing.assert_array_equal(
        ids, pipeline.class_balanced_subset(labels, fraction, seed=3))
    subsets[fraction] = set(ids.tolist())
  assert list(_class_counts(labels, sorted(subsets[0.1])).values()) == [
      1, 1, 2, 2, 5, 15, 15, 61]
  assert subsets[1.0] == set(np.flatnonzero(labels >= 0).tolist())
  assert subsets[0.01] < subsets[0.1] < subsets[0.2] < subsets[0.5]
  other_seed = pipeline.class_balanced_subset(labels, 0.2, seed=4)
  assert set(other_seed.tolist()) != subsets[0.2]
  # Fixed streams: the same ids on every machine and numpy version.
  np.testing.assert_array_equal(
      pipeline.class_balanced_subset(np.arange(100) % 10, 0.1),
      [2, 7, 30, 38, 54, 59, 71, 76, 83, 85])


@pytest.mark.parametrize('fraction', [0, -0.1, 1.5])
def test_bad_label_fraction_raises(tmp_path, fraction):
  message = re.escape(f'must be in (0, 1], got {fraction}')
  with pytest.raises(pipeline.DataError, match=message):
    pipeline.class_balanced_subset(np.arange(10) % 2, fraction)
  # Checked before anything is opened (this dataset does not exist).
  with pytest.raises(pipeline.DataError, match=message):
    pipeline.make_source('mnist', data_dir=str(tmp_path), split='train',
                         label_fraction=fraction)


def test_subset_of_unlabelled_examples_raises():
  with pytest.raises(pipeline.DataError, match='all are -1'):
    pipeline.class_balanced_subset(np.full(30, -1), 0.5)


def test_tfds_source_labels_match_get(data_dir):
  source = pipeline.make_source(SHAPES_SMALL, data_dir=data_dir, split='train')
  labels = source.labels()
  assert labels.shape == (2000,) and labels.dtype == np.int32
  for k in (0, 1, 7, 1234, 1999):
    assert labels[k] == source.get(k)[1]
  np.testing.assert_array_equal(labels, np.arange(2000) % 10)
  sliced = pipeline.make_source(SHAPES_SMALL, data_dir=data_dir,
                                split='train[5:25]')
  np.testing.assert_array_equal(sliced.labels(), np.arange(5, 25) % 10)


def test_subset_source_is_balanced_and_its_labels_are_the_data(
    subset_source):
  assert isinstance(subset_source, pipeline.SubsetSource)
  assert subset_source.num_examples == len(subset_source.ids) == 200
  assert subset_source.num_classes == 10
  assert subset_source.split == 'train'
  assert subset_source.name.endswith('[10% of labels]')
  labels = subset_source.labels()
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                np.full(10, 20))
  ds = pipeline.make_dataset(subset_source, seed=0, global_batch_size=64,
                             start_step=0, image_size=64, train=False)
  batches = concat(list(pipeline.iterate_numpy(ds)))
  valid = batches['valid']
  np.testing.assert_array_equal(batches['index'][valid], np.arange(200))
  np.testing.assert_array_equal(batches['label'][valid], labels)
  for k in (0, 99, 199):  # 64x64 at image_size 64: the stored image.
    expected, label = shapes.render_example('train', subset_source.ids[k])
    np.testing.assert_array_equal(
        np.round(batches['image'][k] * 255).astype(np.uint8), expected)
    assert labels[k] == label


def test_training_on_a_subset_reads_only_the_subset(subset_source):
  # Whole-image crops without flips: each training image is a stored image.
  ds = train_ds(subset_source, seed=2, global_batch_size=50, image_size=64,
                min_area=1.0, flip=False)
  batches = concat(take(ds, 5))  # 250 examples: more than one epoch.
  positions = pipeline.example_ids(2, 200, batches['index'])
  ids = subset_source.ids[positions]
  assert set(ids[:200].tolist()) == set(subset_source.ids.tolist())
  np.testing.assert_array_equal(batches['label'], ids % 10)
  images = np.round(batches['image'] * 255).astype(np.uint8)
  for image, k in zip(images, ids):
    np.testing.assert_array_equal(image, shapes.render_example('train', k)[0])


@pytest.mark.parametrize('name, split, fraction, expected', [
    ('imagenet2012', 'train', 0.01, 'imagenet2012_subset/1pct'),
    ('imagenet2012:5.1.0', 'train', 0.1, 'imagenet2012_subset/10pct'),
    ('imagenet2012', 'train', 0.2, None),
    ('imagenet2012', 'validation', 0.1, None),
    ('imagenet2012', 'train[:50%]', 0.01, None),
    ('imagenet_v2', 'train', 0.1, None),
    (SHAPES_SMALL, 'train', 0.01, None),
])
def test_imagenet_subset_name(name, split, fraction, expected):
  assert pipeline.imagenet_subset_name(name, split, fraction) == expected


# ----------------------------------------------------------------------------
# Errors from tfds sources.
# ----------------------------------------------------------------------------


def test_unprepared_tfds_dataset_says_how_to_build_it(tmp_path):
  data_dir = str(tmp_path / 'empty')
  os.makedirs(data_dir)
  start = time.perf_counter()
  with pytest.raises(ValueError) as error:
    pipeline.make_source('mnist', data_dir=data_dir, split='train')
  assert time.perf_counter() - start < 10.0
  message = str(error.value)
  assert (f'tfds build mnist --data_dir={data_dir} '
          '--file_format=array_record') in message
  assert isinstance(error.value, pipeline.DataError)
  assert os.listdir(data_dir) == []  # Nothing downloaded or created.


def test_unknown_split_lists_the_available_ones(shapes_dir):
  with pytest.raises(ValueError, match=r"\['test', 'train'\]"):
    pipeline.make_source(SHAPES_SMALL, data_dir=shapes_dir,
                         split='validation')


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match='no_such_dataset_xyz'):
    pipeline.make_source('no_such_dataset_xyz', data_dir=str(tmp_path),
                         split='train')


class TinyTfrecordDataset(tfds.core.GeneratorBasedBuilder):
  """Four 8x8 images, prepared in the default (TFRecord) format."""

  VERSION = tfds.core.Version('1.0.0')
  # Defined in a test module, not a package: give tfds the paths it would
  # otherwise resolve through the package (see shapes.SslJaxShapes.code_path).
  code_path = epath.Path(__file__)
  pkg_dir_path = epath.Path(__file__).parent

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 3)),
            'label': tfds.features.ClassLabel(num_classes=2),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {'image': np.full((8, 8, 3), 60 * i, np.uint8), 'label': i % 2}


def test_tfrecord_dataset_asks_for_array_record(tmp_path):
  TinyTfrecordDataset(data_dir=str(tmp_path)).download_and_prepare()
  with pytest.raises(ValueError, match='--file_format=array_record'):
    pipeline.make_source('tiny_tfrecord_dataset', data_dir=str(tmp_path),
                         split='train')


# ----------------------------------------------------------------------------
# Folder sources.
# ----------------------------------------------------------------------------


def _write_image(path, array, format_name):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=format_name)


def _make_folder(root, rng):
  """3 classes, sizes and formats vary; returns [(path, label, array)]."""
  examples = []
  for label, name in enumerate(['ant', 'bee', 'cat']):
    for i, (h, w) in enumerate([(20, 30), (40, 24)]):
      array = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
      path = os.path.join(root, name, f'{i}.png')
      _write_image(path, array, 'PNG')
      examples.append((path, label, array))
  gray = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
  _write_image(os.path.join(root, 'cat', 'gray.png'), gray, 'PNG')
  _write_image(os.path.join(root, 'bee', 'photo.JPG'),
               rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), 'JPEG')
  with open(os.path.join(root, 'ant', 'notes.txt'), 'w') as f:
    f.write('not an image')
  return examples


def test_folder_source(tmp_path):
  root = str(tmp_path / 'images')
  examples = _make_folder(root, np.random.default_rng(0))
  source = pipeline.make_source('folder', data_dir=root, split='train')
  assert source.num_examples == 8
  assert source.num_classes == 3
  assert source.class_names == ['ant', 'bee', 'cat']
  image, label = source.get(0)  # ant/0.png
  np.testing.assert_array_equal(image, examples[0][2])
  assert label == 0
  gray_image, gray_label = source.get(7)  # cat/gray.png (sorted last)
  assert gray_image.shape == (16, 16, 3) and gray_label == 2
  ds = pipeline.make_dataset(source, seed=0, global_batch_size=4,
                             start_step=0, image_size=16, train=False)
  labels = concat(list(pipeline.iterate_numpy(ds)))['label']
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(source.labels(), labels)
  batch = take(train_ds(source, global_batch_size=4, image_size=16), 2)[1]
  assert batch['image'].shape == (4, 16, 16, 3)
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0


def test_folder_splits(tmp_path):
  rng = np.random.default_rng(1)
  root = str(tmp_path / 'split_images')
  for split, classes in [('train', ['a', 'b']), ('test', ['b', 'c'])]:
    for name in classes:
      _write_image(os.path.join(root, split, name, 'x.png'),
                   rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 'PNG')
  test = pipeline.make_source('folder', data_dir=root, split='test')
  assert test.class_names == ['a', 'b', 'c']
  assert [test.get(k)[1] for k in range(2)] == [1, 2]
  with pytest.raises(ValueError, match='available splits'):
    pipeline.make_source('folder', data_dir=root, split='validation')


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    pipeline.make_source('folder', data_dir=str(tmp_path / 'missing'),
                         split='train')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='no class folders'):
    pipeline.make_source('folder', data_dir=str(empty), split='train')
  (empty / 'dog').mkdir()
  (empty / 'dog' / 'readme.txt').write_text('no images here')
  with pytest.raises(ValueError, match='No .png/.jpg/.jpeg images'):
    pipeline.make_source('folder', data_dir=str(empty), split='train')
  with pytest.raises(ValueError, match='available splits'):
    pipeline.make_source('folder', data_dir=str(empty), split='test')
