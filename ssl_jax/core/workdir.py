"""One writer per workdir: the lease every writing run holds.

Pretraining, probes, fine-tunes, every point of a sweep (in its own
sub-workdir, while the sweep holds the top one) and the feature probes hold
their --workdir for as long as they write checkpoints or metrics
(`ssl_jax.locking.Lease`; claims live in WORKDIR/.lock/). A second run is
refused before it writes anything, with one line naming the holder. On
several processes, process 0 takes the lease and tells the others the
outcome, so all of them stop, or none. Tools that only read checkpoints
(pictures, samples, the public API) take no lease.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from typing import Iterator

import jax

from ssl_jax import locking, peers

Busy = locking.Busy            # another live run holds the workdir
Unwritable = locking.Unwritable  # the workdir cannot be created or written
Lost = locking.Lost            # taken over while this run was not responding


def _command() -> str:
  return ' '.join(shlex.quote(a) for a in sys.argv)[:500]


def _agree(code: int) -> int:
  """Process 0's outcome on every process."""
  if jax.process_count() == 1:
    return code
  return int(peers.share('workdir held', str(code)))  # not a collective: may wait


@contextlib.contextmanager
def hold(workdir: str, timeout: float | None = None) -> Iterator[locking.Lease | None]:
  """Holds `workdir` (created if missing) for the duration of the block.

  Yields the lease on process 0 and None elsewhere. Raises Busy or
  Unwritable (on every process) when it cannot be held.
  """
  lease, error = None, None
  if jax.process_index() == 0:
    lease = locking.Lease(workdir, 'workdir', what='workdir', timeout=timeout,
                          command=_command())
    try:
      lease.acquire()
    except Exception as e:  # noqa: BLE001 (every process must hear of any failure)
      error = e
  codes = {locking.Busy: 1, locking.Unwritable: 2}
  code = _agree(0 if error is None else codes.get(type(error), 3))
  if code:
    if error is not None:
      raise error
    cls = {1: locking.Busy, 2: locking.Unwritable}.get(code, RuntimeError)
    raise cls(f'workdir {workdir} could not be held by process 0 (its log says why)')
  try:
    yield lease
  finally:
    if lease is not None:
      lease.release()


def check(lease: locking.Lease | None) -> None:
  """Raises Lost on every process if process 0's lease was taken over."""
  lost = _agree(int(lease is not None and lease.lost))
  if lost:
    if lease is not None:
      lease.check()
    raise locking.Lost('process 0 lost the workdir lease: another run took it over')
