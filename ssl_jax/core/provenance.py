"""What produced a result: the code, the pinned packages, the software, the
hardware.

`record()` is written into every result file (config.json, eval.json /
eval.md, layers / low_data / sweep tables) and printed by the benchmarks:

  commit     the git commit of the source tree ssl_jax was imported from
             (None outside a git checkout, e.g. an installed wheel)
  dirty      whether tracked files differ from that commit (None: unknown)
  lock       sha256 (first 16 hex digits) of requirements.lock, the exact
             tested versions (None when the file is not beside the source)
  jax, jaxlib, python   versions
  devices    e.g. '8 x cpu' or '32 x TPU v3', and `processes`
  time       when the record was made (UTC, ISO 8601)
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import platform
import subprocess
from typing import Any

import jax

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCK_FILE = os.path.join(_ROOT, 'requirements.lock')


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(['git', '-C', _ROOT, *args], capture_output=True, text=True,
                         timeout=20, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout


@functools.lru_cache(maxsize=None)
def _code() -> dict[str, Any]:
  """The commit, dirtiness and lock hash (computed once per process)."""
  commit = _git('rev-parse', 'HEAD')
  status = _git('status', '--porcelain', '--untracked-files=no') if commit else None
  lock = None
  if os.path.exists(LOCK_FILE):
    with open(LOCK_FILE, 'rb') as f:
      lock = hashlib.sha256(f.read()).hexdigest()[:16]
  return {'commit': commit.strip() if commit else None,
          'dirty': bool(status.strip()) if status is not None else None,
          'lock': lock}


def devices() -> str:
  """'N x KIND' of the devices JAX sees (all processes)."""
  kinds = sorted({d.device_kind for d in jax.devices()})
  return f'{jax.device_count()} x {"/".join(kinds)}'


def record() -> dict[str, Any]:
  """This process's provenance record (see the module docstring)."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {**_code(), 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'python': platform.python_version(), 'devices': devices(),
          'processes': jax.process_count(),
          'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}


def line(rec: dict[str, Any] | None = None) -> str:
  """One line for the foot of a table or a benchmark's output."""
  r = rec or record()
  commit = (r['commit'] or 'no git checkout')[:12]
  if r.get('dirty'):
    commit += ' (dirty)'
  extra = f' from step {r["start_step"]}' if 'start_step' in r else ''
  return (f'commit {commit}, requirements.lock {r["lock"] or "absent"}, jax {r["jax"]}, '
          f'jaxlib {r["jaxlib"]}, {r["devices"]} ({r["processes"]} process'
          f'{"es" if r["processes"] != 1 else ""}), {r["time"]}{extra}')


def footer(records: list[dict[str, Any]]) -> str:
  """Markdown lines naming what produced a table (one per invocation)."""
  return ''.join(f'\nProduced by: {line(r)}\n' for r in records)
