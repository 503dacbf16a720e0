"""One process of tests/test_peers.py: usage
python tests/_peers_fail.py PORT PROCESS_ID

Process 0 fails with status 3 while process 1 waits for it (peers.align):
process 0 says so and leaves (Watch.leave(3)); process 1 must stop with
status 3 and one line, at once, not after the wait's hour."""

import os
import sys

os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl_jax import peers  # noqa: E402


def main(port, process_id):
  peers.initialize(f'127.0.0.1:{port}', 2, int(process_id), timeout_s=10)
  watch = peers.Watch(10).start()
  if process_id == '0':
    watch.leave(3)
  peers.align('never reached by process 0')
  print('process 1 went on', flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
