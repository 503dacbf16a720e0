"""One process of tests/test_peers.py: usage
python tests/_peers_skew.py PORT PROCESS_ID SKEW_S

Two processes (4 CPU devices each) meet through ssl_jax.peers while
process 1 arrives SKEW_S seconds late at the first call of a compiled
collective (a slower compile) and process 0 is 5 s late to `share`, with the peer watch running at a 10 s timeout, then run a
collective. Prints one line of results."""

import os
import sys
import time

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from ssl_jax import peers  # noqa: E402


def main(port, process_id, skew):
  peers.initialize(f'127.0.0.1:{port}', 2, int(process_id), timeout_s=10)
  watch = peers.Watch(10).start()
  late = jax.process_index() == 1
  mesh = Mesh(np.array(jax.devices()), ('d',))
  x = jax.make_array_from_process_local_data(
      NamedSharding(mesh, P('d')), np.full((4,), jax.process_index() + 1, np.float32))
  total = peers.together(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P())), 'sum')
  if late:
    time.sleep(float(skew))
  first = float(total(x))  # process 0 waits for process 1 before the collective
  if not late:
    time.sleep(5)
  shared = peers.share('word', 'from process 0' if not late else 'ignored')
  peers.align('end')
  print(f'sum {first} {float(total(x))} | shared {shared}', flush=True)
  watch.finish()


if __name__ == '__main__':
  main(*sys.argv[1:])
