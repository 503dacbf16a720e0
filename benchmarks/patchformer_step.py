"""PatchFormer train-step throughput against this machine's matmul peak.

  python benchmarks/patchformer_step.py [--steps 10] [--sizes tiny,mid]

Prints, in one run: the measured float32 matmul peak (best of several square
sizes), then for each size the compiled train step's examples/s, model
TFLOP/s (XLA cost analysis of the compiled step / measured step time), that
as a fraction of the measured peak, and the input pipeline's time per batch
relative to the step's (below 1: the pipeline never makes the step wait).
Figures are noisy on a shared machine: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import patchformer  # noqa: E402
from ssl_jax.core import assembly, flops  # noqa: E402
from ssl_jax.data import pipeline  # noqa: E402


TARGET_FRACTION = 0.40


def matmul_peak() -> float:
  """Best float32 matmul FLOP/s over a few square sizes (measured now, not cached)."""
  return flops.measure_matmul_peak('float32', sizes=(1024, 2048, 3072))


def config_for(size: str, data_dir: str):
  c = patchformer.get_config('tiny')
  c.data.data_dir = data_dir
  if size == 'mid':
    # The paper's patches, patch encoder and decoder (16x16 patches cropped
    # to 14x14, the full ResNet-41, 8x8 targets) on 96x96 images (a 6x6
    # grid, 16 visible and 20 masked patches), a 4-layer 512-wide transformer.
    c.data.image_size = 96
    c.batch_size = 16
    c.patchformer.patch_size = 16
    c.patchformer.jitter_crop = 14
    c.patchformer.target.update(dict(crop=16, size=8))
    c.patchformer.model.update(dict(stage_sizes=(3, 4, 6), resnet_width=64,
                                    stem_width=64, width=512, num_layers=4,
                                    heads=8, pool_heads=8, decoder_width=256))
  return c


def time_step(config, steps: int):
  """(seconds per step, model FLOPs per step) of config's train step."""
  dt, flops, _ = time_compiled_step(config, steps)
  return dt, flops


def time_compiled_step(config, steps: int):
  """(seconds per step, model FLOPs per step, the compiled step) on a random
  batch, after two warm-up steps."""
  trainer = assembly.assemble(config, data=False).trainer
  abstract = trainer.abstract_state()
  state = trainer.init_state(abstract)
  compiled, flops = trainer.compile_step(abstract, assembly.abstract_batch(config))
  batch = random_batch(config, trainer)
  for _ in range(2):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  return (time.perf_counter() - t) / steps, flops, compiled


def random_batch(config, trainer):
  """A random global batch of config's shapes ([b, S, S, 3], or [b, V, S, S, 3]
  with views; b counts images), placed as the step takes it."""
  shapes = assembly.abstract_batch(config)
  b = shapes['image'].shape[0]
  return jax.device_put({
      'image': jnp.asarray(np.random.RandomState(0).rand(*shapes['image'].shape), jnp.float32),
      'label': jnp.zeros((b,), jnp.int32), 'valid': jnp.ones((b,), bool)},
      trainer.batch_sharding)


def time_pipeline(config, batches: int) -> float:
  source = assembly.build_source(config)
  ds = pipeline.make_dataset(
      source, seed=0, global_batch_size=config.batch_size, start_step=0,
      image_size=config.data.image_size, train=True, min_area=config.data.min_area)
  return 1.0 / pipeline.measure_throughput(ds, batches)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--sizes', default='tiny,mid')
  parser.add_argument('--data_dir', default=None,
                      help='tfds data_dir for ssl_jax_shapes (default: a temp dir)')
  args = parser.parse_args()
  from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
  print('produced by:', provenance.line(), flush=True)
  data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), 'ssl_jax_tfds')
  peak = matmul_peak()
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}')
  print(f'measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s')
  header = (f'{"size":<6}{"batch":>6}{"ms/step":>10}{"ex/s":>9}{"GFLOP/step":>12}'
            f'{"TFLOP/s":>9}{"% peak":>8}{"input ms/batch":>16}{"input/step":>12}')
  print(header)
  for size in args.sizes.split(','):
    config = config_for(size, data_dir)
    dt, flops = time_step(config, args.steps)
    input_dt = time_pipeline(config, max(args.steps, 10))
    print(f'{size:<6}{config.batch_size:>6}{dt * 1e3:>10.1f}{config.batch_size / dt:>9.1f}'
          f'{flops / 1e9:>12.2f}{flops / dt / 1e12:>9.4f}{100 * flops / dt / peak:>7.1f}%'
          f'{input_dt * 1e3:>16.1f}{input_dt / dt:>12.2f}')
    if size == 'mid':
      met = flops / dt >= TARGET_FRACTION * peak
      print(f'target: >= {TARGET_FRACTION:.0%} of peak at the mid size: '
            f'{"met" if met else "NOT met"}')


if __name__ == '__main__':
  main()
