"""ssl_jax.peers across two real processes (jax.distributed on 127.0.0.1,
collectives through gloo, whose waits give up after 30 s)."""

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_multihost import _launch, _port, _reap, _why

SKEW_S = 40  # longer than gloo's 30 s


@pytest.mark.slow
def test_a_process_arriving_late_does_not_end_the_run():
  """Process 1 reaches the first call of a compiled collective 40 s after
  process 0 (as after a persistent-cache miss) and process 0 is 5 s late to
  a `share`: both wait for each other through the coordination service, the
  watch (10 s) does not mistake the waiting for a death, and the
  collective gives the sum over both processes."""
  port = _port()
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', '_peers_skew.py'),
                             str(port), str(i), str(SKEW_S)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
  for out in outs:  # 4 devices with 1.0 and 4 with 2.0
    assert 'sum 12.0 12.0 | shared from process 0' in out, out[-2000:]


@pytest.mark.slow
def test_a_bad_dataset_on_two_processes_is_one_line_and_status_2_on_both(tmp_path):
  """Process 0 opens the dataset first and fails: the other process hears
  of it and fails the same way, at once, instead of waiting for process 0
  (both status 2, the same line; nothing for a supervisor to rerun)."""
  port = _port()
  start = time.time()
  procs = [_launch('mae', str(tmp_path / 'w'), str(tmp_path), port, i,
                   '--config.data.name=cifar10') for i in range(2)]
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    _reap(procs)
  assert [p.returncode for p in procs] == [2, 2], [_why(o) for o in outs]
  for out in outs:
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: config.data.name='cifar10'") and 'not prepared' in last, last
  assert time.time() - start < 120


@pytest.mark.slow
def test_a_process_that_failed_ends_the_others_with_its_status():
  port = _port()
  start = time.time()
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', '_peers_fail.py'),
                             str(port), str(i)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    _reap(procs)
  assert [p.returncode for p in procs] == [3, 3], outs
  assert outs[1].strip().splitlines()[-1] == (
      'error: process 0 of 2 failed with status 3 (its log says why); stopping this one '
      'too: exit status 3'), outs[1][-1000:]
  assert time.time() - start < 60
