r"""Pretrain, probe and fine-tune self-supervised image models.

  python main.py --config=configs/patchformer.py:tiny --workdir=/tmp/pf_tiny
  python main.py --config=configs/linear_probe.py:patchformer_tiny \
      --config.init.workdir=/tmp/pf_tiny --workdir=/tmp/pf_tiny_probe
  python main.py --config=configs/finetune.py:patchformer_tiny --sweep \
      --config.init.workdir=/tmp/pf_tiny --workdir=/tmp/pf_tiny_ft_sweep
  python main.py --config=configs/linear_probe.py:igpt_tiny --layer_sweep \
      --config.init.workdir=/tmp/igpt_tiny --workdir=/tmp/igpt_tiny_layers
  python main.py --config=configs/patchformer.py --workdir=gs://B/pf \
      --config.data.data_dir=gs://B/tensorflow_datasets --distributed

Overrides: --config.KEY=VALUE (e.g. --config.total_steps=500). Running the
same command again with the same --workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import re
import sys

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

flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with an unknown --config.KEY reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # how ml_collections rejects a key
    text = str(e).encode().decode('unicode_escape')  # ml_collections escapes it
    key = re.search(r"'(\w+)'", text)
    hint = re.search(r'Did you mean "(\w+)"', text)
    offending = [a.split('=')[0] for a in argv[1:]
                 if key and a.startswith('--config.') and key.group(1) in a.split('=')[0]]
    detail = (f'{offending[0] if offending else "--config"}: no such key'
              + (f' {key.group(1)!r}' if key else '')
              + (f' (did you mean {hint.group(1)!r}?)' if hint else ''))
    print(f'error: {detail}; configs are locked: the config file lists every key',
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # after flag parsing, so that --help stays fast
  if _COORDINATOR.value is not None:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()

  from ssl_jax.config import ConfigError
  from ssl_jax.core import checkpoint, feature_probe, sweep, train
  logging.set_verbosity(logging.INFO)
  train.quiet_library_logs()
  try:
    if sum([_SWEEP.value, _LAYER_SWEEP.value, _LOW_DATA.value]) > 1:
      raise ConfigError('pass at most one of --sweep, --layer_sweep, --low_data')
    if _SWEEP.value:
      sweep.run_sweep(_CONFIG.value, _WORKDIR.value)
    elif _LAYER_SWEEP.value or _LOW_DATA.value:
      feature_probe.run(_CONFIG.value, _WORKDIR.value,
                        'layers' if _LAYER_SWEEP.value else 'low_data')
    else:
      train.run(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, train.DataError) as e:  # a bad config, palette or dataset
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (checkpoint.CheckpointError, train.NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
