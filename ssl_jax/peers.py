"""Watching the other processes of a multi-process run.

When one process of a jax.distributed run dies (a preempted VM, kill -9,
an out-of-memory kill), the others block inside the step's collectives
until JAX's own heartbeat check aborts them (after
`heartbeat_timeout_seconds`, with a C++ stack trace and SIGABRT). This
module ends them sooner and in one line: each process publishes a counter
in the coordination service's key-value store every `interval_s` and reads
everyone's; a process whose counter has not moved for `timeout_s` (or a
coordination service that no longer answers: process 0 died) makes this
process print

  error: process 1 of 2 stopped (no heartbeat for 10 s: preempted or
  crashed); stopping this one too: rerun the same command on every process
  to resume from the last checkpoint

and exit with status 75 (EXIT_TEMPORARY, what launch/supervise.py reruns).
A process that finished its work says so first (`finish`), so that the
others' tail work (a last evaluation, writing tables) is not mistaken for
a death; one that failed says so with its exit status (`leave(status)`),
and the others stop at once with the same status instead of waiting for
it (a bad config on process 0 is status 2 on every process, not a rerun).
Where process 0's error was shared with the others (`first_on_process_zero`:
opening the dataset), each of them raises it in its own words instead, so
every process's last line names the cause.
Everything written stays consistent: checkpoints are committed
atomically, and the workdir's claim is taken over by the rerun.

JAX's own check is kept as the backstop: `initialize` sets its heartbeat
timeout to twice ours (at least JAX's default, 100 s), so ours fires first.

`align` and `share` make the processes wait for one another through the
coordination service rather than through a collective: on the CPU a
collective (gloo) gives up after 30 s, so a process still compiling, or
still generating a dataset, 30 s after its peer started waiting would end
the run. Every first call of a compiled step is aligned (`together`).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import jax
from absl import logging

EXIT_TEMPORARY = 75
_PREFIX = 'ssl_jax/peers'
ALIGN_TIMEOUT_S = 3600  # a slow peer (compiling a pod-sized step); a dead one: Watch
_calls: dict[str, int] = {}  # tag -> how many times this process waited on it
# Set on process 0 once it shared a failure of `first_on_process_zero` with
# the others: each of them raises that error itself where it waits for it,
# so their watches leave the ending to it (the user reads process 0's error
# on every process, not 'process 0 failed'), for at most their timeout.
_failure_shared = threading.Event()
_SHARED = ' shared'  # follows the status a failed process publishes in that case


def initialize(coordinator_address=None, num_processes=None, process_id=None, *,
               timeout_s: float) -> None:
  """jax.distributed.initialize (arguments None: detected, as on a TPU pod)
  with JAX's heartbeat timeout at 2 x timeout_s, and never below JAX's
  default of 100 s (a shorter one aborts busy processes by mistake)."""
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=max(int(2 * timeout_s), 100))


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def _key(tag: str) -> str:
  """A key of its own for this call of `tag` (every process calls them in
  the same order)."""
  _calls[tag] = _calls.get(tag, 0) + 1
  return f'ssl_jax/sync/{tag}/{_calls[tag]}'


def align(tag: str, timeout_s: float = ALIGN_TIMEOUT_S) -> None:
  """Returns once every process reached align(tag) (at once with one)."""
  if jax.process_count() > 1:
    _client().wait_at_barrier(_key(tag), int(timeout_s * 1000))


def share(tag: str, value: str | None, timeout_s: float = ALIGN_TIMEOUT_S) -> str:
  """Process 0's `value` on every process (the others' is ignored)."""
  if jax.process_count() == 1:
    return value
  key = _key(tag)
  if jax.process_index() == 0:
    _client().key_value_set(key, value)
    return value
  return _client().blocking_key_value_get(key, int(timeout_s * 1000))


def first_on_process_zero(fn, tag: str, errors: tuple[type[Exception], ...] = (),
                          then_others: bool = True):
  """fn() on process 0, then (once it returned; with then_others) on the
  others: work that writes shared files runs once. When process 0's fn
  raises, the others raise too instead of waiting: the same class with the
  same message where it is one of `errors`, else RuntimeError naming
  process 0's error."""
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    try:
      out = fn()
    except Exception as e:
      share(tag, f'{type(e).__name__}\n{e}')
      _failure_shared.set()
      raise
    share(tag, '')
    return out
  outcome = share(tag, None)
  if outcome:
    name, message = outcome.split('\n', 1)
    cls = next((c for c in errors if c.__name__ == name), None)
    if cls is not None:
      raise cls(message)
    raise RuntimeError(f'process 0 failed ({name}: {message[:300]}): see its log')
  return fn() if then_others else None


