#!/usr/bin/env python3
r"""Keeps one main.py run going on a Cloud TPU slice until it finishes.

  python launch/supervise.py --name=patchformer --spot --queued \
      --workdir=gs://BUCKET/workdirs/patchformer -- \
      --config=configs/patchformer.py --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Each attempt: makes sure the slice exists and is READY (launch/create.sh;
a preempted, suspended or failed slice is deleted first with
launch/delete.sh, and a queued resource waits in line for capacity), installs
the repository on it when it is new (launch/setup.sh), then runs the command
on every worker (launch/run.sh). While it runs, the slice's state is polled
every --poll_seconds: a whole VM can vanish without any process exiting.

What happens next, by run.sh's exit status (main.py's documented ones):
  0          the run reached its final step: stop, exit 0.
  75         preempted after a checkpoint, or the workdir still held by the
             last attempt's run: run again (the same command resumes from
             the last checkpoint and takes the workdir's lock over).
  255 / the slice preempted or gone while running: recreate, run again.
  2          a bad flag, config or dataset: stop (running again repeats it).
  1          a failure (a traceback in the worker logs): stop.
It gives up after --max_attempts attempts (exit 75: rerunning it resumes).

Only the standard library: the supervisor runs on any machine with gcloud
(it calls it through the launch/ scripts, and $GCLOUD when set).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FINISHED, FAILED, USER_ERROR, RESUMABLE, LOST = 0, 1, 2, 75, 255
GONE = ('NOT_FOUND', 'PREEMPTED', 'TERMINATED', 'FAILED', 'SUSPENDED')


def log(message: str) -> None:
  print(f'supervise.py [{time.strftime("%H:%M:%S")}]: {message}', file=sys.stderr, flush=True)


class Slice:
  """The slice's launch/ scripts, with the flags that name and place it."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.place = [f'--name={args.name}', f'--zone={args.zone}'] + (
        [f'--project={args.project}'] if args.project else [])

  def script(self, name: str, *flags: str, wait: bool = True, quiet: bool = False):
    command = ['bash', os.path.join(HERE, name), *self.place, *flags]
    if not wait:
      return subprocess.Popen(command)
    out = subprocess.DEVNULL if quiet else None
    return subprocess.call(command, stdout=out, stderr=out)

  def state(self) -> str:
    gcloud = os.environ.get('GCLOUD', 'gcloud')
    command = [gcloud, 'compute', 'tpus', 'tpu-vm', 'describe', self.args.name,
               '--format=value(state)', f'--zone={self.args.zone}']
    if self.args.project:
      command.append(f'--project={self.args.project}')
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
      return 'NOT_FOUND'
    return done.stdout.strip()

  def create(self) -> int:
    a = self.args
    flags = [f'--accelerator={a.accelerator}', f'--version={a.version}',
             f'--timeout={a.create_timeout}']
    flags += ['--spot'] if a.spot else ['--reserved'] if a.reserved else []
    flags += ['--queued'] if a.queued else []
    return self.script('create.sh', *flags)

  def delete(self) -> int:
    return self.script('delete.sh', *(['--queued'] if self.args.queued else []))

  def setup(self) -> int:
    a = self.args
    flags = ([f'--repo={a.repo}'] if a.repo else []) + (
        [f'--commit={a.commit}'] if a.commit else [])
    return self.script('setup.sh', *flags)


def ready(s: Slice, fresh_needed: bool) -> bool | None:
  """Brings the slice to READY with the repository installed: True when it
  is ready, False when this attempt failed; creates it when missing."""
  state = s.state()
  if state != 'NOT_FOUND' and state in GONE:
    log(f'{s.args.name} is {state}: deleting it to create it again')
    s.delete()
    state = 'NOT_FOUND'
  fresh = False
  if state == 'NOT_FOUND':
    if s.args.queued:  # a suspended queued resource outlives its VM: clear it first
      s.script('delete.sh', '--queued', quiet=True)
    log(f'creating {s.args.name} ({s.args.accelerator})')
    if s.create() != 0:
      return False
    fresh = True
  else:
    while state != 'READY':
      if state in GONE:
        return False
      log(f'{s.args.name} is {state}; waiting for READY')
      time.sleep(s.args.poll_seconds)
      state = s.state()
  if fresh or fresh_needed:
    log(f'installing the repository on {s.args.name}')
    if s.setup() != 0:
      return False
  return True


