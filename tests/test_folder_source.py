"""Tests of image folders: the header check and its index, bad images while
iterating, the verify command, empty class folders, split slicing and the
evaluation pictures' classes. Fast: tiny PNGs, no JAX compilation."""

import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssl_jax import sharding as sharding_lib
from ssl_jax.config.checks import ConfigError
from ssl_jax.core import validation
from ssl_jax.data import folder as folder_lib
from ssl_jax.data import pipeline
from ssl_jax.data import verify
from ssl_jax.evaluate.evaluator import Evaluator

CLASSES = ('ant', 'bee', 'cat')


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  """Every index goes to a fresh cache directory."""
  path = tmp_path / 'cache'
  monkeypatch.setenv(folder_lib.CACHE_ENV, str(path))
  return path


def _png(path, value=None, size=(6, 6)):
  """A tiny PNG: constant `value`, else random pixels."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
  array = (np.full(size + (3,), value, np.uint8) if value is not None
           else rng.integers(0, 256, size + (3,), dtype=np.uint8))
  Image.fromarray(array).save(path, format='PNG')
  return str(path)


def _folder(root, per_class=4, splits=(None,), classes=CLASSES):
  """ROOT/[split/]class/i.png; class c's pixels are all 50 * (c + 1)."""
  for split in splits:
    base = root if split is None else root / split
    for c, name in enumerate(classes):
      for i in range(per_class):
        _png(base / name / f'{i}.png', value=50 * (c + 1))
  return str(root)


def _corrupt_png(path):
  """A PNG signature and the start of a header, then garbage."""
  good = tf.io.encode_png(np.zeros((6, 6, 3), np.uint8)).numpy()
  with open(path, 'wb') as f:
    f.write(good[:30] + b'\x00' * 60)
  return str(path)


def _eval_batches(source, batch=4, **kwargs):
  return list(pipeline.iterate(source, seed=0, global_batch_size=batch,
                               start_step=0, image_size=6, train=False,
                               **kwargs))


def _train_batches(source, start, stop, batch=4):
  batches = pipeline.iterate(source, seed=0, global_batch_size=batch,
                             start_step=start, image_size=6, train=True,
                             min_area=1.0)
  return [b for _, b in zip(range(stop - start), batches)]


# ----------------------------------------------------------------------------
# The header check at open, skip_bad_images, the index.
# ----------------------------------------------------------------------------


def test_header_check_names_bad_files_and_the_key(tmp_path):
  root = _folder(tmp_path / 'images')
  (tmp_path / 'images' / 'ant' / 'notes.png').write_text('not an image')
  (tmp_path / 'images' / 'bee' / 'empty.png').write_bytes(b'')
  with pytest.raises(pipeline.DataError) as e:
    pipeline.make_source('folder', data_dir=root, split='train')
  message = str(e.value)
  assert '2 bad image file(s)' in message and '\n' not in message
  assert f'{root}/ant/notes.png (not a PNG/JPEG/GIF/BMP/WebP file)' in message
  assert f'{root}/bee/empty.png (empty file)' in message
  assert 'config.data.skip_bad_images=True' in message


def test_header_check_lists_the_first_ten_and_the_count(tmp_path):
  root = _folder(tmp_path / 'images')
  for i in range(12):
    (tmp_path / 'images' / 'cat' / f'bad{i:02d}.png').write_text('x')
  with pytest.raises(pipeline.DataError, match=r'12 bad image file\(s\)') as e:
    pipeline.make_source('folder', data_dir=root, split='train')
  message = str(e.value)
  assert message.count('(not a PNG') == 10 and '(12 in all)' in message


def test_other_image_formats_pass_the_header_check(tmp_path):
  root = _folder(tmp_path / 'images', per_class=1)
  for fmt in ('GIF', 'BMP', 'WEBP', 'JPEG'):
    path = tmp_path / 'images' / 'ant' / f'{fmt.lower()}.jpg'
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(path, format=fmt)
  source = pipeline.make_source('folder', data_dir=root, split='train')
  assert source.num_examples == 7
  assert sum(b['valid'].sum() for b in _eval_batches(source)) == 7


def test_skip_bad_images_leaves_them_out_and_logs_them(tmp_path, caplog):
  root = _folder(tmp_path / 'images')
  (tmp_path / 'images' / 'ant' / 'notes.png').write_text('not an image')
  (tmp_path / 'images' / 'bee' / 'empty.jpg').write_bytes(b'')
  with caplog.at_level(logging.WARNING):
    source = pipeline.make_source('folder', data_dir=root, split='train',
                                  skip_bad_images=True)
  assert source.num_examples == 12
  assert not any('notes' in p or 'empty' in p for p in source.paths)
  assert 'skipping 2 bad image file(s)' in caplog.text
  assert 'ant/notes.png' in caplog.text and 'bee/empty.jpg' in caplog.text


