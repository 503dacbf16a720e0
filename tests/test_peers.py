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


def _two_processes(script: str, timeout: float, *args) -> tuple[list[int], list[str]]:
  """Runs tests/SCRIPT PORT PROCESS_ID *ARGS as processes 0 and 1 of one
  run: (their exit statuses, their outputs)."""
  port = _port()
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', script), str(port),
                             str(i), *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    _reap(procs)
  return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_a_process_arriving_late_does_not_end_the_run():
  """Process 1 reaches the first call of a compiled collective 40 s after
  process 0 (as after a persistent-cache miss) and process 0 is 5 s late to
  a `share`: both wait for each other through the coordination service, the
  watch (10 s) does not mistake the waiting for a death, and the
  collective gives the sum over both processes."""
  statuses, outs = _two_processes('_peers_skew.py', 300, SKEW_S)
  assert statuses == [0, 0], [o[-2000:] for o in outs]
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
  start = time.time()
  statuses, outs = _two_processes('_peers_fail.py', 120)
  assert statuses == [3, 3], outs
  assert outs[1].strip().splitlines()[-1] == (
      'error: process 0 of 2 failed with status 3 (its log says why); stopping this one '
      'too: exit status 3'), outs[1][-1000:]
  assert time.time() - start < 60


@pytest.mark.slow
@pytest.mark.parametrize('late_s', [0, 3])
def test_an_error_process_zero_shared_is_the_last_line_of_the_others(late_s):
  """Process 0's error inside first_on_process_zero reaches process 1 where
  it waits for it; process 1's watch, which sees process 0 fail first (at
  once, or seconds before process 1 reaches the call), leaves the ending
  to it: the last line is the error itself on both, with the same status."""
  statuses, outs = _two_processes('_peers_shared.py', 120, late_s)
  assert statuses == [2, 2], outs
  for out in outs:
    assert out.strip().splitlines()[-1] == 'error: the dataset is not prepared', out[-1000:]


class _Lines:
  """A process's output, read as it comes (a thread per process)."""

  def __init__(self, proc):
    import threading
    self.lines = []
    self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
    self._thread.start()

  def _read(self, proc):
    for line in proc.stdout:
      self.lines.append(line)

  def has(self, text):
    return any(text in line for line in self.lines)

  def text(self):
    self._thread.join(timeout=30)
    return ''.join(self.lines)


def _preempt_process_1(procs, when, bound=300):
  """SIGTERM to process 1 alone once `when()`, then both must exit 75 with
  the same last line; returns the step they stopped at."""
  import signal
  outs = [_Lines(p) for p in procs]
  deadline = time.time() + 600
  while not when(outs):
    assert time.time() < deadline, 'not ready in time'
    for p, o in zip(procs, outs):
      assert p.poll() is None, _why(o.text())
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  for p in procs:
    p.wait(timeout=bound)
  texts = [o.text() for o in outs]
  assert [p.returncode for p in procs] == [75, 75], [_why(t) for t in texts]
  last = [t.strip().splitlines()[-1] for t in texts]
  assert last[0] == last[1] and last[0].startswith('preempted at step '), last
  return int(last[0].split()[3].rstrip(','))


@pytest.mark.slow
def test_a_preemption_signal_to_one_process_stops_both_at_the_same_step(shapes_data_dir,
                                                                        tmp_path):
  """SIGTERM reaches process 1 only: both save the same checkpoint and exit
  75, during training and while a resumed run is still compiling (before
  its first step); the rerun then gives the golden losses."""
  import test_golden
  from test_multihost import PREEMPTED, _checkpoints, resume_to_the_golden_losses
  method = PREEMPTED  # its only two-process stop and resume (test_multihost skips it)
  workdir = str(tmp_path / 'w')
  port = _port()
  procs = [_launch(method, workdir, shapes_data_dir, port, i) for i in range(2)]
  try:
    stopped = _preempt_process_1(procs, lambda outs: [s for s in _checkpoints(workdir) if s >= 2])
  finally:
    _reap(procs)
  assert 2 < stopped < test_golden.STEPS and _checkpoints(workdir)[-1] == stopped
  # The resumed run: the signal comes before its first step.
  port = _port()
  procs = [_launch(method, workdir, shapes_data_dir, port, i) for i in range(2)]
  try:
    again = _preempt_process_1(
        procs, lambda outs: outs[1].has(f'resumed from checkpoint {stopped}'))
  finally:
    _reap(procs)
  assert stopped < again <= stopped + 3 and _checkpoints(workdir)[-1] == again
  resume_to_the_golden_losses(method, workdir, shapes_data_dir, again)
