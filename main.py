r"""Pretrain, probe and fine-tune self-supervised image models.

  python main.py --config=configs/patchformer.py:tiny --workdir=/tmp/pf_tiny
  python main.py --config=configs/linear_probe.py:patchformer_tiny \
      --config.init.workdir=/tmp/pf_tiny --workdir=/tmp/pf_tiny_probe
  python main.py --config=configs/finetune.py:patchformer_tiny --sweep \
      --config.init.workdir=/tmp/pf_tiny --workdir=/tmp/pf_tiny_ft_sweep
  python main.py --config=configs/linear_probe.py:patchformer_tiny --seeds=3 \
      --config.init.workdir=/tmp/pf_tiny --workdir=/tmp/pf_tiny_probe_seeds
  python main.py --config=configs/linear_probe.py:igpt_tiny --layer_sweep \
      --config.init.workdir=/tmp/igpt_tiny --workdir=/tmp/igpt_tiny_layers
  python main.py --config=configs/patchformer.py --workdir=gs://B/pf \
      --config.data.data_dir=gs://B/tensorflow_datasets --distributed

Overrides: --config.KEY=VALUE (e.g. --config.total_steps=500). Running the
same command again with the same --workdir resumes from its latest checkpoint.
Exit status: 0 finished; 75 preempted after a checkpoint (or the workdir is
held by another live run, or another process of a multi-process run
stopped: --peer_timeout): run the same command again; 2 a bad flag, config,
dataset or --workdir (one line on stderr); 1 any other failure.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import traceback

# TensorFlow (the input pipeline) writes C++ notices to stderr when it is
# imported, which would break the one-line errors of exit statuses 2 and 75;
# off unless the environment sets them (ssl_jax turns oneDNN off, whose
# notice is printed whatever this level is).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with a variant: configs/FILE.py:VARIANT.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where metrics and checkpoints go.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() (auto-detected on Cloud TPU pods).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process runs '
    'outside a TPU pod (with --num_processes and --process_id).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\' index.')
_SWEEP = flags.DEFINE_bool(
    'sweep', False, 'Run the grid of config.sweep (batch sizes x learning rates), one run '
    'per point under --workdir, and write one table: sweep.md / sweep.json.')

_LAYER_SWEEP = flags.DEFINE_bool(
    'layer_sweep', False, 'With a linear-probe config: a logistic-regression probe of every '
    'layer\'s frozen features; writes layers.md / layers.json / layers.png.')
_LOW_DATA = flags.DEFINE_bool(
    'low_data', False, 'With a linear-probe config: logistic regression on a few labels per '
    'class (feature_probe.shots) over seeds; writes low_data.md / low_data.json.')

_SEEDS = flags.DEFINE_integer(
    'seeds', None, 'Run the config with N seeds (config.seed, config.seed + 1, ...) into '
    '--workdir/seed{S}, and write the mean, std and n of their numbers: seeds.md / '
    'seeds.json. A probe whose --config.init.workdir holds {seed} reads the pretraining '
    'run of the same seed.')

_STOP_AFTER = flags.DEFINE_integer(
    'stop_after', None, 'Stop after this many steps of this invocation, with a checkpoint '
    '(exit status 0; the same command continues the run): a time slice of a long run.')
_PEER_TIMEOUT = flags.DEFINE_float(
    'peer_timeout', 60.0, 'Multi-process runs: seconds without a heartbeat from another '
    'process after which this one stops too, with one line and status 75 (JAX\'s own '
    'check, twice as long and at least 100 s, is the backstop).')
_LOCK_TIMEOUT = flags.DEFINE_float(
    'lock_timeout', None, 'Seconds after which the heartbeat of a run holding --workdir is '
    'stale, so that its workdir is taken over (default: $SSL_JAX_LOCK_TIMEOUT or 60).')

flags.mark_flags_as_required(['config', 'workdir'])


# Exit statuses (README, "Reliability"): what a scheduler or supervisor reads.
EXIT_FINISHED = 0     # the run reached total_steps (or the table is written)
EXIT_FAILED = 1       # anything else: a damaged checkpoint, NaN, a bug (traceback)
EXIT_USER_ERROR = 2   # a bad flag, config, dataset or --workdir: one line on stderr
EXIT_TEMPORARY = 75   # EX_TEMPFAIL: preempted after a checkpoint, or the workdir is
                      # held by another live run: run the same command again


class StoppedTogether(SystemExit):
  """An exit every process of the run makes alike (a preemption: they
  agreed on the step), so none of them ends the others."""


def fail(message: str, status: int, exit_as: type[SystemExit] = SystemExit) -> None:
  """One line on stderr, then exit."""
  print(' '.join(message.split()), file=sys.stderr)
  raise exit_as(status)


def _flag_error(e: Exception) -> str:
  """absl's and ml_collections' flag errors as one line."""
  text = str(e)
  flag = re.match(r'flag (--[\w.]+)=(.*?): ', text)
  name = flag.group(1) if flag else None
  if 'must have a value other than None' in text:
    return f'{name} is required' + (' (where checkpoints and metrics go)'
                                    if name == '--workdir' else '')
  if 'Error whilst parsing config file' in text:  # the config file raised
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f'{name}={flag.group(2)}: {re.sub(r"^[A-Za-z_.]*Error: ", "", last)}'
  if flag:
    value, reason = flag.group(2), text[flag.end():]
    expected = ('a boolean (true or false)' if 'Non-boolean' in reason else
                'an integer' if 'int()' in reason else
                'a number' if 'float' in reason else None)
    if expected:
      return f'{name}={value}: expected {expected}'
    return f'{name}={value}: {reason}'
  return text.splitlines()[0] if text else type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with every flag or config-file error reported in one
  line and exit status 2."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.get('objective')  # a config file that did not load raises here
    return rest
  except (AttributeError, KeyError) as e:  # how ml_collections rejects a key
    text = str(e).encode().decode('unicode_escape')  # ml_collections escapes it
    key = re.search(r"'(\w+)'", text)
    hint = re.search(r'Did you mean "(\w+)"', text)
    offending = [a.split('=')[0] for a in argv[1:]
                 if key and a.startswith('--config.') and key.group(1) in a.split('=')[0]]
    detail = (f'{offending[0] if offending else "--config"}: no such key'
              + (f' {key.group(1)!r}' if key else '')
              + (f' (did you mean {hint.group(1)!r}?)' if hint else ''))
    fail(f'error: {detail}; configs are locked: the config file lists every key',
         EXIT_USER_ERROR)
  except flags.Error as e:
    fail(f'error: {_flag_error(e)}', EXIT_USER_ERROR)
  except Exception as e:  # noqa: BLE001 (ml_collections could not load the config file)
    given = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), '?')
    path = given.split(':', 1)[0]
    if os.path.exists(path):  # it exists but does not load: say why
      reason = re.sub(r'\s+', ' ', str(e.__cause__ or e)).strip()
      fail(f'error: --config={given}: the config file does not load: '
           f'{type(e.__cause__ or e).__name__}: {reason}', EXIT_USER_ERROR)
    available = sorted(os.path.basename(p) for p in glob.glob(os.path.join(
        os.path.dirname(path) or '.', '*.py')) if not p.endswith('__init__.py'))
    fail(f'error: --config={given}: no config file {path!r}'
         + (f'; files there: {", ".join(available)}' if available else ''), EXIT_USER_ERROR)
  return []  # not reached


def check_config(config, mode: str) -> None:
  """Refuses a bad config (exit status 2, one line) before TensorFlow loads
  with the input pipeline: in the seconds JAX takes to load, not the ten or
  so that both take. Each mode validates the config again, as it does when
  called as a library."""
  import jax
  from ssl_jax.config import ConfigError
  from ssl_jax.core import validation  # imports no TensorFlow (test_config checks it)
  processes = 1 if mode in ('layers', 'low_data') else jax.process_count()  # as each mode does
  try:
    validation.validate(config, jax.device_count(), processes)
  except ConfigError as e:
    fail(f'error: {e}', EXIT_USER_ERROR)


def execute(config, workdir: str, mode: str = 'train', num_seeds: int | None = None,
            stop_after: int | None = None) -> None:
  """Runs `mode` ('train', 'sweep', 'layers', 'low_data', 'seeds' with
  `num_seeds`; 'train' with `stop_after`, see --stop_after) and exits with
  the status of the outcome (returns only when it finished or stopped as
  asked)."""
  from ssl_jax import locking, peers
  from ssl_jax.config import ConfigError
  from ssl_jax.core import checkpoint, feature_probe, seeds, sweep, train
  try:
    if mode == 'seeds':
      seeds.run_seeds(config, workdir, num_seeds)
    elif mode == 'sweep':
      sweep.run_sweep(config, workdir)
    elif mode in ('layers', 'low_data'):
      feature_probe.run(config, workdir, mode)
    else:
      result = train.run(config, workdir, stop_after=stop_after)
      if result.preempted:
        raise train.Preempted(result.last_step)
      if result.last_step < config.total_steps:
        print(f'stopped at step {result.last_step} of {config.total_steps} '
              f'(--stop_after={stop_after}): the same command continues the run',
              file=sys.stderr, flush=True)
  except train.Preempted as e:  # every process stops at the same step (train.Preemption)
    fail(str(e), EXIT_TEMPORARY, StoppedTogether)
  except locking.Busy as e:
    fail(f'error: {e}', EXIT_TEMPORARY)
  except (ConfigError, train.DataError, locking.Unwritable) as e:  # fix the command
    fail(f'error: {e}', EXIT_USER_ERROR)
  except (checkpoint.CheckpointError, train.NonFiniteLossError, locking.Lost) as e:
    fail(f'error: {e}', EXIT_FAILED)
  except Exception as e:  # noqa: BLE001
    if peers.is_peer_failure(e):  # exits with EXIT_TEMPORARY
      peers.stop_for_peer_failure(e)
    raise


def mode_flags() -> int:
  """How many of --sweep, --layer_sweep, --low_data, --seeds were given."""
  return sum([_SWEEP.value, _LAYER_SWEEP.value, _LOW_DATA.value, _SEEDS.value is not None])


def main(argv):
  if len(argv) > 1:
    fail(f'error: unexpected arguments: {" ".join(argv[1:])} (overrides are '
         '--config.KEY=VALUE)', EXIT_USER_ERROR)
  if not _WORKDIR.value:
    fail('error: --workdir is empty: give the folder where checkpoints and metrics go',
         EXIT_USER_ERROR)
  if mode_flags() > 1:
    fail('error: pass at most one of --sweep, --layer_sweep, --low_data, --seeds',
         EXIT_USER_ERROR)
  if _STOP_AFTER.value is not None and (_STOP_AFTER.value < 1 or mode_flags()):
    fail(f'error: --stop_after={_STOP_AFTER.value}: must be an integer >= 1, for a '
         'training run (not with --sweep, --layer_sweep, --low_data or --seeds)',
         EXIT_USER_ERROR)
  if _SEEDS.value is not None and _SEEDS.value < 1:
    fail(f'error: --seeds={_SEEDS.value}: must be an integer >= 1', EXIT_USER_ERROR)
  if _LOCK_TIMEOUT.value is not None and not _LOCK_TIMEOUT.value > 0:
    fail(f'error: --lock_timeout={_LOCK_TIMEOUT.value}: must be > 0 seconds', EXIT_USER_ERROR)
  if not _PEER_TIMEOUT.value > 0:
    fail(f'error: --peer_timeout={_PEER_TIMEOUT.value}: must be > 0 seconds', EXIT_USER_ERROR)
  from ssl_jax.core import console
  console.quiet_library_logs()  # before JAX starts its backends: their INFO records are not ours
  from ssl_jax import peers  # after flag parsing, so that --help stays fast
  if _COORDINATOR.value is not None:
    peers.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                     timeout_s=_PEER_TIMEOUT.value)
  elif _DISTRIBUTED.value:
    peers.initialize(timeout_s=_PEER_TIMEOUT.value)
  watch = peers.Watch(_PEER_TIMEOUT.value).start()

  from ssl_jax import locking
  if _LOCK_TIMEOUT.value is not None:
    locking.DEFAULT_TIMEOUT_S = _LOCK_TIMEOUT.value
  mode = ('sweep' if _SWEEP.value else 'layers' if _LAYER_SWEEP.value else
          'low_data' if _LOW_DATA.value else 'seeds' if _SEEDS.value else 'train')
  try:
    check_config(_CONFIG.value, mode)
    logging.set_verbosity(logging.INFO)
    execute(_CONFIG.value, _WORKDIR.value, mode, _SEEDS.value, _STOP_AFTER.value)
  except BaseException as e:
    code = e.code if isinstance(e, SystemExit) else 1
    status = code if isinstance(code, int) else int(code is not None)
    if status == 0 or watch.count == 1 or isinstance(e, StoppedTogether):
      watch.finish()
      raise
    if not isinstance(e, SystemExit):  # a bug: its traceback, as Python would print it
      traceback.print_exc()
    watch.leave(status)  # the other processes stop with this status
  watch.finish()


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