def together(jitted, tag: str):
  """`jitted` (a jax.jit function) whose first call compiles on every
  process and then waits for all of them before it runs: a process that
  compiles slower (a persistent-cache miss, a busier host) does not make
  its peers' first collective time out."""
  if jax.process_count() == 1:
    return jitted
  compiled = []

  def call(*args, **kwargs):
    if not compiled:
      compiled.append(jitted.lower(*args, **kwargs).compile())  # the call below reuses it
      align(f'compiled/{tag}')
    return jitted(*args, **kwargs)
  return call


def any_process(tag: str, flag: bool, timeout_s: float = ALIGN_TIMEOUT_S) -> bool:
  """True on every process if `flag` is True on any (all of them wait for
  one another: call it where every process calls it, in the same order)."""
  if jax.process_count() == 1:
    return flag
  key = _key(tag)
  client = _client()
  client.key_value_set(f'{key}/{jax.process_index()}', '1' if flag else '0')
  client.wait_at_barrier(f'{key}/all', int(timeout_s * 1000))
  return any(v == '1' for _, v in client.key_value_dir_get(f'{key}/'))


class StopStep:
  """The step at which every process of a run stops when any of them is
  asked to (a preemption notice reaches one host before another, or only
  one), agreed through the coordination service, without a collective and
  without waiting.

  `reached(step, requested)` is called by every process after dispatching
  `step` and reading back step - 1's results (the training loop does). The
  first process asked to stop writes step + LEAD (the key is written once;
  a later proposal reads the first); every process reads the key at every
  step. The lead of 2 suffices: each step runs a collective over every
  process, so a process that reads back step + 1 has waited for the
  proposer to dispatch it, which it does after writing; so every process
  sees the proposal by its check of step + 2 and none has passed it. One
  key read per step (about 1 ms on one host); nothing with one process.
  """

  LEAD = 2

  def __init__(self):
    self._key = f'{_key("stop")}/' if jax.process_count() > 1 else None
    self.step: int | None = None

  def reached(self, step: int, requested: bool) -> bool:
    """Whether this process stops after `step` (the same step on all)."""
    if self._key is None:
      return requested
    if self.step is None:
      client = _client()
      if requested:
        try:
          client.key_value_set(f'{self._key}step', str(step + self.LEAD))
        except jax.errors.JaxRuntimeError as e:  # another process proposed first
          if 'ALREADY_EXISTS' not in str(e):
            raise
      found = client.key_value_dir_get(self._key)
      if not found:
        return False
      self.step = int(found[0][1])
      if self.step < step:
        raise RuntimeError(f'the agreed stop at step {self.step} was read only at step '
                           f'{step}: the processes went out of step (a bug)')
      logging.warning('a preemption signal reached %s: every process saves a checkpoint '
                      'at step %d and exits', 'this process' if requested else
                      'another process', self.step)
    return step >= self.step


