"""Runs `small_config` through ssl_jax.core.train.run in a fresh process, as
main.py does: used by the kill -9 / SIGTERM resume tests.

usage: python tests/_run_small.py WORKDIR DATA_DIR TOTAL_STEPS CHECKPOINT_EVERY
"""

import sys

import conftest  # sets the fake devices before jax is imported
from absl import logging

import main as cli
from ssl_jax.core import console


def main(workdir, data_dir, total_steps, every):
  config = conftest.small_config(**{'data.data_dir': data_dir,
                                    'total_steps': int(total_steps),
                                    'checkpoint.every': int(every)})
  logging.set_verbosity(logging.INFO)
  console.quiet_library_logs()
  cli.execute(config, workdir)  # main.py's own outcome -> exit status


if __name__ == '__main__':
  main(*sys.argv[1:])
