"""Records tests/golden/losses.json: steps 1-20 of every method's tiny run on
8 fake devices (as the test runs them), and the spread against 1 device that
sets the test's tolerance. A method whose 1- and 8-device losses differ by
more than MAX_SPREAD (relative) is not recorded: the number of devices must
not change what a run computes, beyond the order of its sums, and the
end-to-end tests rely on this check instead of running 1 device each time.

  python tests/golden/record.py [--methods=patchformer,randsac]
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import conftest  # noqa: E402,F401  (8 fake devices, before jax is imported)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import test_golden  # noqa: E402

# 6.5x PatchFormer's spread (1.5e-4: its patch encoder normalises nothing);
# every other method's is below 1e-6.
MAX_SPREAD = 1e-3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--methods', default=','.join(test_golden.tiny_methods()))
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  from ssl_jax.data import shapes
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='ssl_jax_golden_tfds_')
  shapes.prepare(data_dir)
  out = {'losses': {}, 'measured_spread': {}}
  if os.path.exists(test_golden.GOLDEN):
    with open(test_golden.GOLDEN) as f:
      out = json.load(f)
  for method in args.methods.split(','):
    eight = test_golden.tiny_losses(method, data_dir, tempfile.mkdtemp())
    one = test_golden.tiny_losses(method, data_dir, tempfile.mkdtemp(),
                                  devices=jax.devices()[:1])
    spread = float(np.max(np.abs(np.asarray(one) - eight) / np.abs(eight)))
    if spread > MAX_SPREAD:
      sys.exit(f'{method}: 1 and 8 devices differ by {spread:.2e} (relative) > {MAX_SPREAD:g}: '
               f'a computation depends on the number of devices; nothing recorded')
    out['losses'][method] = eight
    out['measured_spread'][method] = spread
    print(f'{method}: {eight[0]:.6f} -> {eight[-1]:.6f}; 1 vs 8 devices: {spread:.2e}')
  out['versions'] = {m: __import__(m).__version__ for m in ('jax', 'flax', 'optax')}
  with open(test_golden.GOLDEN, 'w') as f:
    json.dump(out, f, indent=1)
    f.write('\n')


if __name__ == '__main__':
  main()
