"""Every method across two processes, through main.py: two jax.distributed
processes on 127.0.0.1 (4 fake CPU devices each, collectives through gloo)
run the method's `tiny` config; one process is killed with SIGKILL after a
checkpoint, and the other must stop on its own within a bounded time (not a
hang: one line and status 75, or JAX's own abort); then both are rerun with
the same command and resume. Steps 1-20 must give the golden losses of one
process of 8 devices (tests/golden/losses.json, held to the same tolerance
as test_golden.py). PatchFormer's run is the preemption test's
(tests/test_peers.py), which ends the same way.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import test_golden
from conftest import COMPILE_FLAGS, ROOT

# PatchFormer's two processes stopped and resumed to its golden losses are
# tests/test_peers.py's preemption test (SIGTERM to one process where this
# file kills one): not run twice.
PREEMPTED = 'patchformer'
PEER_TIMEOUT = 20  # seconds (--peer_timeout): 2 cores shared by 4 processes
SURVIVOR_BOUND = 150  # seconds: JAX's own check (100 s) when the watch cannot run, + jitter


def _port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(method, workdir, data_dir, port, process_id, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{COMPILE_FLAGS} --xla_force_host_platform_device_count=4')
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), f'--config=configs/{method}.py:tiny',
       f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
       '--config.log_every=1', '--config.checkpoint.every=2',
       f'--peer_timeout={PEER_TIMEOUT}', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={process_id}', *extra],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)


def _checkpoints(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []


def _reap(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _why(out: str) -> str:
  """The lines of a process's output that say why it stopped."""
  keys = ('error', 'Error', 'Terminating', 'heartbeat', 'stopped', 'preempted', 'Fatal')
  return '\n'.join([line[:300] for line in out.splitlines() if any(k in line for k in keys)]
                   [-15:] + out.strip().splitlines()[-1:])


# The training loop's call of the compiled step.
_TRAIN_PY = os.path.join(ROOT, 'ssl_jax', 'core', 'train.py')
_STEP_CALL = 'state, metrics = compiled(state, next(batches))'
_GLOO_PEER_GONE = ('IoException', 'Connection reset by peer', 'Connection closed by peer',
                   'Socket closed', 'Broken pipe')


def _step_line() -> int:
  with open(_TRAIN_PY) as f:
    return next(n for n, line in enumerate(f, 1) if _STEP_CALL in line)


def _aborted_in_the_step(out: str) -> bool:
  """Whether Python's SIGABRT dump (faulthandler: every thread's frames,
  innermost first) shows the main thread inside the training step's call:
  the runtime ended the step whose collectives lost their peer."""
  if 'Fatal Python error: Aborted' not in out:
    return False
  blocks = re.split(r'\n(?=(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):)',
                    out)
  for block in blocks:
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', block)
    if frames and frames[-1][0] == os.path.join(ROOT, 'main.py') and frames[-1][2] == '<module>':
      ours = [(path, int(line)) for path, line, _ in frames if f'{os.sep}ssl_jax{os.sep}' in path]
      return bool(ours) and ours[0] == (_TRAIN_PY, _step_line())
  return False


def _abort_message(out: str) -> str:
  """The lines just before Python's SIGABRT dump: what the runtime said."""
  lines = out.split('Fatal Python error: Aborted')[0].strip().splitlines()
  return '\n'.join(line[:300] for line in lines[-12:])


def _assert_stopped_for_a_dead_peer(status, out):
  """Status 75 with ssl_jax.peers' one line; or an abort from below
  Python: JAX's own check when process 0 (the coordination service) died,
  'another task died'; or, on the CPU, the runtime ending the step whose
  gloo collective lost its peer's socket (gloo's message, or, without one,
  an abort raised while the main thread is in the step's call)."""
  if status == 75:
    last = out.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'rerun the same command on every process' in last, (
        _why(out))
  else:
    said = [s for s in ('another task died',) + _GLOO_PEER_GONE if s in out]
    assert status == -signal.SIGABRT and (said or _aborted_in_the_step(out)), (
        f'status {status}; what it said before stopping:\n{_abort_message(out)}\n'
        f'its lines that say why:\n{_why(out)}')


