"""Sources and the deterministic, index-based tf.data input pipeline.

Why index-based
---------------
The input stream is a *pure function of (seed, global example index)*. The
example at global index ``g = step * global_batch + j`` (``0 <= j <
global_batch``) is

* epoch ``e = g // N`` and position ``p = g % N`` (``N`` examples),
* example id ``k = perm_e(p)`` where ``perm_e`` is a pseudo-random
  permutation of ``[0, N)`` that depends only on ``(seed, e)``
  (``tf.random.experimental.index_shuffle``; nothing is materialised),
* augmented with stateless random ops keyed by ``(seed, g)``.

There is no iterator state, no shuffle buffer and no stateful RNG, so resuming
after preemption at step ``s`` is exact and free: build the dataset with
``start_step=s`` and it yields precisely the batches ``s, s+1, ...`` the
interrupted run would have seen, without replaying (or checkpointing) the
stream. The same property makes multi-host input trivially consistent:
process ``pi`` of ``pc`` produces, for every step, the contiguous slice
``j in [pi * B / pc, (pi + 1) * B / pc)`` of the global batch, so the global
batch is the same whatever the number of processes.

Random access needs a *source*: something that maps an example id to a
decoded image and a label.

* :class:`TfdsSource` -- any TFDS dataset prepared in ArrayRecord format
  (``tfds build NAME --data_dir=DIR --file_format=array_record``). Raw
  records are read in batches by ``array_record``'s data source inside a
  ``tf.numpy_function``; they are parsed and decoded by TF ops in a parallel
  map. TFRecord-prepared datasets are rejected (no random access), and
  nothing is ever downloaded or built implicitly.
* The built-in ``ssl_jax_shapes`` dataset (:mod:`ssl_jax.data.shapes`): a
  :class:`TfdsSource` that is built on the machine if missing.
* :class:`FolderSource` -- a folder of images ``ROOT/<class>/*.png|jpg|jpeg``
  (or ``ROOT/<split>/<class>/...``); splits accept TFDS slicing, over a
  fixed seeded order of the files.

Low-label training subsets (semi-supervised evaluation): ``make_source(...,
label_fraction=f)`` keeps a deterministic, class-balanced fraction ``f`` of a
split (:func:`class_balanced_subset`, wrapped in a :class:`SubsetSource`),
so that 1% of the labels is a subset of 10%, itself a subset of 20%. For
ImageNet's train split, 1% and 10% are instead the standard TFDS subsets
``imagenet2012_subset/1pct`` and ``/10pct`` (:func:`imagenet_subset_name`),
and larger fractions contain the 10% list. ``held_out_examples=n`` sets
aside n class-balanced labelled examples of the split for model selection
(the source's ``held_out``; :mod:`ssl_jax.data.splits`).

Multi-view training (contrastive methods): ``make_dataset(...,
views=[ViewSpec(...), ...], share_geometry=...)`` gives each training example
``V`` views, ``image`` ``[b, V, S, S, 3]``, each view drawn with stateless
randomness from (seed, g, view); see :mod:`ssl_jax.data.views` for the ops,
where they run and why.

Bad images: a folder source checks every file's header when it is opened
(cached in an index, :mod:`ssl_jax.data.folder`); an image that fails to
decode while iterating is found and named by :func:`iterate`, or, with
``make_source(..., skip_bad_images=True)``, skipped: replaced by another
example in training, marked invalid in evaluation, so that the stream stays a
pure function of (seed, global index) and resuming stays exact.
``python -m ssl_jax.data.verify ROOT`` decodes a whole folder ahead of time.

Use :func:`make_source` and :func:`make_dataset`; iterate with
:func:`iterate` (names or skips images that fail to decode) or
:func:`iterate_numpy` (or ``tfds.as_numpy``) to get numpy batches.
"""

from __future__ import annotations

import abc
import functools
import math
import os
import time
from typing import Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

from ssl_jax.data import folder as folder_lib
from ssl_jax.data import randaugment as randaugment_lib
from ssl_jax.data import shapes
from ssl_jax.data import views as views_lib
from ssl_jax.data import splits
from ssl_jax.data.errors import DataError
# The options' checks and ViewSpec need no TF (ssl_jax.data.options), so that
# validating a config loads none; pipeline.ViewSpec is re-exported.
from ssl_jax.data.options import (ViewSpec, check_crop, check_pad, check_randaugment,
                                  check_views)

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = folder_lib.IMAGE_EXTENSIONS
SHAPES_NAMES = ('shapes', shapes.SslJaxShapes.name)
FOLDER_KIND = 'folder'
FOLDER_SPLITS = folder_lib.SPLITS

# Independent random streams derived from the user seed.
_SHUFFLE_STREAM = 1
_AUGMENT_STREAM = 2
_RANDAUGMENT_STREAM = 3
_VIEW_GEOMETRY_STREAM = 4  # Crop and flip keys of views v > 0.
_VIEW_PHOTOMETRIC_STREAM = 5  # Photometric keys of every view.
# Inception-style random resized crop.
_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
_CROP_MAX_ATTEMPTS = 10
# Reading every label of a split (Source.labels): ids per batched read, reads
# in flight (bounds memory: a batch of ImageNet records is ~100 MB), and the
# duration above which the read is logged.
_LABELS_BATCH = 1024
_LABELS_PARALLEL_READS = 16
_LABELS_LOG_AFTER_S = 5.0
# The standard TFDS low-label subsets of ImageNet's train split.
_IMAGENET = 'imagenet2012'
_IMAGENET_SUBSETS = {0.01: 'imagenet2012_subset/1pct',
                     0.1: 'imagenet2012_subset/10pct'}


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


