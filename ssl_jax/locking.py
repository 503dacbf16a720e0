"""Leases: one holder at a time of a directory, on local disks and on gs://.

A run holds its workdir (`Lease(workdir, 'workdir')`) so that a second run on
it is refused before it writes anything; a dataset or palette build holds a
lease in its data_dir (`wait=True`) so that concurrent first runs wait for one
builder. The protocol needs only what every `tf.io.gfile` filesystem offers
(write a whole file, list a directory, read, delete), with list-after-write
consistency (local disks; Cloud Storage, whose listings are strongly
consistent); it needs no atomic create-if-absent, which Cloud Storage exposes
only through its own client library.

Protocol (in `DIR/.lock/`):
1. Write a claim `NAME.<id>.claim` (JSON: host, pid, start time, heartbeat
   time, state 'pending'), where <id> is unique to this attempt.
2. List the claims of NAME. Claims whose heartbeat is older than `timeout`
   seconds, or whose process is gone (same host, pid not running), are stale
   and ignored. If no other live claim is left, this attempt holds the lease:
   it deletes the stale claims (with a warning naming their holder), rewrites
   its own claim as 'held' and starts a heartbeat thread that rewrites it
   every `timeout / 4` seconds. If another live claim is 'held', this attempt
   deletes its claim and is refused (`Busy`, naming the holder). If the others
   are only 'pending' (two attempts racing), it deletes its claim, backs off
   for a random time and tries again. A claim that cannot be parsed counts as
   'pending' until its file is `timeout` seconds old.
   Two attempts cannot both hold: each lists after writing its own claim, so
   whichever lists second sees the other's claim.
3. `release()` stops the heartbeat and deletes the claim (and, on a local
   disk, the lock directory and the directory itself if they are left
   empty: a run refused by a bad dataset leaves nothing behind). A holder that finds
   its claim gone (taken over after its heartbeat went stale, e.g. a machine
   that was suspended for longer than `timeout`) marks the lease lost;
   `check()` then raises `Lost`, and the training loop calls it before every
   checkpoint so that a run that lost its workdir writes nothing more.

Staleness compares the heartbeat time written by the holder with the reader's
clock: machines sharing a workdir must agree on the time to well within
`timeout` (NTP does). The timeout defaults to $SSL_JAX_LOCK_TIMEOUT or 60 s
(main.py: --lock_timeout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import stat
import threading
import time
import uuid
from typing import Any

from absl import logging

LOCK_DIR = '.lock'


def _timeout_from_env() -> float:
  text = os.environ.get('SSL_JAX_LOCK_TIMEOUT', '60')
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not value > 0:
    logging.warning('SSL_JAX_LOCK_TIMEOUT=%r is not a positive number of seconds: using 60',
                    text)
    value = 60.0
  return value


DEFAULT_TIMEOUT_S = _timeout_from_env()
_ATTEMPTS = 8  # rounds of backing off when two attempts race
_DIR_RACES = 100  # times the lock dir is made again after a release removed it


class Busy(RuntimeError):
  """Another live holder has the lease; the message names it."""

  def __init__(self, message: str, holder: 'Claim | None' = None):
    super().__init__(message)
    self.holder = holder


class Unwritable(PermissionError):
  """The directory cannot be created or written (read-only, permissions)."""


class Lost(RuntimeError):
  """This holder's lease was taken over (its heartbeat had gone stale)."""


@dataclasses.dataclass
class Claim:
  """One attempt's claim file, as read back."""
  path: str
  host: str
  pid: int
  started: float      # seconds since the epoch
  heartbeat: float    # seconds since the epoch
  state: str          # 'pending' or 'held'
  command: str = ''
  machine: str = ''   # this boot of this machine's pid namespace (see _machine)

  @classmethod
  def unread(cls, path: str, written: float) -> 'Claim':
    """A claim whose contents could not be read, counted as a live 'pending'
    contender (the reader backs off) with `written` as its heartbeat."""
    return cls(path, '?', 0, written, written, 'pending')

  def describe(self) -> str:
    if self.host == '?':  # Claim.unread
      return f'a claim that cannot be read, {self.path}'
    start = time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(self.started))
    return f'host {self.host}, pid {self.pid}, started {start}'

  def stale(self, now: float, timeout: float) -> bool:
    if now - self.heartbeat > timeout:
      return True
    # A process of this machine (same boot, same pid namespace) that is gone.
    return bool(self.machine) and self.machine == _machine() and not _pid_alive(self.pid)

  def order(self) -> tuple[float, str]:
    return (self.started, os.path.basename(self.path))