def attempt(s: Slice, run_flags: list[str]) -> int:
  """One run of the command: its exit status, LOST when the slice went away."""
  a = s.args
  proc = s.script('run.sh', f'--workdir={a.workdir}', f'--sync_seconds={a.sync_seconds}',
                  '--', *run_flags, wait=False)
  while proc.poll() is None:
    time.sleep(a.poll_seconds)
    if proc.poll() is not None:
      break
    state = s.state()
    if state != 'READY':
      log(f'{a.name} is {state} while running: stopping this attempt')
      proc.terminate()
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      return LOST
  return proc.returncode


def supervise(args: argparse.Namespace, run_flags: list[str]) -> int:
  s = Slice(args)
  for number in range(1, args.max_attempts + 1):
    log(f'attempt {number} of {args.max_attempts}')
    if not ready(s, fresh_needed=number == 1 and not args.skip_setup):
      log('the slice could not be made ready')
      time.sleep(args.poll_seconds)
      continue
    status = attempt(s, run_flags)
    if status == FINISHED:
      log('the run finished')
      return FINISHED
    if status in (FAILED, USER_ERROR):
      log(f'the run failed with status {status}: stopping (see the worker logs in '
          f'{args.workdir}/logs; running again would repeat it)')
      return status
    log(f'the run stopped with status {status} (preempted or lost): resuming')
  log(f'gave up after {args.max_attempts} attempts; rerunning this command resumes the run')
  return RESUMABLE


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  if '--' not in argv:
    flags, run_flags = argv, []
  else:
    split = argv.index('--')
    flags, run_flags = argv[:split], argv[split + 1:]
  p = argparse.ArgumentParser(
      prog='launch/supervise.py', description=__doc__.split('\n\n')[0],
      epilog='main.py flags go after --; see the module docstring for the exit statuses.')
  p.add_argument('--name', default=os.environ.get('SSL_JAX_TPU_NAME', 'ssl-jax'))
  p.add_argument('--zone', default=os.environ.get('SSL_JAX_TPU_ZONE', 'europe-west4-a'))
  p.add_argument('--project', default=os.environ.get('SSL_JAX_TPU_PROJECT', ''))
  p.add_argument('--accelerator', default='v3-32')
  p.add_argument('--version', default='tpu-ubuntu2204-base')
  pricing = p.add_mutually_exclusive_group()
  pricing.add_argument('--spot', action='store_true')
  pricing.add_argument('--reserved', action='store_true')
  p.add_argument('--queued', action='store_true', help='create through a queued resource')
  p.add_argument('--repo', default='', help='launch/setup.sh --repo (default: its own)')
  p.add_argument('--commit', default='', help='launch/setup.sh --commit (default: its own)')
  p.add_argument('--skip_setup', action='store_true',
                 help='the slice, if it exists, already has the repository installed')
  p.add_argument('--workdir', required=True, help='gs://... (run.sh --workdir)')
  p.add_argument('--max_attempts', type=int, default=10)
  p.add_argument('--poll_seconds', type=float, default=60.0)
  p.add_argument('--sync_seconds', type=int, default=60)
  p.add_argument('--create_timeout', type=int, default=3600)
  args = p.parse_args(flags)
  if not args.workdir.startswith('gs://'):
    p.error(f'--workdir={args.workdir}: a gs:// directory every worker can reach')
  if args.max_attempts < 1:
    p.error('--max_attempts must be >= 1')
  if not run_flags:
    p.error('no main.py flags after -- (at least --config=...)')
  return args, run_flags


def main() -> int:
  args, run_flags = parse(sys.argv[1:])
  return supervise(args, run_flags)


if __name__ == '__main__':
  sys.exit(main())
