"""Image folders: listing, the header check, its cached index, split slicing.

The pieces :class:`ssl_jax.data.pipeline.FolderSource` and the
``python -m ssl_jax.data.verify`` command are made of.

Layout: ``ROOT/<class>/...`` (one split, ``train``) or
``ROOT/<split>/<class>/...`` with ``<split>`` in :data:`SPLITS`. Image files
are ``*.png``, ``*.jpg``, ``*.jpeg`` (any case) anywhere below a class folder.

The index
---------
Every listed file is checked when a split is opened: it must not be empty and
must start with the signature of a format ``tf.io.decode_image`` reads (PNG,
JPEG, GIF, BMP, WebP). The results are kept in an index, one file per root:
``$SSL_JAX_CACHE/folder_index/<root basename>-<sha256(root)[:16]>.npz``
(``$SSL_JAX_CACHE`` defaults to ``$XDG_CACHE_HOME/ssl_jax``, else
``~/.cache/ssl_jax``; it may be a ``gs://`` path). It lives in a cache
directory, not next to the data, because dataset folders are often
read-only. For each file (by its path relative to the root) it holds its
size, its modification time (ns) and a status (:data:`OK`, :data:`EMPTY`,
:data:`NOT_IMAGE`, :data:`UNDECODABLE`, :data:`DECODED`).

An entry is reused while the file's size and modification time are
unchanged; a new or changed file is checked again (its header reread), and
entries of files no longer listed are dropped when the index is next
written. ``gs://`` (any ``scheme://``) roots are listed without sizes or
times (a stat costs one request per object, as much as the header read), so
their entries are reused while the path is listed: delete the index file,
or run the verify command, to check them again. :data:`UNREADABLE` results
(e.g. a permission error) are never reused. :data:`UNDECODABLE` is recorded
by the training / evaluation iteration (a file whose header is fine but
which fails to decode) and by the verify command, which also records
:data:`DECODED` for files it decoded fully. The index is rewritten atomically
(write, then rename) after reloading it, so that concurrent writers lose at
most each other's latest additions; it is only a cache: a missing, stale or
unreadable index is rebuilt, and one that cannot be written is only logged.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import dataclasses
import hashlib
import io
import os
import re
import stat as stat_lib
import time
import types
from typing import Callable, Iterable, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_jax.data.errors import DataError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
SPLITS = ('train', 'validation', 'test')
CACHE_ENV = 'SSL_JAX_CACHE'
INDEX_VERSION = 1

# File statuses (int8 in the index).
OK = 0           # The header is an image signature (not decoded yet).
EMPTY = 1        # Zero bytes.
NOT_IMAGE = 2    # Starts with no PNG / JPEG / GIF / BMP / WebP signature.
UNREADABLE = 3   # Reading its header failed (never reused from the index).
UNDECODABLE = 4  # Header fine, but decoding failed (iteration or verify).
DECODED = 5      # Decoded fully by the verify command.
HEADER_BAD = (EMPTY, NOT_IMAGE, UNREADABLE)
REASONS = {EMPTY: 'empty file', NOT_IMAGE: 'not a PNG/JPEG/GIF/BMP/WebP file',
           UNREADABLE: 'unreadable', UNDECODABLE: 'cannot be decoded'}

SLICE_SYNTAX = ("a split name, optionally sliced as in TFDS: 'train[:1000]', "
                "'test[10%:]', 'train[-500:]', 'train[:50%]', 'train+test'; "
                'slices take a fixed seeded order of the files (mixing the '
                'classes)')
# The fixed seed of the order that split slices are taken from.
_SLICE_SEED = 0
_HEADER_BYTES = 16
_HEADER_CHUNK = 256  # Files per thread-pool task.
_LOCAL_THREADS = 16
_REMOTE_THREADS = 64  # gs:// reads are latency-bound.
_LOG_AFTER_S = 5.0
_PATH_SEP = '\0'  # Never in a file name.


# ----------------------------------------------------------------------------
# Signatures.
# ----------------------------------------------------------------------------


def image_format(head: bytes) -> str | None:
  """The format whose signature ``head`` (a file's first bytes) starts with.

  The signatures ``tf.io.decode_image`` sniffs: 'png', 'jpeg', 'gif', 'bmp',
  'webp'; None for anything else.
  """
  if head.startswith(b'\x89PNG\r\n\x1a\n'):
    return 'png'
  if head.startswith(b'\xff\xd8\xff'):
    return 'jpeg'
  if head.startswith((b'GIF87a', b'GIF89a')):
    return 'gif'
  if head.startswith(b'BM'):
    return 'bmp'
  if head.startswith(b'RIFF') and head[8:12] == b'WEBP':
    return 'webp'
  return None


def is_remote(path: str) -> bool:
  return '://' in path


def read_header(path: str) -> bytes:
  """The first bytes of ``path`` (local files: plain ``open``)."""
  if is_remote(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read(_HEADER_BYTES)
  with open(path, 'rb') as f:
    return f.read(_HEADER_BYTES)


def header_status(path: str) -> int:
  """:data:`OK`, :data:`EMPTY`, :data:`NOT_IMAGE` or :data:`UNREADABLE`."""
  try:
    head = read_header(path)
  except (OSError, tf.errors.OpError):
    return UNREADABLE
  if not head:
    return EMPTY
  return OK if image_format(head) else NOT_IMAGE


def check_headers(paths: Sequence[str]) -> np.ndarray:
  """int8 statuses (:func:`header_status`) of ``paths``, read by a thread
  pool (64 threads for remote roots, 16 for local ones)."""
  out = np.zeros(len(paths), np.int8)
  if not paths:
    return out
  threads = _REMOTE_THREADS if is_remote(paths[0]) else _LOCAL_THREADS

  def check(start):
    for i in range(start, min(start + _HEADER_CHUNK, len(paths))):
      out[i] = header_status(paths[i])

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(check, range(0, len(paths), _HEADER_CHUNK)))
  return out


# ----------------------------------------------------------------------------
# Listing.
# ----------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def subdirs(path: str) -> list[str]:
  return [name.rstrip('/') for name in tf.io.gfile.listdir(path)
          if tf.io.gfile.isdir(os.path.join(path, name))]


def open_root(root: str) -> tuple[str, dict[str, str], list[str]]:
  """(root without a trailing '/', {split: directory}, class names) of an
  image folder; DataError if ``root`` is not a directory."""
  root = os.fspath(root).rstrip('/')
  if not tf.io.gfile.isdir(root):
    raise DataError(f'Image folder {root!r} does not exist or is not a '
                    'directory.')
  dirs = split_dirs(root)
  return root, dirs, class_names(dirs)


def split_dirs(root: str) -> dict[str, str]:
  """{split: directory}: ``ROOT/<split>`` for the :data:`SPLITS` present,
  else ``{'train': ROOT}``."""
  present = set(subdirs(root))
  dirs = {s: os.path.join(root, s) for s in SPLITS if s in present}
  return dirs or {'train': root}


def class_names(dirs: Mapping[str, str]) -> list[str]:
  """The sorted union of the class folders of every split."""
  return sorted(set().union(*(subdirs(d) for d in dirs.values())))


def _walk_local(top: str, seen: set | None = None):
  """(path, size, mtime_ns) of the image files below ``top`` (symlinks
  followed, each directory once)."""
  seen = set() if seen is None else seen
  try:
    info = os.stat(top)
    if (info.st_dev, info.st_ino) in seen:
      return
    seen.add((info.st_dev, info.st_ino))
    entries = list(os.scandir(top))
  except OSError:
    return
  for entry in entries:
    try:
      is_dir = entry.is_dir()
    except OSError:
      is_dir = False
    if is_dir:
      yield from _walk_local(entry.path, seen)
    elif _is_image_name(entry.name):
      try:
        info = entry.stat()
      except OSError:  # E.g. a broken symlink: listed, found unreadable.
        yield entry.path, -1, -1
        continue
      if stat_lib.S_ISREG(info.st_mode):
        yield entry.path, info.st_size, info.st_mtime_ns


def _walk_remote(top: str):
  for dirpath, _, filenames in tf.io.gfile.walk(top):
    for name in filenames:
      if _is_image_name(name):
        yield os.path.join(dirpath, name), -1, -1


def walk_images(top: str):
  """(path, size, mtime_ns) of every image file below ``top``, unsorted;
  size and mtime are -1 for remote roots."""
  return _walk_remote(top) if is_remote(top) else _walk_local(top)


def has_images(top: str) -> bool:
  """Whether any image file lies below ``top`` (stops at the first)."""
  if not tf.io.gfile.isdir(top):
    return False
  return next(iter(walk_images(top)), None) is not None


@dataclasses.dataclass
class Listing:
  """The image files of one split, sorted by class then path."""
  split: str
  directory: str
  paths: list[str]
  labels: np.ndarray  # int32
  sizes: np.ndarray  # int64, -1: unknown (remote)
  mtimes: np.ndarray  # int64 ns, -1: unknown (remote)
  empty_classes: list[str]  # Class folders of this split without images.

  def __len__(self) -> int:
    return len(self.paths)


def list_split(split: str, directory: str, classes: Sequence[str]) -> Listing:
  """Lists the image files of ``directory/<class>/...`` for ``classes``."""
  paths, labels, sizes, mtimes, empty = [], [], [], [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(directory, name)
    if not tf.io.gfile.isdir(class_dir):
      continue
    found = sorted(walk_images(class_dir))
    if not found:
      empty.append(name)
    for path, size, mtime in found:
      paths.append(path)
      sizes.append(size)
      mtimes.append(mtime)
    labels += [label] * len(found)
  return Listing(split, directory, paths, np.asarray(labels, np.int32),
                 np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64),
                 empty)


def check_empty_classes(listing: Listing, dirs: Mapping[str, str]) -> None:
  """Raises DataError for a class folder of ``listing`` that has images in
  no split at all (an empty folder in one split is fine while another split
  has images of that class)."""
  for name in listing.empty_classes:
    others = [d for s, d in dirs.items() if s != listing.split]
    if not any(has_images(os.path.join(d, name)) for d in others):
      folder = os.path.join(listing.directory, name)
      raise DataError(
          f'Class folder {folder} has no {"/".join(IMAGE_EXTENSIONS)} images, '
          'in this split or any other: it would be a label without examples. '
          'Add images to it or remove it.')


# ----------------------------------------------------------------------------
# Split specs: 'train', 'test[:1000]', 'train[10%:]+test'.
# ----------------------------------------------------------------------------


def seeded_order(n: int) -> np.ndarray:
  """A fixed pseudo-random permutation of ``range(n)`` (int64).

  The argsort of the raw bits of a PCG64 generator seeded by
  ``SeedSequence(0)``: raw bit streams are stable across numpy versions
  and machines (``Generator.permutation`` is not guaranteed to be).
  """
  bits = np.random.PCG64(np.random.SeedSequence(_SLICE_SEED)).random_raw(n)
  return np.argsort(bits, kind='stable').astype(np.int64)


class _LazySplitInfos(collections.abc.Mapping):
  """{split: info with num_examples} for tfds's ``to_absolute``, each split
  listed only when asked for."""

  def __init__(self, names: Sequence[str], count: Callable[[str], int]):
    self._names = list(names)
    self._count = count

  def __getitem__(self, name):
    if name not in self._names:
      raise KeyError(name)
    return types.SimpleNamespace(num_examples=self._count(name),
                                 shard_lengths=None)

  def __iter__(self):
    return iter(self._names)

  def __len__(self):
    return len(self._names)


def resolve_split(spec: str, available: Sequence[str],
                  count: Callable[[str], int]
                  ) -> list[tuple[str, int | None, int | None]]:
  """``spec`` -> [(split, start, stop)], one per ``+`` part.

  Parsed and resolved by TFDS (``tfds.core.ReadInstruction.from_spec`` and
  ``to_absolute``: percent boundaries rounded to the closest example, as
  TFDS does); ``count(split)`` is a split's number of files. ``start`` and
  ``stop`` index the split's :func:`seeded_order` (None, None: the whole
  split, in path order).
  """
  usage = (f'available splits: {sorted(available)}; allowed: {SLICE_SYNTAX}')
  if not isinstance(spec, str) or not spec.strip():
    raise DataError(f'Bad split {spec!r}: {usage}.')
  if 'shard]' in spec:
    raise DataError(f'Bad split {spec!r}: image folders have no shards; '
                    f'{usage}.')
  for part in spec.split('+'):
    name = part.split('[', 1)[0].strip()
    if name not in available and name != 'all':
      raise DataError(f'Split {name!r} not found ({usage}).')
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(
        _LazySplitInfos(available, count))
  except (ValueError, NotImplementedError, AttributeError, TypeError) as e:
    message = re.sub(r'\.?\s*See format at:? \S+', '',
                     ' '.join(str(e).split()))
    message = message.replace('Error parsing split', 'cannot parse').strip()
    raise DataError(f'Bad split {spec!r} ({message}); {usage}.') from None
  out = []
  for instruction in instructions:
    start, stop = instruction.from_, instruction.to
    out.append((instruction.splitname, start, stop))
  return out


def select(n: int, start: int | None, stop: int | None) -> np.ndarray:
  """The sorted file ids [start:stop] of the seeded order of ``n`` files
  (all of them, without computing the order, when both are None)."""
  if start is None and stop is None:
    return np.arange(n, dtype=np.int64)
  return np.sort(seeded_order(n)[start:stop])


# ----------------------------------------------------------------------------
# The index.
# ----------------------------------------------------------------------------


def cache_dir() -> str:
  """``$SSL_JAX_CACHE``, else ``$XDG_CACHE_HOME/ssl_jax``, else
  ``~/.cache/ssl_jax``."""
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'ssl_jax')


def root_key(root: str) -> str:
  """The normalised root the index is keyed by."""
  root = os.fspath(root).rstrip('/')
  return root if is_remote(root) else os.path.abspath(root)


def index_path(root: str) -> str:
  """Where the index of image folder ``root`` lives (see the module doc)."""
  key = root_key(root)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  base = re.sub(r'[^A-Za-z0-9_.-]', '_', os.path.basename(key)) or 'root'
  return os.path.join(cache_dir(), 'folder_index', f'{base}-{digest}.npz')


class FolderIndex:
  """The cached header-check results of one image folder (module doc).

  ``entries``: {path relative to the root: (size, mtime_ns, status)}.
  """

  def __init__(self, root: str):
    self.root = os.fspath(root).rstrip('/')
    self.path = index_path(self.root)
    self.entries = self._load()

  def _load(self) -> dict[str, tuple[int, int, int]]:
    try:
      if not tf.io.gfile.exists(self.path):
        return {}
      with tf.io.gfile.GFile(self.path, 'rb') as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        if (int(data['version']) != INDEX_VERSION
            or str(data['root']) != root_key(self.root)):
          return {}
        blob = data['paths'].tobytes().decode('utf-8')
        names = blob.split(_PATH_SEP) if blob else []
        return dict(zip(names, zip(data['sizes'].tolist(),
                                   data['mtimes'].tolist(),
                                   data['status'].tolist())))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Ignoring the unreadable image folder index %s (%s); '
                      'it is rebuilt.', self.path, e)
      return {}

  def relative(self, path: str) -> str:
    return path[len(self.root) + 1:]

  def lookup(self, rel: str, size: int, mtime: int) -> int | None:
    """The recorded status, if the entry is still valid; else None."""
    entry = self.entries.get(rel)
    if entry is None or entry[0] != size or entry[1] != mtime:
      return None
    return None if entry[2] == UNREADABLE else entry[2]

  def save(self, updates: Mapping[str, tuple[int, int, int]],
           listed: Iterable[tuple[str, set]] = ()) -> None:
    """Merges ``updates`` into the index file (reloaded first) and drops the
    entries under each (prefix, listed names) of ``listed`` whose file was
    not listed. Failures are logged, never raised."""
    current = self._load()
    for prefix, names in listed:
      current = {k: v for k, v in current.items()
                 if not k.startswith(prefix) or k in names}
    current.update(updates)
    self.entries = current
    names = list(current)
    values = np.asarray(list(current.values()),
                        np.int64).reshape(len(names), 3)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, version=np.int64(INDEX_VERSION),
        root=np.asarray(root_key(self.root)),
        paths=np.frombuffer(_PATH_SEP.join(names).encode('utf-8'), np.uint8),
        sizes=values[:, 0], mtimes=values[:, 1],
        status=values[:, 2].astype(np.int8))
    tmp = f'{self.path}.tmp{os.getpid()}'
    try:
      tf.io.gfile.makedirs(os.path.dirname(self.path))
      with tf.io.gfile.GFile(tmp, 'wb') as f:
        f.write(buffer.getvalue())
      tf.io.gfile.rename(tmp, self.path, overwrite=True)
    except (OSError, tf.errors.OpError) as e:
      logging.warning('Could not write the image folder index %s (%s): the '
                      'next open checks the files again. Set $%s to a '
                      'writable directory.', self.path, e, CACHE_ENV)

  def record(self, paths: Sequence[str], sizes: Sequence[int],
             mtimes: Sequence[int], status: int | Sequence[int]) -> None:
    """Records ``status`` (one, or one per path) for ``paths``."""
    statuses = np.broadcast_to(np.asarray(status), (len(paths),))
    self.save({self.relative(p): (int(s), int(m), int(st))
               for p, s, m, st in zip(paths, sizes, mtimes, statuses)})


def statuses(index: FolderIndex, paths: Sequence[str], sizes: np.ndarray,
             mtimes: np.ndarray, *, listed: Iterable[tuple[str, set]] = (),
             recheck: bool = False, what: str = '') -> np.ndarray:
  """int8 statuses of ``paths``: from ``index`` where valid, else (or with
  ``recheck``) from a new header check; new results are saved in the index,
  and entries under ``listed`` prefixes of unlisted files dropped."""
  start = time.perf_counter()
  out = np.full(len(paths), -1, np.int8)
  rels = [index.relative(p) for p in paths]
  if not recheck:
    for i, (rel, size, mtime) in enumerate(zip(rels, sizes.tolist(),
                                               mtimes.tolist())):
      status = index.lookup(rel, size, mtime)
      if status is not None:
        out[i] = status
  todo = np.flatnonzero(out < 0)
  if todo.size:
    out[todo] = check_headers([paths[i] for i in todo])
  listed = list(listed)
  stale = any(True for prefix, names in listed for k in index.entries
              if k.startswith(prefix) and k not in names)
  if todo.size or stale:
    index.save({rels[i]: (int(sizes[i]), int(mtimes[i]), int(out[i]))
                for i in todo}, listed)
  elapsed = time.perf_counter() - start
  if elapsed > _LOG_AFTER_S:
    logging.info('Checked %d of the %d files of %s in %.1f s (the others '
                 'from the index %s).', todo.size, len(paths), what or
                 index.root, elapsed, index.path)
  return out


def error_summary(error: Exception) -> str:
  """The first line of a (TF) error, without TF's function and node names."""
  message = getattr(error, 'message', None) or str(error)
  message = re.sub(r'\{\{[^}]*\}\}', '', message)
  message = message.split('[[', 1)[0].split('[Op:', 1)[0]
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__).rstrip('. ')


def describe_bad(paths: Sequence[str], codes: Sequence[int],
                 limit: int = 10) -> str:
  """'path (reason), ...' of the first ``limit``, then '... (N in all)'."""
  shown = ', '.join(f'{p} ({REASONS.get(int(c), "bad")})'
                    for p, c in zip(paths[:limit], codes[:limit]))
  more = f', ... ({len(paths)} in all)' if len(paths) > limit else ''
  return shown + more