class Source(abc.ABC):
  """Random access to the examples of one split.

  Reading is split in two stages so that tf.data can run the expensive part
  in parallel: :meth:`fetch` maps a batch of example ids to light per-example
  handles (serialized records, file paths...), and :meth:`parse` turns one
  handle into ``(image, label)`` where ``image`` is either an encoded image
  (a scalar ``tf.string``: JPEG, PNG, ...) or a ``uint8 [h, w, c]`` tensor,
  and ``label`` is an ``int32`` scalar (``-1`` when unlabelled).
  """

  name: str
  split: str
  num_examples: int
  num_classes: int | None
  # Whether :func:`iterate` skips an image that fails to decode (True) or
  # stops with a DataError naming it (False).
  skip_bad_images: bool = False
  # The labelled examples of the same split set aside from this (training)
  # source for model selection (``make_source(..., held_out_examples=n)``).
  held_out: 'Source | None' = None

  @abc.abstractmethod
  def fetch(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
    """int64 [n] example ids -> dict of [n] per-example handles."""

  @abc.abstractmethod
  def parse(self, handle: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """One example's handles -> (encoded or uint8 image, int32 label)."""

  def get(self, example_id: int) -> tuple[np.ndarray, int]:
    """Example ``example_id`` as (uint8 [h, w, 3] array, label); eager."""
    handle = self.fetch(tf.constant([example_id], tf.int64))
    image, label = self.parse({k: v[0] for k, v in handle.items()})
    return _to_uint8_rgb(image).numpy(), int(label)

  def labels(self) -> np.ndarray:
    """The label of every example id: int32 [num_examples], -1 if unlabelled.

    This default reads the whole split through :meth:`fetch` and
    :meth:`parse` (images are not decoded); subclasses that know their labels,
    or can parse them alone, override it.
    """

    def batch_labels(ids):
      return tf.map_fn(lambda handle: self.parse(handle)[1], self.fetch(ids),
                       fn_output_signature=tf.int32)

    return _read_labels(self, batch_labels)

  def labels_of(self, ids: np.ndarray) -> np.ndarray:
    """The labels (int32) of example ids ``ids`` (sorted, distinct).

    This default reads only those examples (no image decoded); sources that
    hold their labels override it.
    """
    return Source.labels(SubsetSource(self, np.asarray(ids, np.int64)))

  def bad_ids(self) -> np.ndarray:
    """The sorted ids (int64) of examples known not to decode.

    :func:`make_dataset` never reads them: in training each is replaced by
    the next good id, in evaluation it is also marked ``valid=False``.
    """
    return np.asarray(sorted(getattr(self, '_bad_ids', ())), np.int64)

  def mark_bad(self, ids: Sequence[int], reason: str) -> None:
    """Records that examples ``ids`` fail to decode (``reason``: the error)."""
    del reason  # Only kept in memory here; FolderSource records it.
    self._bad_ids = set(getattr(self, '_bad_ids', ())) | {int(i) for i in ids}

  def describe(self, example_id: int) -> str:
    """How an error names example ``example_id`` (after name and split)."""
    return f'example id {example_id}'

  def __repr__(self) -> str:
    return (f'{type(self).__name__}(name={self.name!r}, split={self.split!r}, '
            f'num_examples={self.num_examples}, '
            f'num_classes={self.num_classes})')


class TfdsSource(Source):
  """A TFDS dataset prepared in ArrayRecord format, read by random access."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, *,
               image_key: str | None = None, label_key: str | None = None,
               skip_bad_images: bool = False):
    self.name = builder.info.full_name
    self.split = split
    self.skip_bad_images = skip_bad_images
    self._check_readable(builder)
    split_info = _tfds_split_info(builder, split)
    self._image_key, self._label_key = _tfds_keys(builder, image_key,
                                                  label_key)
    self._all_features = builder.info.features
    self._features = _partial_features(builder.info.features,
                                       [self._image_key, self._label_key])
    self._records = array_record_data_source.ArrayRecordDataSource(
        list(split_info.file_instructions))
    self._parallel_reads = '://' in os.fspath(builder.data_dir)
    self._labels = None  # Read on first use by labels().
    self.num_examples = len(self._records)
    self.num_classes = _num_classes(builder.info.features, self._label_key)

  @staticmethod
  def _check_readable(builder: tfds.core.DatasetBuilder) -> None:
    file_format = builder.info.file_format
    if file_format != tfds.core.FileFormat.ARRAY_RECORD:
      command = _tfds_build_command(_builder_name(builder),
                                    os.fspath(builder.data_dir_root))
      raise DataError(
          f'Dataset {builder.info.full_name} in {builder.data_dir} is stored '
          f'as {file_format.value if file_format else "unknown format"}, '
          'which has no random access. Rebuild it in ArrayRecord format '
          f'(after moving the old copy away): {command}')

  def fetch(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
    return {'record': self._records_op(ids, self._read_records)}

  @staticmethod
  def _records_op(ids: tf.Tensor, read) -> tf.Tensor:
    """int64 [n] ids -> tf.string [n] records, read by ``read`` (numpy)."""
    records = tf.numpy_function(read, [ids], tf.string, stateful=False,
                                name='read_array_records')
    records.set_shape(ids.shape)
    return records

  def _read_records(self, ids: np.ndarray) -> np.ndarray:
    if self._parallel_reads:
      # One thread per shard touched: hides the latency of remote storage.
      records = self._records.__getitems__(ids.tolist())
    else:
      # Local files: a plain loop is ~3x faster than spinning up a thread
      # pool per call; tf.data runs several of these calls concurrently (the
      # reader releases the GIL).
      records = [self._records[i] for i in ids.tolist()]
    return _object_array(records)

  def _read_range(self, ids: np.ndarray) -> np.ndarray:
    # Consecutive ids lie in one or two shards: one batched read per shard
    # (a single reader call) is ~1.7x faster than the per-record loop.
    return _object_array(self._records.__getitems__(ids.tolist()))

  def parse(self, handle):
    decoders = {}
    if isinstance(self._features[self._image_key], tfds.features.Image):
      decoders[self._image_key] = tfds.decode.SkipDecoding()
    example = self._features.deserialize_example(handle['record'],
                                                 decoders=decoders)
    if self._label_key is None:
      label = tf.constant(-1, tf.int32)
    else:
      label = tf.cast(example[self._label_key], tf.int32)
    return example[self._image_key], label

  def labels(self) -> np.ndarray:
    """Every label of the split (read once, then cached; a copy).

    Records are read in large batches, several batches at a time, and only
    the label feature is parsed (batched ``tf.io.parse_example``); nothing
    else is deserialized or decoded. ImageNet's train split (1.28M records)
    is bound by reading its ~140 GB of records.
    """
    if self._label_key is None:
      return np.full(self.num_examples, -1, np.int32)
    if self._labels is None:
      self._labels = _read_labels(self, self._batch_labels)
    return self._labels.copy()

  def labels_of(self, ids: np.ndarray) -> np.ndarray:
    if self._label_key is None:
      return np.full(len(ids), -1, np.int32)
    if self._labels is not None:
      return self._labels[np.asarray(ids, np.int64)]
    return super().labels_of(ids)

  def strings(self, key: str) -> np.ndarray:
    """Every example's scalar string feature `key` (e.g. ImageNet's
    'file_name'), as bytes [num_examples]; only that feature is parsed."""
    if key not in self._all_features:
      raise DataError(f'{self.name} has no feature {key!r}; it has: '
                      + ', '.join(sorted(self._all_features.keys())))
    spec = {key: tf.io.FixedLenFeature([], tf.string)}

    def batch(ids):
      records = self._records_op(ids, self._read_range)
      return tf.io.parse_example(records, spec)[key]

    return _read_all(self, batch, np.zeros([0], object), f'{key!r} values')

  def _batch_labels(self, ids: tf.Tensor) -> tf.Tensor:
    """int64 [n] example ids -> int32 [n] labels."""
    records = self._records_op(ids, self._read_range)
    key = self._label_key
    info = self._features[key].get_serialized_info()
    if (isinstance(info, tfds.features.TensorInfo) and info.shape == ()
        and info.tf_dtype.is_integer):
      spec = tf.io.FixedLenFeature([], tf.int64,
                                   default_value=info.default_value)
      labels = tf.io.parse_example(records, {key: spec})[key]
      return tf.cast(labels, tf.int32)
    label_only = _partial_features(self._features, [key])
    return tf.map_fn(
        lambda r: tf.cast(label_only.deserialize_example(r)[key], tf.int32),
        records, fn_output_signature=tf.int32)


def _object_array(items: list[bytes]) -> np.ndarray:
  out = np.empty(len(items), dtype=object)
  out[:] = items
  return out


class FolderSource(Source):
  """Images in ``ROOT/<class_name>/...`` (class names sorted -> labels).

  Splits: if ``ROOT/train`` (or ``ROOT/validation``, ``ROOT/test``) is a
  directory, each of those is a split laid out as ``ROOT/<split>/<class>/``
  and the classes are the union over splits (so labels agree across
  splits). Otherwise the whole of ``ROOT`` is the ``train`` split. Images are
  ``*.png``, ``*.jpg``, ``*.jpeg`` (any case) anywhere below a class folder,
  sorted by class, then path. ``gs://`` roots work (``tf.io.gfile``).

  A split may be sliced as in TFDS (``'train[:1000]'``, ``'test[10%:]'``,
  ``'train[-500:]'``, ``'train[:50%]'``, ``'train+test'``; percent
  boundaries rounded by TFDS): the slice is taken from a fixed seeded
  permutation of the split's sorted files
  (:func:`ssl_jax.data.folder.seeded_order`), so that it mixes the classes;
  the chosen files keep their sorted order (``'train[:100%]'`` is
  ``'train'``). Slices are taken over every listed file, before bad files are
  left out, so a file's membership does not depend on which others are bad.

  Opening checks every chosen file's header (not empty, starts with a PNG,
  JPEG, GIF, BMP or WebP signature), with a thread pool; the results are
  cached in an index so that the next open rereads only new or changed
  files. The index lives in ``$SSL_JAX_CACHE/folder_index/`` (default
  ``~/.cache/ssl_jax/folder_index/``), one file per root keyed by a hash of
  the root path; an entry is reused while the file's size and modification
  time are unchanged (``gs://``: while its path is listed); see
  :mod:`ssl_jax.data.folder`.

  Bad files: with ``skip_bad_images=False`` (the default) a file that fails
  the header check, or that the index records as undecodable (found by an
  earlier iteration or by ``python -m ssl_jax.data.verify ROOT``), is a
  DataError naming the files (the first 10 and the count). With
  ``skip_bad_images=True`` they are logged instead; files with a bad header
  are left out (they are not examples), undecodable ones keep their example
  id and are never read (:meth:`bad_ids`: replaced in training, invalid in
  evaluation), so that the number of examples, hence the training stream,
  does not depend on when a decode failure was found (resuming stays exact).
  A class folder without images in any split is a DataError naming it.
  """

  def __init__(self, root: str, split: str, *, skip_bad_images: bool = False):
    root, split_dirs, class_names = folder_lib.open_root(root)
    listings = {}

    def listing(name: str) -> folder_lib.Listing:
      if name not in listings:
        listings[name] = folder_lib.list_split(name, split_dirs[name],
                                               class_names)
      return listings[name]

    if not class_names:
      split_dir = split_dirs.get(str(split).split('[', 1)[0], root)
      raise DataError(f'Image folder {root!r} has no class folders; expected '
                      f'{split_dir}/<class_name>/<image files>.')
    try:
      parts = folder_lib.resolve_split(split, list(split_dirs),
                                       lambda s: len(listing(s)))
    except DataError as e:
      raise DataError(f'Image folder {root!r}: {e} (Use {root}/<split>/'
                      f'<class>/ for several splits; a flat {root}/<class>/ '
                      'folder is the train split.)') from None
    chosen = []
    for name, start, stop in parts:
      files = listing(name)
      if not files.paths:
        raise DataError(f'No {"/".join(IMAGE_EXTENSIONS)} images found under '
                        f'{files.directory}/<class_name>/.')
      folder_lib.check_empty_classes(files, split_dirs)
      chosen.append((files, folder_lib.select(len(files), start, stop)))
    paths = [files.paths[i] for files, ids in chosen for i in ids]
    labels = np.concatenate([files.labels[ids] for files, ids in chosen])
    sizes = np.concatenate([files.sizes[ids] for files, ids in chosen])
    mtimes = np.concatenate([files.mtimes[ids] for files, ids in chosen])
    if not paths:
      raise DataError(f'Split {split!r} of image folder {root!r} selects no '
                      'files: use a wider slice.')
    index = folder_lib.FolderIndex(root)  # Not kept: large for ImageNet.
    listed = [(index.relative(files.directory + '/') if
               files.directory != root else '',
               {index.relative(p) for p in files.paths})
              for files in listings.values()]
    status = folder_lib.statuses(index, paths, sizes, mtimes, listed=listed,
                                 what=f'{root} {split!r}')
    del index
    bad = np.flatnonzero(np.isin(status, folder_lib.HEADER_BAD)
                         | (status == folder_lib.UNDECODABLE))
    if bad.size:
      described = folder_lib.describe_bad([paths[i] for i in bad],
                                          status[bad])
      if not skip_bad_images:
        raise DataError(
            f'Image folder {root!r} split {split!r} has {bad.size} bad image '
            f'file(s): {described}. Fix or remove them, or set '
            'config.data.skip_bad_images=True (make_source(..., '
            'skip_bad_images=True)) to skip them.')
      logging.warning('Image folder %s split %r: skipping %d bad image '
                      'file(s) (skip_bad_images=True): %s', root, split,
                      bad.size, described)
    keep = np.flatnonzero(~np.isin(status, folder_lib.HEADER_BAD))
    if not keep.size:
      raise DataError(f'Image folder {root!r} split {split!r} has no usable '
                      f'image: all {len(paths)} files are bad.')
    self.root = root
    self.name = f'{FOLDER_KIND}:{root}'
    self.split = split
    self.class_names = class_names
    self.skip_bad_images = skip_bad_images
    self.num_examples = int(keep.size)
    self.num_classes = len(class_names)
    self._path_list = [paths[i] for i in keep]
    self._sizes, self._mtimes = sizes[keep], mtimes[keep]
    self._bad_ids = set(np.flatnonzero(
        status[keep] == folder_lib.UNDECODABLE).tolist())
    self._paths = tf.constant(self._path_list, tf.string)
    self._labels = tf.constant(labels[keep], tf.int32)

  @property
  def paths(self) -> list[str]:
    """The file of every example id."""
    return list(self._path_list)

  def fetch(self, ids):
    return {'path': tf.gather(self._paths, ids),
            'label': tf.gather(self._labels, ids)}

  def parse(self, handle):
    return tf.io.read_file(handle['path']), handle['label']

  def labels(self) -> np.ndarray:
    return self._labels.numpy()

  def labels_of(self, ids: np.ndarray) -> np.ndarray:
    return self.labels()[np.asarray(ids, np.int64)]

  def mark_bad(self, ids: Sequence[int], reason: str) -> None:
    """Also records the files as undecodable in the index (later opens
    skip them, or, without skip_bad_images, refuse them)."""
    super().mark_bad(ids, reason)
    ids = [int(i) for i in ids]
    folder_lib.FolderIndex(self.root).record(
        [self._path_list[i] for i in ids], self._sizes[ids], self._mtimes[ids],
        folder_lib.UNDECODABLE)

  def describe(self, example_id: int) -> str:
    return f'image file {self._path_list[int(example_id)]}'


class SubsetSource(Source):
  """The examples ``ids`` (sorted, distinct) of another source.

  Example ``k`` of the subset is example ``ids[k]`` of ``source``. Built by
  :func:`make_source` with ``label_fraction < 1``.
  """

  def __init__(self, source: Source, ids: np.ndarray,
               description: str | None = None):
    """Wraps ``source``; ``description`` names the subset (``name[...]``)."""
    ids = np.asarray(ids)
    if (ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer)
        or np.any(np.diff(ids) <= 0)
        or (ids.size and not 0 <= ids[0] <= ids[-1] < source.num_examples)):
      raise DataError(
          'SubsetSource ids must be a sorted 1-D array of distinct integers '
          f'in [0, {source.num_examples}) (the ids of {source!r}).')
    self.source = source
    self.ids = ids.astype(np.int64)
    description = description or f'{len(ids)} of {source.num_examples}'
    self.name = f'{source.name}[{description}]'
    self.split = source.split
    self.num_examples = len(ids)
    self.num_classes = source.num_classes
    self._ids = tf.constant(self.ids, tf.int64)

  def fetch(self, ids):
    return self.source.fetch(tf.gather(self._ids, ids))

  def parse(self, handle):
    return self.source.parse(handle)

  def labels(self) -> np.ndarray:
    return self.source.labels()[self.ids]

  def labels_of(self, ids: np.ndarray) -> np.ndarray:
    return self.source.labels_of(self.ids[np.asarray(ids, np.int64)])

  @property
  def skip_bad_images(self) -> bool:
    return self.source.skip_bad_images

  def bad_ids(self) -> np.ndarray:
    return np.flatnonzero(np.isin(self.ids, self.source.bad_ids())).astype(
        np.int64)

  def mark_bad(self, ids: Sequence[int], reason: str) -> None:
    self.source.mark_bad(self.ids[np.asarray(ids, np.int64)], reason)

  def describe(self, example_id: int) -> str:
    return self.source.describe(int(self.ids[int(example_id)]))


def _read_labels(source: Source, batch_labels) -> np.ndarray:
  """All labels of ``source``, int32 [num_examples].

  ``batch_labels`` (TF ops: int64 [n] consecutive ids -> int32 [n] labels) is
  mapped over batches of ids, several batches at a time.
  """
  return _read_all(source, batch_labels, np.zeros([0], np.int32), 'labels').astype(np.int32)


def _read_all(source: Source, read_batch, empty: np.ndarray, what: str) -> np.ndarray:
  """``read_batch`` (TF ops: int64 [n] consecutive ids -> [n] values)
  mapped over every example id of ``source``, several batches at a time,
  concatenated after ``empty``; the read is logged when it is slow."""
  start = time.perf_counter()
  ds = tf.data.Dataset.range(source.num_examples).batch(_LABELS_BATCH)
  ds = ds.map(read_batch, num_parallel_calls=_LABELS_PARALLEL_READS,
              deterministic=True)
  values = np.concatenate([empty] + list(ds.prefetch(2).as_numpy_iterator()))
  elapsed = time.perf_counter() - start
  if elapsed > _LABELS_LOG_AFTER_S:
    logging.info('Read the %d %s of %s split %r in %.1f s.', len(values), what,
                 source.name, source.split, elapsed)
  return values


def _check_fraction(fraction: float, name: str) -> None:
  if not (isinstance(fraction, (int, float, np.integer, np.floating))
          and 0.0 < fraction <= 1.0):
    raise DataError(f'{name} must be in (0, 1], got {fraction!r}.')


def _check_subset_seed(seed: int, name: str) -> None:
  if not (isinstance(seed, (int, np.integer)) and seed >= 0):
    raise DataError(f'{name} must be a non-negative integer, got {seed!r}.')


def class_balanced_subset(labels: np.ndarray, fraction: float,
                          seed: int = 0) -> np.ndarray:
  """A deterministic class-balanced subset of example ids.

  For each class ``c`` with ``n_c`` examples, keeps ``max(1, round(fraction *
  n_c))`` of them (Python's ``round``: halves go to even): a prefix of a
  pseudo-random order of the class's examples. The order depends only on
  ``(seed, c)`` and the class's example ids, through a PCG64 bit generator
  seeded by ``SeedSequence([seed, c])`` (raw bit streams are stable across
  numpy versions and machines). Taking prefixes nests the subsets: with the
  same seed, the 1% subset is inside the 10% one, itself inside the 20% one.
  Unlabelled examples (label -1, or any negative label) are never chosen.

  Args:
    labels: int [num_examples], the label of every example id
      (:meth:`Source.labels`).
    fraction: in (0, 1].
    seed: a non-negative integer.

  Returns:
    The chosen example ids, sorted, int64.

  Raises:
    DataError (a ValueError): bad ``fraction`` or ``seed``, or no labelled
      example.
  """
  _check_fraction(fraction, 'fraction')
  _check_subset_seed(seed, 'seed')
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError('labels must be a 1-D integer array, got '
                    f'{labels.dtype} {labels.shape}.')
  labelled = np.flatnonzero(labels >= 0)
  if not labelled.size:
    raise DataError(
        f'Cannot choose a class-balanced subset: none of the {labels.size} '
        'examples has a label (all are -1). Use a labelled split, or '
        'label_fraction=1.')
  # The labelled ids grouped by class, in id order within each class.
  by_class = labelled[np.argsort(labels[labelled], kind='stable')]
  classes, starts = np.unique(labels[by_class], return_index=True)
  chosen = []
  for c, ids in zip(classes, np.split(by_class, starts[1:])):
    bits = np.random.PCG64(np.random.SeedSequence([seed, int(c)]))
    order = np.argsort(bits.random_raw(len(ids)), kind='stable')
    keep = max(1, round(fraction * len(ids)))
    chosen.append(ids[order[:keep]])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def imagenet_subset_name(name: str, split: str, fraction: float) -> str | None:
  """The standard TFDS subset to open for ``fraction`` of ``name``'s ``split``.

  ``'imagenet2012_subset/1pct'`` (0.01) or ``'imagenet2012_subset/10pct'``
  (0.1) for ImageNet's (``imagenet2012[:version]``) train split, else None.
  """
  base_name = name.split('/', 1)[0].split(':', 1)[0]
  if base_name != _IMAGENET or split != 'train':
    return None
  return _IMAGENET_SUBSETS.get(fraction)


def _builder_name(builder: tfds.core.DatasetBuilder) -> str:
  """``name/config`` (``name`` when the builder has no configs)."""
  config = builder.builder_config
  return f'{builder.name}/{config.name}' if config else builder.name


def _tfds_build_command(name: str, data_dir: str) -> str:
  return (f'tfds build {name} --data_dir={data_dir} '
          '--file_format=array_record')


def _not_prepared_error(builder: tfds.core.DatasetBuilder,
                        data_dir: str) -> DataError:
  command = _tfds_build_command(_builder_name(builder), data_dir)
  message = (
      f'Dataset {builder.info.full_name!r} is not prepared in data_dir '
      f'{data_dir!r} (this pipeline never downloads or builds datasets '
      'implicitly). Prepare it in ArrayRecord format (random access is '
      f'required) with:\n  {command}')
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    manual_dir = os.path.join(data_dir, 'downloads', 'manual')
    message += (f'\n{builder.name} needs files downloaded by hand first, '
                f'placed in {manual_dir}/ (for ImageNet: '
                'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar). TFDS '
                'says: ' +
                ' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split()))
  return DataError(message)


def _tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
        f'Unknown dataset {name!r}: it is neither a TFDS dataset (see '
        f'tfds.list_builders()) prepared in {data_dir!r}, nor '
        f'{SHAPES_NAMES[1]!r}, nor {FOLDER_KIND!r}.') from e


def _tfds_split_info(builder, split: str):
  available = sorted(builder.info.splits.keys())
  for part in split.split('+'):
    if part.split('[', 1)[0].strip() not in available:
      raise DataError(
          f'Split {part!r} is not available for {builder.info.full_name} in '
          f'{builder.data_dir}. Available splits: {available}.')
  try:
    return builder.info.splits[split]
  except (KeyError, ValueError) as e:  # E.g. a bad slice.
    raise DataError(f'Invalid split {split!r} for {builder.info.full_name} '
                    f'(available splits: {available}): {e}') from e


def _tfds_keys(builder, image_key, label_key) -> tuple[str, str | None]:
  features = builder.info.features
  supervised = builder.info.supervised_keys
  if (isinstance(supervised, tuple) and len(supervised) == 2
      and all(isinstance(k, str) for k in supervised)):
    default_image, default_label = supervised
  else:
    default_image = 'image'
    default_label = 'label' if 'label' in features else None
  image_key = image_key or default_image
  label_key = label_key or default_label
  if image_key not in features:
    raise DataError(f'{builder.info.full_name} has no image feature '
                    f'{image_key!r}; features: {list(features.keys())}. Pass '
                    'image_key=... to make_source.')
  if label_key is not None and label_key not in features:
    raise DataError(f'{builder.info.full_name} has no label feature '
                    f'{label_key!r}; features: {list(features.keys())}.')
  return image_key, label_key


def _partial_features(features, keys) -> tfds.features.FeaturesDict:
  """The FeaturesDict of just ``keys``: other features are never decoded."""
  return tfds.features.FeaturesDict({k: features[k] for k in keys if k})


def _num_classes(features, label_key: str | None) -> int | None:
  if label_key is None:
    return None
  feature = features[label_key]
  return feature.num_classes if isinstance(
      feature, tfds.features.ClassLabel) else None


def _shapes_builder(name: str, data_dir: str | None):
  name = name.split(':', 1)[0]  # Only one version exists.
  config = name.split('/', 1)[1] if '/' in name else 'default'
  configs = [c.name for c in shapes.SslJaxShapes.BUILDER_CONFIGS]
  if config not in configs:
    raise DataError(f'Unknown {shapes.SslJaxShapes.name} config {config!r}; '
                    f'available: {configs}.')
  data_dir = data_dir or tfds.core.constants.DATA_DIR
  try:
    return shapes.prepare(data_dir, config)
  except ValueError as e:  # Prepared in another file format.
    raise DataError(str(e)) from e


def make_source(kind_or_name: str, *, data_dir: str | None, split: str,
                image_key: str | None = None, label_key: str | None = None,
                label_fraction: float = 1.0, subset_seed: int = 0,
                held_out_examples: int = 0, skip_bad_images: bool = False) -> Source:
  """Opens a random-access source, or a class-balanced subset of one.

  Args:
    kind_or_name: ``'folder'`` (``data_dir`` is the image folder root),
      ``'shapes'`` / ``'ssl_jax_shapes[/small]'`` (built-in dataset, built
      into ``data_dir`` if missing), or any TFDS name (``'imagenet2012'``,
      ``'mnist:3.0.1'``, ``'cifar10'``...) prepared in ArrayRecord format in
      ``data_dir`` (a local path or ``gs://``).
    data_dir: as above; ``None`` means the TFDS default data dir.
    split: a split name, with TFDS slicing (``'train[:90%]'``); folder
      slices take a fixed seeded order of the files (:class:`FolderSource`).
    image_key, label_key: TFDS feature names; default to the dataset's
      supervised keys (else ``'image'`` / ``'label'``).
    label_fraction: in (0, 1]; below 1, a :class:`SubsetSource` of the
      :func:`class_balanced_subset` (``label_fraction``, ``subset_seed``) of
      the split, which reads every label of the split once. Exception:
      ImageNet's ``train`` split at 0.01 or 0.1 opens the standard TFDS
      subset (:func:`imagenet_subset_name`; ``subset_seed`` is ignored).
    subset_seed: a non-negative integer; fixes the subset (and the
      held-out part).
    held_out_examples: > 0: that many labelled examples of the split,
      class-balanced (:func:`ssl_jax.data.splits.held_out_ids`, seeded by
      ``subset_seed``), are set aside for model selection: the returned
      source never holds them, its ``held_out`` attribute is a
      :class:`SubsetSource` of them, and ``label_fraction`` is drawn from
      the rest. On ImageNet's standard 1% / 10% subsets the part avoids the
      listed files (matched by file name).
    skip_bad_images: False: a bad image file found when opening a folder
      (:class:`FolderSource`), or an image that fails to decode while
      iterating (:func:`iterate`), is a DataError naming it. True: such
      images are skipped and logged.

  Raises:
    DataError (a ValueError): with instructions, if the dataset is unknown,
      not prepared, not in ArrayRecord format, or lacks the split; if
      ``label_fraction`` or ``subset_seed`` is invalid (checked before
      anything is opened), or the split has no labels.
  """
  if label_fraction != 1.0 or held_out_examples:
    return _make_subset_source(
        kind_or_name, data_dir=data_dir, split=split, image_key=image_key,
        label_key=label_key, label_fraction=label_fraction,
        subset_seed=subset_seed, held_out_examples=held_out_examples,
        skip_bad_images=skip_bad_images)
  if not isinstance(skip_bad_images, bool):
    raise DataError(f'skip_bad_images must be True or False, got '
                    f'{skip_bad_images!r}.')
  _hide_accelerators_from_tf()
  if kind_or_name == FOLDER_KIND:
    if not data_dir:
      raise DataError("make_source('folder', ...) needs data_dir=ROOT.")
    return FolderSource(data_dir, split, skip_bad_images=skip_bad_images)
  base_name = kind_or_name.split('/', 1)[0].split(':', 1)[0]
  if base_name in SHAPES_NAMES:
    name = shapes.SslJaxShapes.name + kind_or_name[len(base_name):]
    builder = _shapes_builder(name, data_dir)
  else:
    builder = _tfds_builder(kind_or_name, data_dir)
    if not builder.is_prepared():
      raise _not_prepared_error(builder, os.fspath(builder.data_dir_root))
  return TfdsSource(builder, split, image_key=image_key, label_key=label_key,
                    skip_bad_images=skip_bad_images)


def _make_subset_source(kind_or_name: str, *, data_dir: str | None, split: str,
                        image_key: str | None, label_key: str | None,
                        label_fraction: float, subset_seed: int, held_out_examples: int,
                        skip_bad_images: bool) -> Source:
  """``make_source`` with ``label_fraction != 1`` or held-out examples."""
  _check_fraction(label_fraction, 'label_fraction')
  _check_subset_seed(subset_seed, 'subset_seed')
  if not (isinstance(held_out_examples, (int, np.integer)) and held_out_examples >= 0):
    raise DataError(f'held_out_examples must be an integer >= 0, got {held_out_examples!r}.')
  open_source = functools.partial(make_source, data_dir=data_dir,
                                   image_key=image_key, label_key=label_key,
                                   skip_bad_images=skip_bad_images)
  standard = imagenet_subset_name(kind_or_name, split, label_fraction)
  on_imagenet_train = imagenet_subset_name(kind_or_name, split, 0.1) is not None
  if standard and not held_out_examples:
    logging.info('label_fraction=%s of %s: opening the standard TFDS subset %s instead '
                 '(subset_seed is not used).', label_fraction, kind_or_name, standard)
    return _open_listed(open_source, kind_or_name, standard, label_fraction)
  if on_imagenet_train and (held_out_examples or label_fraction > 0.1):
    return _imagenet_subset(open_source, kind_or_name, label_fraction, subset_seed,
                            held_out_examples)
  source = open_source(kind_or_name, split=split)
  labels = source.labels()
  held = (splits.held_out_ids(labels, held_out_examples, subset_seed)
          if held_out_examples else np.zeros([0], np.int64))
  subset = _with_held_out(source, *_fraction_of_rest(labels, held, label_fraction,
                                                     subset_seed), held)
  logging.info('%s split %r: %d of %d examples, %d held out (subset_seed=%d).',
               subset.name, subset.split, subset.num_examples,
               source.num_examples, len(held), subset_seed)
  return subset


def _fraction_of_rest(labels: np.ndarray, held: np.ndarray, fraction: float,
                      seed: int) -> tuple[np.ndarray, str]:
  """(ids, description): every example outside `held` (fraction 1), or a
  class-balanced `fraction` of them (:func:`class_balanced_subset`)."""
  rest = splits.remaining_ids(len(labels), held)
  if fraction == 1.0:
    return rest, f'without {len(held)} held out'
  return (rest[class_balanced_subset(labels[rest], fraction, seed)],
          f'{fraction * 100:g}% of labels')


def _with_held_out(full: Source, ids: np.ndarray, description: str,
                   held: np.ndarray) -> SubsetSource:
  """The training examples `ids` of `full`, with the examples `held` out
  of them (if any) as its ``held_out``."""
  source = SubsetSource(full, ids, description=description)
  if len(held):
    source.held_out = SubsetSource(full, held, description=f'{len(held)} held out')
  return source


def _open_listed(open_source, name: str, subset_name: str, fraction: float) -> Source:
  try:
    return open_source(subset_name, split='train')
  except DataError as e:
    raise DataError(f'label_fraction={fraction} of {name} \'train\' reads, or avoids, the '
                    f'standard TFDS subset {subset_name}: {e}') from e


def _imagenet_subset(open_source, name: str, fraction: float, seed: int,
                     held_out_examples: int) -> Source:
  """ImageNet's train split with the standard TFDS lists (1% and 10%,
  matched by file name): the held-out part is drawn outside both lists, so
  it is the same for every fraction; 1% and 10% train on their list, a
  fraction above 10% on a class-balanced subset that contains the 10% list,
  any other fraction on a class-balanced subset of the rest."""
  full = open_source(name, split='train')
  labels = full.labels()
  names = full.strings('file_name')
  listed = {f: splits.ids_of_names(
      names, _open_listed(open_source, name, subset, fraction).strings('file_name'),
      f'{subset} within {name} train') for f, subset in _IMAGENET_SUBSETS.items()}
  lists = np.union1d(*listed.values())
  held = (splits.held_out_ids(labels, held_out_examples, seed, exclude=lists)
          if held_out_examples else np.zeros([0], np.int64))
  if fraction in listed:
    ids, description = listed[fraction], f'{_IMAGENET_SUBSETS[fraction]} list'
  elif fraction > 0.1 and fraction < 1:
    ids = splits.nested_ids(labels, fraction, seed, listed[0.1], held)
    description = f'{fraction * 100:g}% of labels around the 10% list'
  else:
    ids, description = _fraction_of_rest(labels, held, fraction, seed)
  source = _with_held_out(full, ids, description, held)
  logging.info('%s: %d examples, %d held out outside the 1%% and 10%% lists '
               '(subset_seed=%d).', source.name, source.num_examples, len(held), seed)
  return source


# ----------------------------------------------------------------------------
# Index arithmetic: which example, with which random key, at global index g.
# ----------------------------------------------------------------------------


def _stream_key(seed: int, stream: int) -> tf.Tensor:
  """A [2] int64 stateless key for one named random stream of ``seed``."""
  return tf.constant([seed, stream], tf.int64)


def _example_ids(g: tf.Tensor, seed: int, num_examples: int) -> tf.Tensor:
  """int64 [n] global indices -> example ids (a new permutation per epoch)."""
  n = tf.constant(num_examples, tf.int64)
  epoch, position = g // n, g % n
  # Per-epoch key (two words hashed from the seed, epoch). The raw op is used
  # because `tf.random.experimental.index_shuffle` mis-pads batched [n, 2]
  # seeds into [n + 1, 2] (it pads the first axis) instead of [n, 3].
  seed_words = tf.random.stateless_uniform(
      [2], _stream_key(seed, _SHUFFLE_STREAM), minval=None, maxval=None,
      dtype=tf.int64)
  keys = tf.concat(
      [tf.broadcast_to(seed_words, [tf.size(epoch), 2]), epoch[:, None]], -1)
  return tf.raw_ops.RandomIndexShuffle(
      index=position, seed=keys,
      max_index=tf.broadcast_to(n - 1, tf.shape(position)), rounds=4)


def example_ids(seed: int, num_examples: int,
                global_indices: np.ndarray) -> np.ndarray:
  """The example ids that training reads at ``global_indices`` (int64)."""
  g = tf.constant(np.asarray(global_indices, np.int64).reshape(-1))
  return _example_ids(g, seed, num_examples).numpy()


def _augment_keys(g: tf.Tensor, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Scalar global index -> (crop key, flip key), each [2] int64."""
  key = tf.random.experimental.stateless_fold_in(
      _stream_key(seed, _AUGMENT_STREAM), g)
  keys = tf.random.experimental.stateless_split(key, 2)
  return keys[0], keys[1]


def _randaugment_key(g: tf.Tensor, seed: int) -> tf.Tensor:
  """Scalar global index -> RandAugment key, [2] int64 (its own stream, so
  the crop and flip keys do not depend on whether RandAugment is on)."""
  return tf.random.experimental.stateless_fold_in(
      _stream_key(seed, _RANDAUGMENT_STREAM), g)


def _view_geometry_keys(g: tf.Tensor, view: int,
                        seed: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(crop key, flip key) of view ``view`` of global index g. View 0's are
  the single-view keys (:func:`_augment_keys`); view v > 0 folds (g, v)
  into a stream of its own."""
  if view == 0:
    return _augment_keys(g, seed)
  key = tf.random.experimental.stateless_fold_in(
      _stream_key(seed, _VIEW_GEOMETRY_STREAM), g)
  key = tf.random.experimental.stateless_fold_in(key, view)
  keys = tf.random.experimental.stateless_split(key, 2)
  return keys[0], keys[1]


def _view_photometric_key(g: tf.Tensor, view: int, seed: int) -> tf.Tensor:
  """The photometric key of view ``view`` of global index g, [2] int64."""
  key = tf.random.experimental.stateless_fold_in(
      _stream_key(seed, _VIEW_PHOTOMETRIC_STREAM), g)
  return tf.random.experimental.stateless_fold_in(key, view)


def _local_batch_size(global_batch_size: int, process_index: int,
                      process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f'Bad process_index={process_index} / '
                    f'process_count={process_count}.')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise DataError(f'global_batch_size={global_batch_size} must be a '
                    f'positive multiple of process_count={process_count}.')
  return global_batch_size // process_count


def _step_indices(step: tf.Tensor, global_batch_size: int, local_batch: int,
                  process_index: int) -> tf.Tensor:
  """This process's global indices g for one step: int64 [local_batch]."""
  first = step * global_batch_size + process_index * local_batch
  return first + tf.range(local_batch, dtype=tf.int64)


# ----------------------------------------------------------------------------
# Image decoding, cropping and resizing (per example, TF ops).
# ----------------------------------------------------------------------------


def _to_uint8_rgb(image: tf.Tensor) -> tf.Tensor:
  """Encoded string or uint8 [h, w, 1|3] -> uint8 [h, w, 3]."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  elif image.dtype != tf.uint8:
    raise DataError(f'Expected uint8 or encoded images, got {image.dtype}.')
  elif image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  image.set_shape([None, None, 3])
  return image


def _sample_crop(shape: tf.Tensor, key: tf.Tensor, min_area: float,
                 aspect: tuple[float, float] = _ASPECT_RATIO_RANGE
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """Inception crop window (begin [3], size [3]) for an image of ``shape``."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=key,
      min_object_covered=0.0,
      aspect_ratio_range=aspect,
      area_range=(min_area, 1.0),
      max_attempts=_CROP_MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _decode_and_random_crop(image: tf.Tensor, key: tf.Tensor,
                            min_area: float) -> tf.Tensor:
  """Random resized crop window of an encoded or decoded image (uint8)."""
  return _decode_and_random_crops(
      image, [(key, min_area, _ASPECT_RATIO_RANGE)])[0]


def _decode_and_random_crops(image: tf.Tensor, windows) -> list[tf.Tensor]:
  """Random crop windows (uint8) of one encoded or decoded image.

  ``windows``: a list of (key, min_area, aspect range), one per crop. The
  image is decoded once (a JPEG: only each window is decoded).
  """

  def crop_decoded():
    decoded = _to_uint8_rgb(image)
    crops = []
    for key, min_area, aspect in windows:
      begin, size = _sample_crop(tf.shape(decoded), key, min_area, aspect)
      crops.append(tf.slice(decoded, begin, size))
    return crops

  if image.dtype != tf.string:
    return crop_decoded()

  def crop_jpeg():  # Decodes only the window: much faster for large JPEGs.
    shape = tf.image.extract_jpeg_shape(image)
    crops = []
    for key, min_area, aspect in windows:
      begin, size = _sample_crop(shape, key, min_area, aspect)
      window = tf.stack([begin[0], begin[1], size[0], size[1]])
      crops.append(tf.image.decode_and_crop_jpeg(image, window, channels=3))
    return crops

  return tf.cond(tf.io.is_jpeg(image), crop_jpeg, crop_decoded)


def _resize(image: tf.Tensor, height, width) -> tf.Tensor:
  """uint8 [h, w, 3] -> float32 [height, width, 3] in [0, 255], bilinear.

  Anti-aliased when shrinking (no aliasing on large images); plain bilinear
  otherwise, which is identical when enlarging and about 2-3x faster. An
  unchanged size is an exact copy.
  """
  size = tf.stack([height, width])
  shrinks = tf.reduce_any(size < tf.shape(image)[:2])
  return tf.cond(
      shrinks,
      lambda: tf.image.resize(image, size, method='bilinear', antialias=True),
      lambda: tf.image.resize(image, size, method='bilinear'))


def _center_crop(image: tf.Tensor, image_size: int,
                 crop_fraction: float) -> tf.Tensor:
  """Resize the shorter side to image_size / crop_fraction, centre crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = round(image_size / crop_fraction) / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  image = _resize(image, new_shape[0], new_shape[1])
  offset = (new_shape - image_size) // 2
  return tf.slice(image, [offset[0], offset[1], 0], [image_size, image_size, 3])


def _pad_and_random_crop(image: tf.Tensor, key: tf.Tensor, image_size: int,
                         pad: int) -> tf.Tensor:
  """The whole image resized to image_size, reflection-padded by `pad`
  pixels on every side, and a random image_size crop of that (Wide ResNet's
  CIFAR augmentation, as iGPT fine-tunes)."""
  image = _resize(_to_uint8_rgb(image), image_size, image_size)
  if pad:
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode='REFLECT')
    image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=key)
  return image


def _train_image(image, g, *, seed, image_size, min_area, flip,
                 randaugment=None, crop='resized', pad=4) -> tf.Tensor:
  crop_key, flip_key = _augment_keys(g, seed)
  if crop == 'pad':
    image = _pad_and_random_crop(image, crop_key, image_size, pad)
  else:
    image = _decode_and_random_crop(image, crop_key, min_area)
    image = _resize(image, image_size, image_size)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_key)
  if randaugment is not None:
    num_ops, magnitude, magnitude_std = randaugment
    image = randaugment_lib.randaugment(
        image, _randaugment_key(g, seed), num_ops=num_ops,
        magnitude=magnitude, magnitude_std=magnitude_std)
  return image


def _train_views(image, g, *, seed, image_size, views, share_geometry
                 ) -> tf.Tensor:
  """float32 [V, S, S, 3] in [0, 1]: the views of one training example.

  Geometry as :func:`_train_image` (crop, resize, flip; with view 0's keys
  equal to the single-view keys), then each view's photometric ops
  (:func:`ssl_jax.data.views.photometric`). ``share_geometry``: one crop and
  flip, view 0's, for every view.
  """
  geometries = views[:1] if share_geometry else views
  keys = [_view_geometry_keys(g, v, seed) for v in range(len(geometries))]
  crops = _decode_and_random_crops(
      image, [(crop_key, spec.min_area, spec.aspect)
              for (crop_key, _), spec in zip(keys, geometries)])
  bases = []
  for crop, (_, flip_key), spec in zip(crops, keys, geometries):
    base = _resize(crop, image_size, image_size)
    if spec.flip:
      base = tf.image.stateless_random_flip_left_right(base, flip_key)
    bases.append(tf.clip_by_value(base / 255.0, 0.0, 1.0))
  out = []
  for v, spec in enumerate(views):
    base = bases[0] if share_geometry else bases[v]
    out.append(views_lib.photometric(base, _view_photometric_key(g, v, seed),
                                     spec, image_size))
  return tf.stack(out)


def _eval_image(image, *, image_size, crop_fraction) -> tf.Tensor:
  return _center_crop(_to_uint8_rgb(image), image_size, crop_fraction)


# ----------------------------------------------------------------------------
# The dataset.
# ----------------------------------------------------------------------------


def _substitutes(source: Source) -> tuple[np.ndarray, np.ndarray] | None:
  """(bad ids, their replacements), or None when every example decodes.

  The replacement of a bad id is the next good id (cyclically): a function of
  the set of bad ids only, so batches stay a pure function of (seed, global
  index) given that set.
  """
  bad = source.bad_ids()
  if not bad.size:
    return None
  good = np.ones(source.num_examples, bool)
  good[bad] = False
  good = np.flatnonzero(good)
  if not good.size:
    raise DataError(f'{source!r}: none of its {source.num_examples} images '
                    'can be decoded.')
  return bad, good[np.searchsorted(good, bad) % good.size].astype(np.int64)


def _index_batches(source: Source, *, seed: int, global_batch_size: int,
                   local_batch: int, start_step: int, train: bool,
                   process_index: int):
  """(dataset, ids_for_step): per step, {'index': g, 'id': example id,
  'valid'} for this process; ``ids_for_step(step)`` computes one step's.

  Known bad ids (:meth:`Source.bad_ids`) are replaced by good ones; in
  evaluation they are also marked invalid.
  """
  num = source.num_examples
  substitutes = _substitutes(source)
  if train:
    steps = tf.data.Dataset.counter(start_step)
  else:
    steps = tf.data.Dataset.range(start_step,
                                  math.ceil(num / global_batch_size))

  def substitute(ids):
    if substitutes is None:
      return ids, tf.zeros_like(ids, tf.bool)
    bad, replacement = (tf.constant(a, tf.int64) for a in substitutes)
    position = tf.minimum(tf.searchsorted(bad, ids), len(substitutes[0]) - 1)
    is_bad = tf.equal(tf.gather(bad, position), ids)
    return tf.where(is_bad, tf.gather(replacement, position), ids), is_bad

  def ids_for_step(step):
    g = _step_indices(step, global_batch_size, local_batch, process_index)
    if train:
      ids, _ = substitute(_example_ids(g, seed, num))
      return {'index': g, 'id': ids, 'valid': tf.ones_like(g, tf.bool)}
    ids, is_bad = substitute(g % num)
    return {'index': g, 'id': ids,
            'valid': tf.logical_and(g < num, tf.logical_not(is_bad))}

  return steps.map(ids_for_step), ids_for_step


def make_dataset(source: Source, *, seed: int, global_batch_size: int,
                 start_step: int, image_size: int, train: bool,
                 process_index: int = 0, process_count: int = 1,
                 min_area: float = 0.08, flip: bool = True,
                 eval_crop_fraction: float = 1.0,
                 randaugment: tuple[int, float, float] | None = None,
                 crop: str = 'resized', pad: int = 4,
                 views: Sequence[ViewSpec] | None = None,
                 share_geometry: bool = False) -> tf.data.Dataset:
  """This process's batches, a pure function of (seed, global index).

  Args:
    source: from :func:`make_source`.
    seed: 0 <= seed < 2**63; fixes the epoch permutations and augmentations.
    global_batch_size: examples per step over all processes.
    start_step: first step to produce (resume from a checkpoint at this step).
    image_size: output height and width.
    train: True: infinite stream of shuffled, augmented examples (Inception
      random resized crop, area in [min_area, 1], aspect ratio in [3/4, 4/3],
      then an optional random horizontal flip and optional RandAugment).
      False: one pass over the split in order, resized so the shorter side is
      ``image_size / eval_crop_fraction``, centre-cropped; the last batch is
      padded by repeating examples from the start, marked ``valid=False``.
    process_index, process_count: this process handles the contiguous slice
      ``[process_index * B / process_count, (process_index + 1) * B /
      process_count)`` of every global batch.
    min_area, flip: training augmentation parameters.
    eval_crop_fraction: fraction of the resized image kept by the eval
      centre crop (1.0: no border cropped; ImageNet convention: 0.875).
    randaugment: None (off) or ``(num_ops, magnitude, magnitude_std)``:
      RandAugment of training images after the resize and flip
      (:func:`ssl_jax.data.randaugment.randaugment`: timm's op set with
      increasing magnitudes, each op applied with probability 0.5; ``(2, 9.0,
      0.5)`` is timm's ``rand-m9-mstd0.5-inc1``), keyed by (seed, global
      index) on its own random stream: the crops and flips are the same with
      or without it. Ignored for evaluation, but always validated.
    crop: training crops: 'resized' (the Inception crop above) or 'pad' (the
      whole image resized to image_size, reflection-padded by ``pad`` pixels
      and randomly cropped back to image_size; ``min_area`` unused).
    views: None (one image per example), or one :class:`ViewSpec` per view:
      training images become ``[V, S, S, 3]`` views, each with its own crop
      and flip settings and photometric ops (:mod:`ssl_jax.data.views`),
      keyed by (seed, global index, view); ``min_area`` and ``flip`` are then
      unused. View 0's crop and flip keys are the single-view ones. Not with
      ``randaugment`` or ``crop='pad'`` (single-view only). Ignored for
      evaluation (one centre crop per example, ``[b, S, S, 3]``), but always
      validated.
    share_geometry: with ``views``: True: every view is view 0's crop and
      flip (views must have equal min_area, aspect, flip) and views differ
      only photometrically; False: each view draws its own crop and flip.

  Returns:
    Batches ``{'image': float32 [b, S, S, 3] in [0, 1], 'label': int32 [b],
    'index': int64 [b] (global index g), 'valid': bool [b]}`` with
    ``b = global_batch_size // process_count`` (``b`` counts examples, not
    views); with ``views`` and ``train``, ``image`` is ``[b, V, S, S, 3]``.

  Examples known not to decode (:meth:`Source.bad_ids`) are never read: in
  training each is replaced by the next good example id, in evaluation
  also marked ``valid=False``. Iterate with :func:`iterate` to name (or
  skip) an image that fails to decode.
  """
  return _build(
      source, seed=seed, global_batch_size=global_batch_size,
      start_step=start_step, image_size=image_size, train=train,
      process_index=process_index, process_count=process_count,
      min_area=min_area, flip=flip, eval_crop_fraction=eval_crop_fraction,
      randaugment=randaugment, crop=crop, pad=pad, views=views,
      share_geometry=share_geometry)[0]


def _build(source: Source, *, seed: int, global_batch_size: int,
           start_step: int, image_size: int, train: bool,
           process_index: int = 0, process_count: int = 1,
           min_area: float = 0.08, flip: bool = True,
           eval_crop_fraction: float = 1.0,
           randaugment: tuple[int, float, float] | None = None,
           crop: str = 'resized', pad: int = 4,
           views: Sequence[ViewSpec] | None = None,
           share_geometry: bool = False):
  """:func:`make_dataset`'s (dataset, ids_for_step, preprocess): the step's
  example ids and the per-example map, which :func:`iterate` reuses to find
  the image that failed."""
  _hide_accelerators_from_tf()
  if not 0 <= seed < 2**63:
    raise DataError(f'seed must be in [0, 2**63), got {seed}.')
  if start_step < 0:
    raise DataError(f'start_step must be >= 0, got {start_step}.')
  if source.num_examples < 1:
    raise DataError(f'{source!r} has no examples.')
  if not 0.0 < min_area <= 1.0 or not 0.0 < eval_crop_fraction <= 1.0:
    raise DataError('min_area and eval_crop_fraction must be in (0, 1].')
  randaugment = check_randaugment(randaugment)
  check_crop(crop)
  check_pad(pad, image_size)
  views = check_views(views, share_geometry, randaugment=randaugment,
                      crop=crop)
  local_batch = _local_batch_size(global_batch_size, process_index,
                                  process_count)
  ds, ids_for_step = _index_batches(
      source, seed=seed, global_batch_size=global_batch_size,
      local_batch=local_batch, start_step=start_step, train=train,
      process_index=process_index)
  # Batched random-access reads (one Python call per step), then
  # per-example parsing, decoding and augmentation in parallel.
  ds = ds.map(lambda b: {**b, **source.fetch(b['id'])},
              num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.unbatch()

  def preprocess(example):
    image, label = source.parse(example)
    if train and views is not None:
      image = _train_views(image, example['index'], seed=seed,
                           image_size=image_size, views=views,
                           share_geometry=share_geometry)
      image = tf.ensure_shape(image, [len(views), image_size, image_size, 3])
      return {'image': image, 'label': label, 'index': example['index'],
              'valid': example['valid']}
    if train:
      image = _train_image(image, example['index'], seed=seed,
                           image_size=image_size, min_area=min_area, flip=flip,
                           randaugment=randaugment, crop=crop, pad=pad)
    else:
      image = _eval_image(image, image_size=image_size,
                          crop_fraction=eval_crop_fraction)
    image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return {'image': image, 'label': label, 'index': example['index'],
            'valid': example['valid']}

  ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds.prefetch(AUTOTUNE), ids_for_step, preprocess


def iterate_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates numpy batches (same as ``tfds.as_numpy(ds)``).

  An image that fails to decode stops it with TF's error, which does not
  name the image: use :func:`iterate` for that.
  """
  return ds.as_numpy_iterator()


_DECODE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError)
_SHOWN_BAD = 10


def iterate(source: Source, *, start_step: int = 0,
            **make_dataset_args) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches of ``make_dataset(source, start_step=..., ...)``, with
  images that fail to decode named, or skipped.

  When a batch fails to decode (``InvalidArgumentError`` or
  ``DataLossError``), the examples of that step are decoded again one by
  one, through the same per-example map, to find the failing ones. Then:

  * ``source.skip_bad_images`` False: DataError naming them (the file of a
    folder source; the dataset, split and example id of a TFDS source).
  * True: they are logged and recorded (:meth:`Source.mark_bad`; a folder
    source also records them in its index, so that later opens know them)
    and the dataset is rebuilt from the same step. Bad ids are replaced by
    the next good id in training and marked ``valid=False`` in evaluation
    (:func:`make_dataset`), so batches stay a pure function of (seed,
    global index, the set of bad files): a resumed run, which knows the
    recorded files from the start, yields the batches the interrupted run
    would have yielded.

  An error that no single example reproduces is raised as it is.

  Args:
    source: from :func:`make_source`.
    start_step: the first step.
    **make_dataset_args: the other arguments of :func:`make_dataset`.

  Yields:
    The batches of :func:`make_dataset`, as numpy arrays.
  """
  step = start_step
  while True:
    ds, ids_for_step, preprocess = _build(source, start_step=step,
                                          **make_dataset_args)
    iterator = ds.as_numpy_iterator()
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except _DECODE_ERRORS as e:
        failure = e
        break
      yield batch
      step += 1
    bad = _undecodable(source, ids_for_step, preprocess, step)
    if not bad:
      raise failure
    reason = folder_lib.error_summary(failure)
    names = ', '.join(source.describe(k) for k in bad[:_SHOWN_BAD])
    if len(bad) > _SHOWN_BAD:
      names += f', ... ({len(bad)} in all)'
    where = f'{source.name} split {source.split!r}'
    if not source.skip_bad_images:
      root = _folder_root(source)
      hint = (f' (python -m ssl_jax.data.verify {root} finds every such '
              'file)' if root else '')
      raise DataError(
          f'{where}: {names} cannot be decoded ({reason}). Fix or remove '
          f'it{hint}, or set config.data.skip_bad_images=True to skip '
          'it.') from failure
    logging.warning('%s: skipping %s, which cannot be decoded (%s; '
                    'skip_bad_images=True).', where, names, reason)
    source.mark_bad(bad, reason)


def _undecodable(source: Source, ids_for_step, preprocess,
                 step: int) -> list[int]:
  """The example ids of ``step`` whose image fails to decode, each read and
  decoded on its own (eagerly: this runs only after a failure). A read that
  fails for another reason (a missing file, a permission, a transient
  storage error) is raised as it is: it is not a bad image."""
  del preprocess  # only the decoding is checked: a bug elsewhere is not a bad file
  ids = ids_for_step(tf.constant(step, tf.int64))['id'].numpy()
  bad = []
  for example_id in dict.fromkeys(int(i) for i in ids):  # distinct, in order
    handle = source.fetch(tf.constant([example_id], tf.int64))
    image, _ = source.parse({k: v[0] for k, v in handle.items()})
    try:
      _to_uint8_rgb(image)
    except _DECODE_ERRORS:
      bad.append(example_id)
  if len(bad) > 1 and len(bad) == len(set(int(i) for i in ids)):
    return []  # every image of the step: not bad files (the caller re-raises)
  return bad


def _folder_root(source: Source) -> str | None:
  while isinstance(source, SubsetSource):
    source = source.source
  return source.root if isinstance(source, FolderSource) else None


def class_spread_ids(source: Source, num: int) -> np.ndarray:
  """Up to ``num`` example ids (sorted) spread over the classes.

  Candidates are evenly spaced over the split (at most ``max(16 * num,
  128)`` of them, known bad ids excluded); their labels are read
  (:meth:`Source.labels_of`) and ids are taken round-robin over the labels
  (the first candidate of every class, then the second...). Unlabelled
  sources give the first ``num`` ids. For pictures that show several
  classes although a folder source is sorted by class.
  """
  n = source.num_examples
  num = max(0, min(int(num), n))
  pool = min(n, max(16 * num, 128))
  candidates = np.unique(np.linspace(0, n - 1, pool).round().astype(np.int64))
  candidates = candidates[~np.isin(candidates, source.bad_ids())]
  labels = source.labels_of(candidates) if candidates.size else candidates
  if not (labels >= 0).any():
    return np.arange(num, dtype=np.int64)
  groups = [candidates[labels == c] for c in np.unique(labels[labels >= 0])]
  chosen = [int(g[rank]) for rank in range(max(len(g) for g in groups))
            for g in groups if rank < len(g)]
  taken = set(chosen)
  chosen += [int(k) for k in candidates if int(k) not in taken]
  return np.sort(np.asarray(chosen[:num], np.int64))


def measure_throughput(ds: tf.data.Dataset, num_batches: int,
                       warmup: int = 5) -> float:
  """Batches per second of ``ds`` after ``warmup`` batches."""
  iterator = iter(ds)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches / (time.perf_counter() - start)


def _hide_accelerators_from_tf() -> None:
  """Keeps TF (input pipeline only) off GPUs/TPUs, which belong to JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass  # TF already initialised its devices, or no such device type.
