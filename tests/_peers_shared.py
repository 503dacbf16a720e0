"""One process of tests/test_peers.py: usage
python tests/_peers_shared.py PORT PROCESS_ID LATE_S

Process 0 fails inside peers.first_on_process_zero (its error is shared)
and leaves with status 2; process 1 reaches that call LATE_S seconds
later, after process 0 has published its failure: it must still end with process 0's own
error, not with 'process 0 failed', and with the same status."""

import os
import sys
import time

os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl_jax import peers  # noqa: E402


def main(port, process_id, late_s):
  peers.initialize(f'127.0.0.1:{port}', 2, int(process_id), timeout_s=10)
  watch = peers.Watch(10).start()
  if process_id == '1':
    time.sleep(float(late_s))

  def fail():
    raise ValueError('the dataset is not prepared')
  try:
    peers.first_on_process_zero(fail, 'dataset ready', (ValueError,))
  except ValueError as e:
    print(f'error: {e}', flush=True)
    watch.leave(2)
  print(f'process {process_id} went on', flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