class Watch:
  """A daemon thread that ends this process when another one stops (see the
  module docstring). `on_lost(message, status)` replaces the exit (tests)."""

  def __init__(self, timeout_s: float, interval_s: float = 1.0, on_lost=None):
    if not timeout_s > 0:
      raise ValueError(f'timeout_s={timeout_s}: must be > 0 seconds')
    self.timeout_s, self.interval_s = timeout_s, min(interval_s, timeout_s / 4)
    self.me, self.count = jax.process_index(), jax.process_count()
    self._on_lost = on_lost or _exit
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='ssl_jax-peers', daemon=True)

  def start(self) -> 'Watch':
    if self.count > 1:
      self._thread.start()
    return self

  def finish(self, status: int = 0) -> None:
    """This process's work is done (status 0) or failed with `status`: the
    others stop watching it, or stop with the same status."""
    if self.count > 1 and not self._stop.is_set():
      self._stop.set()
      self._thread.join()
      key = f'{_PREFIX}/done/{self.me}' if status == 0 else f'{_PREFIX}/failed/{self.me}'
      value = f'{status}{_SHARED if status and _failure_shared.is_set() else ""}'
      try:
        _client().key_value_set(key, value, allow_overwrite=True)
      except Exception:  # noqa: BLE001 (the service is gone: nobody is watching)
        pass

  def _lost(self, message: str, status: int = EXIT_TEMPORARY) -> None:
    self._stop.set()
    try:  # a failed process 0 waits for this before it takes the service down
      _client().key_value_set(f'{_PREFIX}/left/{self.me}', str(status), allow_overwrite=True)
    except Exception:  # noqa: BLE001
      pass
    self._on_lost(message, status)

  def leave(self, status: int) -> None:
    """Ends this failed process with `status` now: says so (`finish`), then
    exits without JAX's shutdown barrier, which would wait for peers that
    already stopped. Process 0, which holds the coordination service, first
    waits (at most timeout_s) for the others to have read it and left."""
    self.finish(status)
    if self.count > 1 and self.me == 0:
      deadline = time.monotonic() + self.timeout_s
      while time.monotonic() < deadline:
        try:
          entries = dict(_client().key_value_dir_get(f'{_PREFIX}/'))
        except Exception:  # noqa: BLE001
          break
        if all(any(f'{_PREFIX}/{k}/{p}' in entries for k in ('done', 'failed', 'left'))
               for p in range(1, self.count)):
          break
        time.sleep(0.1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

  def _run(self) -> None:
    client = _client()
    beat = 0
    seen = {}  # process -> (its last counter, when it last moved)
    told = {}  # process -> when it was seen failed with an error it shared
    while not self._stop.is_set():
      beat += 1
      now = time.monotonic()
      try:
        client.key_value_set(f'{_PREFIX}/beat/{self.me}', str(beat), allow_overwrite=True)
        entries = dict(client.key_value_dir_get(f'{_PREFIX}/'))
      except Exception as e:  # noqa: BLE001
        if self._stop.is_set():
          return
        self._lost(f'the coordination service (process 0 of {self.count}) stopped '
                   f'answering ({type(e).__name__}: preempted or crashed)')
        return
      for p in range(self.count):
        if p == self.me or f'{_PREFIX}/done/{p}' in entries:
          continue
        failed = entries.get(f'{_PREFIX}/failed/{p}')
        if failed is not None:
          if failed.endswith(_SHARED) and now - told.setdefault(p, now) <= self.timeout_s:
            continue  # this process's main thread raises that error itself, in its words
          status = int(failed.removesuffix(_SHARED))
          self._lost(f'process {p} of {self.count} failed with status {status} (its log '
                     'says why)', status)
          return
        value = entries.get(f'{_PREFIX}/beat/{p}')
        if p not in seen or seen[p][0] != value:
          seen[p] = (value, now)
        elif now - seen[p][1] > self.timeout_s:
          self._lost(f'process {p} of {self.count} stopped (no heartbeat for '
                     f'{self.timeout_s:g} s: preempted or crashed)')
          return
      self._stop.wait(self.interval_s)


_PEER_FAILURES = ('gloo', 'connection reset', 'connection refused', 'heartbeat',
                  'unavailable', 'deadline_exceeded', 'socket closed', 'broken pipe')


def is_peer_failure(error: BaseException) -> bool:
  """True for an error of a multi-process run's collectives or coordination
  that means another process is gone (on CPU, gloo fails at once when its
  peer's socket closes; TPUs block instead, which `Watch` ends)."""
  text = str(error).lower()
  return (jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError)
          and any(s in text for s in _PEER_FAILURES))


def stop_for_peer_failure(error: BaseException) -> None:
  """Ends this process as `Watch` does, for an error `is_peer_failure`
  recognised (without waiting for JAX's shutdown barrier, which would wait
  for the dead process and then abort)."""
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  _exit(f'another process of this {jax.process_count()}-process run stopped or fell '
        f'far behind (a collective failed: {first[:200]})')


def _exit(message: str, status: int = EXIT_TEMPORARY) -> None:
  then = ('rerun the same command on every process to resume from the last checkpoint'
          if status == EXIT_TEMPORARY else f'exit status {status}')
  line = f'error: {message}; stopping this one too: {then}'
  logging.error(line)
  sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  os._exit(status)  # the main thread may be blocked in a collective
