"""Decodes every image of an image folder: finds the files a run would fail on.

  python -m ssl_jax.data.verify ROOT [--skip_bad]

ROOT is laid out as for ``config.data.name='folder'`` (``ROOT/<class>/*`` or
``ROOT/<split>/<class>/*``). Every image file of every split is read and
decoded fully (``tf.io.decode_image``, as training does) in a parallel
tf.data map. Prints a one-line summary, then one line per bad file
(``PATH: reason``) or class folder without images in any split; exits 1 if
there is any, 0 otherwise (2: ROOT is not a folder). ``--skip_bad`` exits 0
despite bad files (not despite class folders without images): they are
recorded, and runs with ``config.data.skip_bad_images=True`` skip them.

Results are recorded in the folder's index (:mod:`ssl_jax.data.folder`):
decode failures as undecodable (an open with ``skip_bad_images=True`` skips
them, one without it names them) and decoded files as such.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from ssl_jax.data import folder
from ssl_jax.data.errors import DataError

_LOG_EVERY = 50_000  # Files decoded between progress lines.
_MESSAGES = 100  # Decode failures whose own error message is read.


@dataclasses.dataclass
class Report:
  """What :func:`verify` found."""
  root: str
  files: dict[str, int]  # {split: number of image files}
  bad: list[tuple[str, str]]  # (path, reason)
  problems: list[str]  # Other problems (class folders without images).

  def summary(self) -> str:
    """One line: the counts and what to do about bad files."""
    total = sum(self.files.values())
    splits = ', '.join(f'{s} {n}' for s, n in self.files.items())
    line = (f'{self.root}: {total} image files in {len(self.files)} '
            f'split(s) ({splits}): ')
    if not self.bad and not self.problems:
      return line + 'all decode.'
    reasons = collections.Counter(r.split(' (', 1)[0] for _, r in self.bad)
    counts = ', '.join(f'{n} {r}' for r, n in reasons.items())
    line += f'{len(self.bad)} bad' + (f' ({counts})' if counts else '')
    if self.problems:
      line += f', {len(self.problems)} class folder(s) without images'
    return line + ('; bad files are recorded in the index: runs with '
                   'config.data.skip_bad_images=True skip them.')


def _decoded_paths(paths: Sequence[str]) -> set[str]:
  """The paths (of ``paths``) that read and decode, decoded in parallel."""

  def decode(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    return path, tf.shape(image)

  ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=False).ignore_errors()
  decoded, start = set(), time.perf_counter()
  for path, _ in ds.as_numpy_iterator():
    decoded.add(path.decode('utf-8'))
    if len(decoded) % _LOG_EVERY == 0:
      logging.info('Decoded %d of %d files (%.0f s).', len(decoded),
                   len(paths), time.perf_counter() - start)
  return decoded


def _decode_error(path: str) -> str:
  """Why ``path`` does not decode (TF's message, first line)."""
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3,
                       expand_animations=False)
  except tf.errors.OpError as e:
    return folder.error_summary(e)
  return 'decoded on a second try'


def verify(root: str) -> Report:
  """Decodes every image file of every split of ``root``; records the
  results in the index. Raises DataError if ``root`` is not a folder."""
  root, dirs, classes = folder.open_root(root)
  index = folder.FolderIndex(root)
  report = Report(root, {}, [], [])
  for split, directory in dirs.items():
    listing = folder.list_split(split, directory, classes)
    report.files[split] = len(listing)
    try:
      folder.check_empty_classes(listing, dirs)
    except DataError as e:
      report.problems.append(str(e))
    prefix = '' if directory == root else index.relative(directory + '/')
    rels = {index.relative(p) for p in listing.paths}
    status = folder.statuses(index, listing.paths, listing.sizes,
                             listing.mtimes, listed=[(prefix, rels)],
                             what=f'{root} {split!r}')
    header_bad = np.isin(status, folder.HEADER_BAD)
    for i in np.flatnonzero(header_bad):
      report.bad.append((listing.paths[i], folder.REASONS[int(status[i])]))
    todo = np.flatnonzero(~header_bad)
    decoded = _decoded_paths([listing.paths[i] for i in todo])
    failed = [i for i in todo if listing.paths[i] not in decoded]
    for n, i in enumerate(failed):
      reason = folder.REASONS[folder.UNDECODABLE]
      if n < _MESSAGES:
        reason += f' ({_decode_error(listing.paths[i])})'
      report.bad.append((listing.paths[i], reason))
    failed_set = set(failed)
    index.save({index.relative(listing.paths[i]):
                (int(listing.sizes[i]), int(listing.mtimes[i]),
                 folder.UNDECODABLE if i in failed_set else folder.DECODED)
                for i in todo})
  return report


def main(argv: Sequence[str] | None = None) -> int:
  """The command: prints the report; returns the exit status."""
  parser = argparse.ArgumentParser(
      prog='python -m ssl_jax.data.verify',
      description='Decodes every image file of an image folder '
                  "(config.data.name='folder') and records the bad ones.")
  parser.add_argument('root', help='ROOT of ROOT/<class>/* or '
                      'ROOT/<split>/<class>/*')
  parser.add_argument('--skip_bad', action='store_true',
                      help='exit 0 even if bad files are found (they are '
                      'recorded; runs with config.data.skip_bad_images=True '
                      'skip them)')
  args = parser.parse_args(argv)
  try:
    report = verify(args.root)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(report.summary())
  for path, reason in report.bad:
    print(f'{path}: {reason}')
  for problem in report.problems:
    print(problem)
  return 1 if report.problems or (report.bad and not args.skip_bad) else 0


if __name__ == '__main__':
  sys.exit(main())