def test_index_is_reused_and_rebuilt_for_changed_files(tmp_path, cache,
                                                      monkeypatch):
  root = _folder(tmp_path / 'images')
  calls = []
  real = folder_lib.header_status
  monkeypatch.setattr(folder_lib, 'header_status',
                      lambda path: calls.append(path) or real(path))
  pipeline.make_source('folder', data_dir=root, split='train')
  assert len(calls) == 12
  index = folder_lib.index_path(root)
  assert index.startswith(str(cache)) and os.path.exists(index)
  calls.clear()
  pipeline.make_source('folder', data_dir=root, split='train')
  assert calls == []  # Every entry reused.
  changed = tmp_path / 'images' / 'bee' / '1.png'
  changed.write_text('now text')  # New size and mtime.
  _png(tmp_path / 'images' / 'cat' / 'new.png')
  with pytest.raises(pipeline.DataError, match='bee/1.png'):
    pipeline.make_source('folder', data_dir=root, split='train')
  assert sorted(calls) == sorted([str(changed),
                                  str(tmp_path / 'images' / 'cat' / 'new.png')])
  calls.clear()
  os.remove(changed)
  source = pipeline.make_source('folder', data_dir=root, split='train')
  assert calls == [] and source.num_examples == 12
  # The removed file's entry is dropped.
  assert 'bee/1.png' not in folder_lib.FolderIndex(root).entries


def test_remote_roots_are_read_through_gfile(tmp_path, monkeypatch):
  """A scheme:// root (TF's ram:// file system standing in for gs://):
  listed and read with tf.io.gfile; index entries are reused by path."""
  root = f'ram://{tmp_path.name}/images'
  png = tf.io.encode_png(np.zeros((6, 6, 3), np.uint8)).numpy()
  for name, data in [('ant/0.png', png), ('ant/1.png', png),
                     ('bee/0.png', png), ('bee/notes.png', b'text')]:
    tf.io.gfile.makedirs(os.path.dirname(f'{root}/{name}'))
    with tf.io.gfile.GFile(f'{root}/{name}', 'wb') as f:
      f.write(data)
  calls = []
  real = folder_lib.header_status
  monkeypatch.setattr(folder_lib, 'header_status',
                      lambda path: calls.append(path) or real(path))
  with pytest.raises(pipeline.DataError, match=f'{root}/bee/notes.png'):
    pipeline.make_source('folder', data_dir=root, split='train')
  assert len(calls) == 4
  calls.clear()
  source = pipeline.make_source('folder', data_dir=root, split='train',
                                skip_bad_images=True)
  assert calls == [] and source.num_examples == 3
  assert sum(b['valid'].sum() for b in _eval_batches(source)) == 3


def test_unwritable_cache_only_logs(tmp_path, monkeypatch, caplog):
  root = _folder(tmp_path / 'images', per_class=1)
  blocker = tmp_path / 'not_a_dir'
  blocker.write_text('')
  monkeypatch.setenv(folder_lib.CACHE_ENV, str(blocker))
  with caplog.at_level(logging.WARNING):
    source = pipeline.make_source('folder', data_dir=root, split='train')
  assert source.num_examples == 3 and 'Could not write' in caplog.text


# ----------------------------------------------------------------------------
# Images that fail to decode while iterating.
# ----------------------------------------------------------------------------


def test_corrupt_image_stops_iteration_naming_its_path(tmp_path):
  root = _folder(tmp_path / 'images')
  bad = _corrupt_png(tmp_path / 'images' / 'bee' / 'corrupt.png')
  source = pipeline.make_source('folder', data_dir=root, split='train')
  assert source.num_examples == 13  # The header is fine.
  with pytest.raises(pipeline.DataError) as e:
    _eval_batches(source)
  message = str(e.value)
  assert f'image file {bad} cannot be decoded' in message
  assert "split 'train'" in message and 'skip_bad_images=True' in message
  assert 'verify' in message and '\n' not in message
  with pytest.raises(pipeline.DataError, match='corrupt.png'):
    _train_batches(source, 0, 8)


