"""ssl_jax.peers across two real processes (jax.distributed on 127.0.0.1,
collectives through gloo, whose waits give up after 30 s)."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_multihost import _port

SKEW_S = 40  # longer than gloo's 30 s


@pytest.mark.slow
def test_a_process_arriving_late_does_not_end_the_run():
  """Process 1 reaches the first call of a compiled collective 40 s after
  process 0 (as after a persistent-cache miss) and process 0 is 5 s late to
  a `share`: both wait for each other through the coordination service, the
  watch (10 s) does not mistake the waiting for a death, and the
  collective gives the sum over both processes."""
  port = _port()
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', '_peers_skew.py'),
                             str(port), str(i), str(SKEW_S)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
  for out in outs:  # 4 devices with 1.0 and 4 with 2.0
    assert 'sum 12.0 12.0 | shared from process 0' in out, out[-2000:]