@pytest.mark.slow
@pytest.mark.parametrize('method', [m for m in test_golden.tiny_methods() if m != PREEMPTED])
def test_two_processes_killed_and_resumed_give_the_golden_losses(method, shapes_data_dir,
                                                                   tmp_path):
  workdir = str(tmp_path / 'w')
  # 1. Both processes start; process 1 is killed once checkpoint 4 is committed.
  port = _port()
  procs = [_launch(method, workdir, shapes_data_dir, port, i) for i in range(2)]
  try:
    deadline = time.time() + 600
    while not [s for s in _checkpoints(workdir) if s >= 4]:
      assert time.time() < deadline, 'no checkpoint 4 in time'
      for p in procs:
        assert p.poll() is None, p.stdout.read()
      time.sleep(0.05)
    procs[1].kill()
    killed = time.time()
    # 2. Process 0 stops by itself, soon, in one line, with status 75.
    try:
      out, _ = procs[0].communicate(timeout=SURVIVOR_BOUND)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process 0 still running {SURVIVOR_BOUND} s after process 1 was killed')
    _assert_stopped_for_a_dead_peer(procs[0].returncode, out)
    assert time.time() - killed < SURVIVOR_BOUND
  finally:
    _reap(procs)
  # 3. The same command on both processes resumes and runs to step 20.
  resumed_from = _checkpoints(workdir)[-1]
  assert 4 <= resumed_from < test_golden.STEPS
  outs = resume_to_the_golden_losses(method, workdir, shapes_data_dir, resumed_from)
  assert f'resumed from checkpoint {resumed_from}' in outs[0]
  assert ' | MFU ' in outs[0]  # the console line (the peak: the CPU's, measured)
  assert outs[0].strip().splitlines()[-1].startswith(f'stopped at step {test_golden.STEPS} ')


def resume_to_the_golden_losses(method, workdir, data_dir, resumed_from):
  """Reruns both processes from checkpoint `resumed_from` to step 20: both
  exit 0, metrics.jsonl holds each step once (from process 0 alone), with
  the golden losses. Returns the two processes' outputs."""
  with open(test_golden.GOLDEN) as f:
    golden = json.load(f)
  want = golden['losses'][method]
  port = _port()
  procs = [_launch(method, workdir, data_dir, port, i,
                   f'--stop_after={test_golden.STEPS - resumed_from}') for i in range(2)]
  try:
    outs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    _reap(procs)
  assert [p.returncode for p in procs] == [0, 0], [_why(o) for o in outs]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  losses = [r['loss'] for r in records if 'loss' in r]
  assert [r['step'] for r in records if 'loss' in r] == list(
      range(1, test_golden.STEPS + 1))  # each step once, from process 0 alone
  np.testing.assert_allclose(losses[0], want[0], rtol=test_golden.RTOL)
  rtol = max(test_golden.RTOL, test_golden.SPREADS * golden['measured_spread'][method])
  np.testing.assert_allclose(losses, want, rtol=rtol, err_msg=method)
  return outs


@pytest.mark.slow
def test_killing_the_coordinator_ends_the_other_process(shapes_data_dir, tmp_path):
  """Process 0 holds JAX's coordination service: when it dies, JAX itself
  ends the others at once (status 134, 'another task died'): bounded, and
  the rerun resumes as above."""
  workdir = str(tmp_path / 'w')
  port = _port()
  procs = [_launch('mae', workdir, shapes_data_dir, port, i) for i in range(2)]
  try:
    deadline = time.time() + 600
    while not _checkpoints(workdir):
      assert time.time() < deadline, 'no checkpoint in time'
      for p in procs:
        assert p.poll() is None, p.stdout.read()
      time.sleep(0.05)
    procs[0].kill()
    try:
      out, _ = procs[1].communicate(timeout=SURVIVOR_BOUND)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process 1 still running {SURVIVOR_BOUND} s after process 0 was killed')
    _assert_stopped_for_a_dead_peer(procs[1].returncode, out)
  finally:
    _reap(procs)
