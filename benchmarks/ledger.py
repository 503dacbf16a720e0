"""The finished measurements of a long benchmark, kept in one JSON file.

A benchmark of many hours (benchmarks/multitask_vit.py, benchmarks/compare.py)
outlives the machine it starts on: its run directories (checkpoints, layer
sweeps) are large and are lost with the machine, so resuming "from the
workdir" only helps on the same machine. The ledger keeps what the table is
made of, one entry per unit of work (a row and seed, or a method, learning
rate and seed), small enough to commit beside the benchmark
(benchmarks/results/NAME.json). A rerun anywhere, of any later commit,
skips every unit already in it and measures only the rest; the table is
made from the entries.

Each entry records what produced it (ssl_jax.core.provenance: commit,
requirements.lock, versions, devices, time), how long it took (`seconds`:
the wall time of the process that finished it, from its last resume, with
whatever else shared the machine; removed by hand from an entry whose
process was paused while it ran, a pause being no part of the work) and the
definition it measured (`spec`: a row's overrides, a method's config); an
entry whose definition no longer matches the benchmark's is an error that
names it, not a stale number in the table. The file also records the
benchmark's setting (e.g. the images seen, --quick): a ledger of another
setting is refused as a whole.

Writes are atomic (a temporary file renamed over the old one), so a run
killed mid-write leaves the previous ledger intact. Several processes may
share one ledger (e.g. the same command on machines with a common
filesystem, or two processes on one): each write holds a lease on the
file (ssl_jax.locking, a `.lock/` beside it, gone after) and merges its
entry into the file as it is then, so no process drops another's entries,
and a unit another process has finished meanwhile is read, not measured
again; a unit measured under a lease of its own (`measured(hold=...)`) is
never measured by two processes at once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable


class LedgerError(ValueError):
  """The ledger cannot be used: another setting or definition, or not a ledger."""


class Ledger:
  """A JSON file {'setting': ..., 'entries': {key: {'spec', 'value', 'produced_by', 'seconds'}}}."""

  def __init__(self, path: str | None, setting: dict[str, Any]):
    """`path` None keeps the entries in memory only (nothing is written)."""
    self.path = path
    self.setting = json.loads(json.dumps(setting))  # as it reads back
    self.entries: dict[str, dict[str, Any]] = self._stored()

  def _stored(self) -> dict[str, dict[str, Any]]:
    """The entries in the file now ({} without one); LedgerError for a
    file that is not a ledger or holds another setting."""
    path = self.path
    if not (path and os.path.exists(path)):
      return {}
    with open(path, encoding='utf-8') as f:
      try:
        stored = json.load(f)
      except ValueError as e:
        raise LedgerError(f'{path} is not a ledger ({e}): pass another --ledger, or '
                          'restore it from git') from None
    if stored.get('setting') != self.setting:
      raise LedgerError(
          f'{path} holds measurements of another setting ({stored.get("setting")}); this run '
          f'is {self.setting}: pass another --ledger, or move that file away')
    return stored.get('entries', {})

  def get(self, key: str, spec: Any) -> Any | None:
    """The stored value of `key`, or None when it is not measured yet;
    LedgerError when it was measured for another `spec`."""
    entry = self.entries.get(key)
    if entry is None:
      return None
    spec = json.loads(json.dumps(spec))
    if entry['spec'] != spec:
      raise LedgerError(
          f'{self.path}: {key!r} was measured for {entry["spec"]}, and the benchmark now '
          f'defines it as {spec}: delete that entry (or pass another --ledger) to measure it again')
    return entry['value']

  def put(self, key: str, spec: Any, value: Any, seconds: float | None = None) -> None:
    from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
    entry = {'spec': spec, 'value': value, 'produced_by': provenance.record()}
    if seconds is not None:
      entry['seconds'] = round(seconds, 1)
    self.entries[key] = json.loads(json.dumps(entry))
    if not self.path:
      return
    from ssl_jax import locking  # pylint: disable=g-import-not-at-top
    directory = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(directory, exist_ok=True)
    with locking.Lease(directory, f'ledger-{os.path.basename(self.path)}', what='ledger',
                       wait=True, poll=0.05):
      # What other processes sharing the file have added since, and this entry.
      self.entries = {**self._stored(), key: self.entries[key]}
      tmp = f'{self.path}.tmp{os.getpid()}'
      with open(tmp, 'w', encoding='utf-8') as f:
        json.dump({'setting': self.setting, 'entries': self.entries}, f, indent=1,
                  sort_keys=True)
        f.write('\n')
      os.replace(tmp, self.path)

  def measured(self, key: str, spec: Any, measure: Callable[[], Any],
               hold: str | None = None) -> Any:
    """The stored value of `key`, or `measure()` stored under it. Before
    measuring, the file is read again: another process sharing it may have
    finished that unit. With `hold` (a directory), the unit is measured
    under a lease on it (ssl_jax.locking), so that processes sharing the
    ledger never measure one unit at the same time: one that another live
    process holds raises locking.Busy at once, naming it (the caller may do
    other work first, see benchmarks/compare.py); one whose holder died is
    taken over once its heartbeat is stale."""
    value = self._latest(key, spec)
    if value is not None:
      return value
    if hold is None:
      return self._measure(key, spec, measure)
    from ssl_jax import locking  # pylint: disable=g-import-not-at-top
    with locking.Lease(hold, 'unit'):
      value = self._latest(key, spec)  # its last holder stored it before this one took it
      return self._measure(key, spec, measure) if value is None else value

  def _latest(self, key: str, spec: Any) -> Any | None:
    """`get`, reading the file again when this process has no entry."""
    value = self.get(key, spec)
    if value is None and self.path and key in (stored := self._stored()):
      self.entries = {**self.entries, key: stored[key]}
      value = self.get(key, spec)
    return value

  def _measure(self, key: str, spec: Any, measure: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    value = measure()
    self.put(key, spec, value, seconds=time.perf_counter() - t0)
    return self.entries[key]['value']

  def check(self, specs: dict[str, Any]) -> None:
    """Refuses (LedgerError) any entry under one of `specs`' key prefixes
    that was measured for another spec: called before a benchmark measures
    anything, so that a stale entry stops it at once, not hours later."""
    for key in self.entries:
      for prefix, spec in specs.items():
        if key.startswith(prefix):
          self.get(key, spec)

  def time_line(self, keys) -> str:
    """What the entries `keys` took, in words (entries written before the
    ledger kept times, or whose process was paused while it ran, have none
    and are counted apart)."""
    keys = list(keys)
    timed = [self.entries[k]['seconds'] for k in keys if 'seconds' in self.entries[k]]
    text = (f'{len(timed)} of its {len(keys)} units took {sum(timed) / 3600:.1f} h in the '
            'processes that finished them (wall time from their last resume, sharing the '
            'machine with whatever else ran)')
    if len(timed) < len(keys):
      text += (f'; {len(keys) - len(timed)} untimed (measured before the ledger kept times, '
               'or by a process paused while it ran)')
    return text

  def producers(self, keys) -> list[str]:
    """One provenance line per distinct commit among the entries `keys`
    (what a table made of them must say it was produced by)."""
    from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
    seen, lines = set(), []
    for key in keys:
      rec = self.entries[key]['produced_by']
      who = (rec.get('commit'), rec.get('dirty'), rec.get('lock'), rec.get('devices'))
      if who not in seen:
        seen.add(who)
        lines.append(provenance.line(rec))
    return lines


def from_flag(flag, *, quick: bool, setting: dict[str, Any]) -> Ledger:
  """The ledger a benchmark script's `--ledger` flag (an absl FlagHolder)
  names: in memory only for "", and for a --quick run left at the default
  path (a smoke run never writes the committed measurements). A file that
  cannot be used is absl's UsageError: one line, before anything runs."""
  from absl import app  # pylint: disable=g-import-not-at-top
  path = flag.value or None
  if quick and not flag.present:
    path = None
  try:
    book = Ledger(path, setting)
  except LedgerError as e:
    raise app.UsageError(str(e)) from None
  print(f'ledger: {path or "none (nothing kept)"}, {len(book.entries)} units measured before',
        flush=True)
  return book