def test_corrupt_image_is_skipped_recorded_and_resume_stays_exact(
    tmp_path, caplog):
  root = _folder(tmp_path / 'images')
  bad = _corrupt_png(tmp_path / 'images' / 'bee' / 'corrupt.png')
  source = pipeline.make_source('folder', data_dir=root, split='train',
                                skip_bad_images=True)
  with caplog.at_level(logging.WARNING):
    run = _train_batches(source, 0, 8)  # 32 examples: every id at least twice.
  assert 'corrupt.png' in caplog.text and 'cannot be decoded' in caplog.text
  bad_id = source.paths.index(bad)
  assert source.bad_ids().tolist() == [bad_id]
  # Recorded: a later open without skipping refuses it, with skipping
  # knows it from the start; resuming at step 5 gives the same batches.
  with pytest.raises(pipeline.DataError,
                     match=r'corrupt.png \(cannot be decoded\)'):
    pipeline.make_source('folder', data_dir=root, split='train')
  reopened = pipeline.make_source('folder', data_dir=root, split='train',
                                  skip_bad_images=True)
  assert reopened.bad_ids().tolist() == [bad_id]
  resumed = _train_batches(reopened, 5, 8)
  for a, b in zip(run[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Evaluation: the bad example is invalid, every other counted once.
  batches = _eval_batches(reopened)
  valid = np.concatenate([b['valid'] for b in batches])
  assert valid.sum() == 12 and not valid[bad_id]


class _MemorySource(pipeline.Source):
  """Encoded images in memory (a stand-in for a TFDS source)."""

  def __init__(self, images, labels):
    self.name, self.split = 'memory_ds:1.0.0', 'train[:6]'
    self.num_examples, self.num_classes = len(images), 2
    self._images = tf.constant(images)
    self._labels = tf.constant(labels, tf.int32)

  def fetch(self, ids):
    return {'image': tf.gather(self._images, ids),
            'label': tf.gather(self._labels, ids)}

  def parse(self, handle):
    return handle['image'], handle['label']


def test_undecodable_record_names_dataset_split_and_example_id(tmp_path):
  good = tf.io.encode_png(np.zeros((6, 6, 3), np.uint8)).numpy()
  images = [good] * 6
  images[4] = good[:30] + b'\x00' * 60
  source = _MemorySource(images, [0, 1] * 3)
  with pytest.raises(pipeline.DataError) as e:
    _eval_batches(source, batch=2)
  assert str(e.value).startswith(
      "memory_ds:1.0.0 split 'train[:6]': example id 4 cannot be decoded")
  source.skip_bad_images = True
  valid = np.concatenate([b['valid'] for b in _eval_batches(source, batch=2)])
  assert valid.tolist() == [True] * 4 + [False, True]


# ----------------------------------------------------------------------------
# The verify command.
# ----------------------------------------------------------------------------


def test_verify_command(tmp_path, capsys):
  root = _folder(tmp_path / 'images', per_class=2, splits=('train', 'test'))
  assert verify.main([root]) == 0
  out = capsys.readouterr().out
  assert out.splitlines() == [
      f'{root}: 12 image files in 2 split(s) (train 6, test 6): all decode.']
  bad = _corrupt_png(tmp_path / 'images' / 'test' / 'cat' / 'corrupt.png')
  (tmp_path / 'images' / 'train' / 'ant' / 'empty.png').write_bytes(b'')
  assert verify.main([root]) == 1
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(f'{root}: 14 image files in 2 split(s)')
  assert '2 bad (1 empty file, 1 cannot be decoded)' in lines[0]
  assert sorted(lines[1:]) == sorted([
      f'{root}/train/ant/empty.png: empty file',
      f'{bad}: cannot be decoded (Invalid PNG. Failed to initialize decoder)'])
  assert verify.main([root, '--skip_bad']) == 0
  capsys.readouterr()
  # Recorded: an open with skip_bad_images knows it without iterating.
  source = pipeline.make_source('folder', data_dir=root, split='test',
                                skip_bad_images=True)
  assert [source.paths[i] for i in source.bad_ids()] == [bad]
  assert verify.main([str(tmp_path / 'missing')]) == 2


# ----------------------------------------------------------------------------
# Empty class folders, split slicing.
# ----------------------------------------------------------------------------


def test_class_folder_without_images_anywhere_is_an_error(tmp_path):
  root = tmp_path / 'images'
  _folder(root, per_class=2, splits=('train', 'test'), classes=('ant', 'bee'))
  (root / 'test' / 'cat').mkdir()  # Only in test: empty everywhere.
  (root / 'train' / 'bee' / 'extra').mkdir()
  (root / 'test' / 'dog').mkdir()
  _png(root / 'train' / 'dog' / '0.png')  # Empty in test, images in train.
  source = pipeline.make_source('folder', data_dir=str(root), split='train')
  assert source.class_names == ['ant', 'bee', 'cat', 'dog']
  with pytest.raises(pipeline.DataError) as e:
    pipeline.make_source('folder', data_dir=str(root), split='test')
  assert f'Class folder {root}/test/cat has no' in str(e.value)
  (root / 'test' / 'cat' / 'readme.txt').write_text('no images')
  with pytest.raises(pipeline.DataError, match='test/cat'):
    pipeline.make_source('folder', data_dir=str(root), split='test')
  _png(root / 'test' / 'cat' / '0.png')
  assert pipeline.make_source('folder', data_dir=str(root),
                              split='test').num_examples == 5


def test_slices_take_a_seeded_order_that_mixes_classes(tmp_path):
  root = _folder(tmp_path / 'images', per_class=10, splits=('train', 'test'))
  whole = pipeline.make_source('folder', data_dir=root, split='train')
  first = pipeline.make_source('folder', data_dir=root, split='train[:9]')
  assert first.num_examples == 9
  assert len(set(first.labels().tolist())) > 1  # Not the first class only.
  assert first.paths == sorted(first.paths, key=whole.paths.index)
  again = pipeline.make_source('folder', data_dir=root, split='train[:9]')
  assert again.paths == first.paths  # Fixed order.
  half = pipeline.make_source('folder', data_dir=root, split='train[:50%]')
  rest = pipeline.make_source('folder', data_dir=root, split='train[50%:]')
  assert half.num_examples == rest.num_examples == 15
  assert sorted(half.paths + rest.paths) == sorted(whole.paths)
  assert pipeline.make_source('folder', data_dir=root,
                              split='train[-5:]').num_examples == 5
  assert pipeline.make_source('folder', data_dir=root,
                              split='train[:100%]').paths == whole.paths
  test = pipeline.make_source('folder', data_dir=root, split='test[:4]')
  assert test.num_examples == 4 and test.split == 'test[:4]'
  assert all('/test/' in p for p in test.paths)
  valid = np.concatenate([b['valid'] for b in _eval_batches(test)])
  assert valid.sum() == 4
  both = pipeline.make_source('folder', data_dir=root, split='train[:3]+test')
  assert both.num_examples == 33


@pytest.mark.parametrize('split, match', [
    ('validation', r"Split 'validation' not found \(available splits: "
                   r"\['test', 'train'\]; allowed: a split name"),
    ('train[:1000]', r'incompatible with 30 examples.*available splits'),
    ('train[:3', r"Bad split 'train\[:3'.*train\[:1000\]"),
    ('train[3:3]', 'selects no files'),
])
def test_bad_split_lists_available_splits_and_syntax(tmp_path, split, match):
  root = _folder(tmp_path / 'images', per_class=10, splits=('train', 'test'))
  with pytest.raises(pipeline.DataError, match=match) as e:
    pipeline.make_source('folder', data_dir=root, split=split)
  assert '\n' not in str(e.value)


# ----------------------------------------------------------------------------
# Evaluation pictures, the config key.
# ----------------------------------------------------------------------------


def test_eval_pictures_span_several_classes(tmp_path):
  root = _folder(tmp_path / 'images', per_class=10, splits=('train', 'test'))
  test = pipeline.make_source('folder', data_dir=root, split='test')
  ids = pipeline.class_spread_ids(test, 6)
  assert len(ids) == 6 and sorted(test.labels()[ids]) == [0, 0, 1, 1, 2, 2]
  config = ml_collections.ConfigDict(dict(
      seed=0, objective='classification',
      data=dict(name='folder', data_dir=root, image_size=6),
      eval=dict(split='test', batch_size=8, crop_fraction=1.0, monitors=())))
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  evaluator = Evaluator(config, None, mesh, num_classes=3)
  images = evaluator.eval_images(3)
  assert images.shape == (3, 6, 6, 3)
  values = sorted(np.round(images.mean(axis=(1, 2, 3)) * 255).tolist())
  assert values == [50.0, 100.0, 150.0]  # One image of each class.


def test_skip_bad_images_config_key():
  from configs import common, patchformer
  pretrain = patchformer.get_config('tiny')
  probe = common.classification_config(pretrain, mode='linear')
  assert probe.data.skip_bad_images is False
  assert pretrain.data.skip_bad_images is False
  with pytest.raises(TypeError):  # the config types it; validation checks it anyway
    pretrain.data.skip_bad_images = 'yes'
  del pretrain.data['skip_bad_images']
  pretrain.data.skip_bad_images = 'yes'
  with pytest.raises(ConfigError, match='config.data.skip_bad_images'):
    validation.validate_common(pretrain, 1)
