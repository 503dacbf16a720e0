"""Runs `small_config` through ssl_jax.core.train.run in a fresh process, as
main.py does: used by the kill -9 / SIGTERM resume tests.

usage: python tests/_run_small.py WORKDIR DATA_DIR TOTAL_STEPS CHECKPOINT_EVERY
           [COORDINATOR NUM_PROCESSES PROCESS_ID]

With the last three arguments it is one process of a multi-process run
(jax.distributed on the CPU, collectives through gloo).
"""

import sys

import conftest  # sets the fake devices before jax is imported
import jax
from absl import logging

import main as cli
from ssl_jax.core import train


def main(workdir, data_dir, total_steps, every, coordinator=None, num_processes=None,
         process_id=None):
  if coordinator is not None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator, int(num_processes), int(process_id))
  config = conftest.small_config(**{'data.data_dir': data_dir,
                                    'total_steps': int(total_steps),
                                    'checkpoint.every': int(every)})
  logging.set_verbosity(logging.INFO)
  train.quiet_library_logs()
  cli.execute(config, workdir)  # main.py's own outcome -> exit status


if __name__ == '__main__':
  main(*sys.argv[1:])