def _machine() -> str:
  """The host name, boot id and pid namespace: two processes with the same
  value see each other's pids (containers sharing a host name do not)."""
  parts = [socket.gethostname()]
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      parts.append(f.read().strip())
    parts.append(str(os.stat('/proc/self/ns/pid').st_ino))
  except OSError:  # not Linux: pids are only compared by host name and boot
    pass
  return '/'.join(parts)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (gs:// support)
  return tf.io.gfile


def _is_local(path: str) -> bool:
  return '://' not in path


def _write(path: str, text: str) -> None:
  """Writes the whole file; readers never see part of it: it is written
  under a temporary name and renamed into place (on an object store, a copy
  that creates the object whole)."""
  tmp = f'{path}.tmp'
  if _is_local(path):
    for attempt in range(_DIR_RACES):
      try:
        f = open(tmp, 'w')
        break
      except FileNotFoundError:  # a holder's release removed the empty lock dir
        if attempt == _DIR_RACES - 1:
          raise
        _makedirs(os.path.dirname(path))
    with f:
      f.write(text)
    os.replace(tmp, path)
  else:
    gfile = _gfile()
    with gfile.GFile(tmp, 'w') as f:
      f.write(text)
    gfile.rename(tmp, path, overwrite=True)


def _storage_errors() -> tuple[type[BaseException], ...]:
  """What reading or writing a local or gs:// file raises when it fails."""
  import sys  # pylint: disable=g-import-not-at-top
  tf = sys.modules.get('tensorflow')
  return (OSError,) + ((tf.errors.OpError,) if tf is not None else ())


def _not_found(e: BaseException) -> bool:
  import sys  # pylint: disable=g-import-not-at-top
  tf = sys.modules.get('tensorflow')
  return isinstance(e, FileNotFoundError) or (
      tf is not None and isinstance(e, tf.errors.NotFoundError))


def _read(path: str) -> str | None:
  """The file's text; None if it does not exist. Other storage errors (a
  transient gs:// failure) are raised."""
  try:
    if _is_local(path):
      with open(path) as f:
        return f.read()
    # Read in chunks until the end, never `GFile.read()`: with no length it
    # sizes the read by a second look-up of the name, and a claim rewritten
    # between the open and that look-up (pending -> held is 3 bytes shorter)
    # is then read cut short.
    chunks = []
    with _gfile().GFile(path, 'r') as f:
      while chunk := f.read(1 << 16):
        chunks.append(chunk)
    return ''.join(chunks)
  except _storage_errors() as e:
    if _not_found(e):
      return None
    raise


def _mtime(path: str) -> float | None:
  """When the file was last written (seconds since the epoch); None if it
  does not exist."""
  try:
    if _is_local(path):
      return os.stat(path).st_mtime
    return _gfile().stat(path).mtime_nanos / 1e9
  except _storage_errors() as e:
    if _not_found(e):
      return None
    raise


def _remove(path: str) -> None:
  try:
    if _is_local(path):
      os.remove(path)
    else:
      _gfile().remove(path)
  except Exception:  # noqa: BLE001 (already gone)
    pass


def _listdir(path: str) -> list[str]:
  if _is_local(path):
    return os.listdir(path) if os.path.isdir(path) else []
  gfile = _gfile()
  return [n.rstrip('/') for n in gfile.listdir(path)] if gfile.isdir(path) else []


def _makedirs(path: str) -> None:
  if _is_local(path):
    for attempt in range(_DIR_RACES):
      try:
        os.makedirs(path, exist_ok=True)
        return
      except FileExistsError:
        # os.makedirs found `path` made by another run and then, by the time it
        # checked that it is a directory, removed again by a releasing holder
        # (`Lease.release` removes the empty lock dir): make it again. A
        # file in the way is not a race.
        try:
          mode = os.stat(path).st_mode  # one look, so no third run can slip in
        except FileNotFoundError:
          if attempt == _DIR_RACES - 1:
            raise
          continue
        if stat.S_ISDIR(mode):
          return
        raise
  else:
    _gfile().makedirs(path)


class Lease:
  """Exclusive hold of `directory` under `name`; a context manager.

  Args:
    directory: what is held (created if missing); claims live in
      `directory/.lock/`.
    name: the lease's name within the directory ('workdir', a dataset name).
    what: how messages call the directory ('workdir', 'data_dir').
    timeout: seconds after which a holder's heartbeat is stale.
    wait: False: a held lease raises Busy at once. True (or a number of
      seconds): wait, polling, until the holder releases it (or goes stale).
    poll: seconds between looks while waiting (default: timeout / 4, at
      most 1).
    command: recorded in the claim, for whoever is refused.
  """

  def __init__(self, directory: str, name: str = 'workdir', *, what: str = 'workdir',
               timeout: float | None = None, wait: bool | float = False,
               poll: float | None = None, command: str = ''):
    directory = os.fspath(directory)
    if not directory:
      raise Unwritable(f'no {what} given (an empty path)')
    if _is_local(directory):
      directory = os.path.abspath(directory)
    self.directory = directory.rstrip('/') or '/'
    self.name = name
    self.what = what
    self.timeout = float(DEFAULT_TIMEOUT_S if timeout is None else timeout)
    if not self.timeout > 0:
      raise ValueError(f'lock timeout must be > 0 seconds, got {timeout!r}')
    self.wait = wait
    self.poll = min(1.0, self.timeout / 4) if poll is None else float(poll)
    if not self.poll > 0:
      raise ValueError(f'lock poll must be > 0 seconds, got {poll!r}')
    self.command = command
    self.lock_dir = os.path.join(self.directory, LOCK_DIR)
    self.started = time.time()
    self.id = f'{time.time_ns():020d}-{uuid.uuid4().hex[:12]}'
    self.path = os.path.join(self.lock_dir, f'{name}.{self.id}.claim')
    self.held = False
    self.lost = False
    self._created = False  # whether acquire() created `directory` (local only)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # -- claims ------------------------------------------------------------------

  def _claim_text(self, state: str) -> str:
    return json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                       'started': self.started, 'heartbeat': time.time(),
                       'state': state, 'command': self.command, 'machine': _machine()})

  def _claims(self) -> list[Claim]:
    prefix, out = f'{self.name}.', []
    for entry in _listdir(self.lock_dir):
      if not (entry.startswith(prefix) and entry.endswith('.claim')):
        continue
      path = os.path.join(self.lock_dir, entry)
      if path == self.path:
        continue
      try:
        text = _read(path)
      except _storage_errors() as e:  # cannot tell: count it as a live contender
        logging.warning('cannot read lock claim %s (%s)', path, _reason(e))
        out.append(Claim.unread(path, time.time()))
        continue
      if text is None:  # released between listing and reading
        continue
      try:
        d: dict[str, Any] = json.loads(text)
        out.append(Claim(path, str(d['host']), int(d['pid']), float(d['started']),
                         float(d['heartbeat']), str(d['state']), str(d.get('command', '')),
                         str(d.get('machine', ''))))
      except (ValueError, KeyError, TypeError):
        # A torn read or a file that is not a claim of ours. Ignoring it could
        # let two attempts hold at once, so it counts as a live contender
        # ('pending': the reader backs off) until its file is `timeout`
        # seconds old; then it is stale and taken over like any other.
        try:
          changed = _mtime(path)
        except _storage_errors():
          changed = time.time()
        if changed is None:  # released between listing and reading
          continue
        logging.warning('cannot parse lock claim %s: counted as a contender until it is '
                        '%g s old', path, self.timeout)
        out.append(Claim.unread(path, changed))
    return out

  def busy_message(self, holder: Claim) -> str:
    age = max(time.time() - holder.heartbeat, 0.0)
    return (f'{self.what} {self.directory} is in use by another run ({holder.describe()}; '
            f'heartbeat {age:.0f} s ago). Wait for it to finish, stop it, or use another '
            f'--{self.what}; a holder that died is taken over once its heartbeat is older '
            f'than {self.timeout:g} s')

  # -- acquire / release -------------------------------------------------------

  def _try_once(self) -> Claim | None:
    """One round: None when held; the blocking claim otherwise."""
    _write(self.path, self._claim_text('pending'))
    now = time.time()
    others = self._claims()
    live = [c for c in others if not c.stale(now, self.timeout)]
    if not live:
      for c in others:
        logging.warning('taking over %s %s from %s, whose heartbeat stopped %.0f s ago',
                        self.what, self.directory, c.describe(), now - c.heartbeat)
        _remove(c.path)
      _write(self.path, self._claim_text('held'))
      return None
    _remove(self.path)
    held = [c for c in live if c.state == 'held']
    return held[0] if held else live[0]

  def acquire(self) -> 'Lease':
    """Holds the lease, or raises Busy (see `wait`)."""
    self._created = _is_local(self.directory) and not os.path.exists(self.directory)
    try:
      _makedirs(self.lock_dir)
    except _storage_errors() as e:  # read-only, permissions, a bad bucket
      raise Unwritable(f'cannot write to {self.what} {self.directory}: '
                       f'{_reason(e)}') from None
    deadline = None
    if self.wait is not False:
      deadline = time.time() + (float('inf') if self.wait is True else float(self.wait))
    attempt, announced = 0, None
    while True:
      try:
        blocker = self._try_once()
      except _storage_errors() as e:
        raise Unwritable(f'cannot write to {self.what} {self.directory}: '
                         f'{_reason(e)}') from None
      if blocker is None:
        break
      if blocker.state == 'held':
        if deadline is None or time.time() > deadline:
          raise Busy(self.busy_message(blocker), blocker)
        if announced != blocker.path:
          logging.warning('waiting for %s (%s) to finish with %s', blocker.describe(),
                          self.name, self.directory)
          announced = blocker.path
        time.sleep(self.poll)
        continue
      attempt += 1  # racing another pending attempt: back off at random
      if attempt >= _ATTEMPTS and deadline is None:
        raise Busy(self.busy_message(blocker), blocker)
      time.sleep(random.uniform(0.05, 0.3) * min(attempt, 4))
    self.held = True
    self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                    name=f'ssl_jax lease {self.name}')
    self._thread.start()
    return self

  def _heartbeat(self) -> None:
    mine = Claim(self.path, '', 0, self.started, 0.0, 'held')
    while not self._stop.wait(self.timeout / 4):
      try:
        if _read(self.path) is None:
          self._lose()
          return
        _write(self.path, self._claim_text('held'))
        # A taker may have deleted this claim between the read and the write
        # above, which then put it back: the newer holder wins, and removes
        # older 'held' claims it finds (their owners then find them gone).
        held = [c for c in self._claims() if c.state == 'held']
        if any(c.order() > mine.order() for c in held):
          _remove(self.path)
          self._lose()
          return
        for c in held:
          _remove(c.path)
      except _storage_errors() as e:  # a transient storage error: retry
        logging.warning('lease heartbeat of %s failed: %s', self.directory, _reason(e))

  def _lose(self) -> None:
    self.lost = True
    logging.error('the %s lease of %s was taken over by another run; this run '
                  'stops writing', self.what, self.directory)

  def check(self) -> None:
    """Raises Lost if another run has taken the lease over."""
    if self.lost:
      raise Lost(f'{self.what} {self.directory} was taken over by another run while this '
                 'one was not responding (its heartbeat was older than '
                 f'{self.timeout:g} s); this run stopped without writing more')

  def release(self) -> None:
    if not self.held:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=max(self.timeout, 10.0))  # a hung write: do not hang too
    if not self.lost:
      _remove(self.path)
    self.held = False
    if _is_local(self.directory):  # leave no empty directories behind
      for empty in [self.lock_dir] + ([self.directory] if self._created else []):
        try:
          os.rmdir(empty)
        except OSError:
          break  # not empty (another claim, a run's files) or already gone

  def __enter__(self) -> 'Lease':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _reason(e: BaseException) -> str:
  """An exception as one short line (TensorFlow's errors carry a node dump)."""
  text = getattr(e, 'message', None) or str(e) or type(e).__name__
  if isinstance(e, OSError) and e.strerror:
    text = e.strerror
  return ' '.join(str(text).split())
