"""What the console shows: the run's own progress and every warning, not the
INFO records of the libraries underneath.

Light on purpose (absl and the standard library): main.py installs the
filter before it validates the config, so that JAX's INFO record of the
backends it could not load (no TPU on a CPU machine) does not stand before
a bad config's one-line error.
"""

from __future__ import annotations

import logging as pylogging
import os

from absl import logging


class LibraryInfoFilter(pylogging.Filter):
  """Drops INFO records that libraries (orbax, clu, tensorflow) send through
  absl, so the console shows the run's own progress; warnings pass, but for
  orbax's two about a read-only checkpoint directory: every probe, curve
  point and report opens the pretraining's checkpoints read-only on purpose
  (ssl_jax.core.checkpoint), so they say nothing to fix."""

  _QUIET = (f'{os.sep}orbax{os.sep}', f'{os.sep}clu{os.sep}',
            f'{os.sep}tensorflow{os.sep}', f'{os.sep}tensorflow_datasets{os.sep}',
            f'{os.sep}etils{os.sep}', f'{os.sep}jax{os.sep}')
  _EXPECTED_WARNINGS = ('CheckpointManagerOptions.read_only=True, setting',
                        'Given directory is read only=')

  def filter(self, record: pylogging.LogRecord) -> bool:
    library = any(q in record.pathname for q in self._QUIET)
    if record.levelno < pylogging.WARNING:
      return not library
    return not (library and record.levelno == pylogging.WARNING
                and any(m in record.getMessage() for m in self._EXPECTED_WARNINGS))


def quiet_library_logs() -> None:
  """Installs the filter above on absl's logger and on absl's handler, which
  also prints what libraries log through Python's own loggers (idempotent)."""
  for target in (pylogging.getLogger('absl'), logging.get_absl_handler()):
    if not any(isinstance(f, LibraryInfoFilter) for f in target.filters):
      target.addFilter(LibraryInfoFilter())
