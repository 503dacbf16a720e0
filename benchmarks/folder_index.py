"""How long opening a folder dataset takes: the first open (every file's
header read and checked, the index written) and later opens (the index
reused), next to listing the files alone.

  python benchmarks/folder_index.py [--files=100000] [--classes=1000]

Writes --files copies of one small PNG into a temporary ROOT/<class>/ tree
(and the index into a temporary $SSL_JAX_CACHE), then prints seconds per
open and per 100k files. ImageNet's train split has 1.28M files: scale the
per-100k figures (listing and stat costs grow linearly). Figures on a shared
machine are noisy; compare the ratios printed in one run.
"""

import argparse
import os
import shutil
import tempfile
import time


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--files', type=int, default=100_000)
  parser.add_argument('--classes', type=int, default=1000)
  args = parser.parse_args()
  from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
  print('produced by:', provenance.line(), flush=True)
  work = tempfile.mkdtemp(prefix='ssl_jax_folder_bench_')
  os.environ['SSL_JAX_CACHE'] = os.path.join(work, 'cache')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import numpy as np
  import tensorflow as tf

  from ssl_jax.data import folder, pipeline
  try:
    root = os.path.join(work, 'images')
    png = tf.io.encode_png(np.full((8, 8, 3), 128, np.uint8)).numpy()
    for c in range(args.classes):
      os.makedirs(os.path.join(root, f'class{c:04d}'))
    for i in range(args.files):
      with open(os.path.join(root, f'class{i % args.classes:04d}', f'{i:07d}.png'), 'wb') as f:
        f.write(png)

    def timed(fn):
      start = time.perf_counter()
      out = fn()
      return time.perf_counter() - start, out

    dirs = folder.split_dirs(root)
    listing_s, listing = timed(lambda: folder.list_split(
        'train', dirs['train'], folder.class_names(dirs)))
    first_s, source = timed(lambda: pipeline.make_source('folder', data_dir=root,
                                                         split='train'))
    again_s, again = timed(lambda: pipeline.make_source('folder', data_dir=root,
                                                        split='train'))
    assert source.num_examples == again.num_examples == len(listing) == args.files
    per = 1e5 / args.files
    print(f'{args.files} files in {args.classes} classes')
    print(f'listing only : {listing_s:6.2f} s ({listing_s * per:.2f} s per 100k files)')
    print(f'first open   : {first_s:6.2f} s ({first_s * per:.2f} s per 100k; '
          f'{first_s / listing_s:.1f}x listing): headers read, index written')
    print(f'second open  : {again_s:6.2f} s ({again_s * per:.2f} s per 100k; '
          f'{again_s / listing_s:.1f}x listing): index reused')
    print(f'index file   : {os.path.getsize(folder.index_path(root)) / 1e6:.1f} MB')
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
