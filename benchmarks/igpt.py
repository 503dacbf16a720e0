"""iGPT train steps on this machine, with and without rematerialisation.

  python benchmarks/igpt.py [--steps 3] [--s_batch 8] [--s_size 16]

Prints, for configs/igpt.py:tiny and an iGPT-S-shaped model (24 layers, 512
wide, 8 heads; the context shortened to s_size x s_size tokens so that a
CPU can run it), each with igpt.model.remat off and on:
  ms/step, examples/s, model FLOPs per step (XLA's count of the compiled
  step), the fraction of the measured float32 matmul peak, and the step's
  peak memory as XLA plans it (arguments + outputs - aliased + temporaries:
  with the state donated, the state counts once).
A random palette stands in for a fitted one (the speed does not depend on
it). Figures are noisy on a shared machine: compare ratios in one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.patchformer_step import matmul_peak, time_compiled_step  # noqa: E402
from configs import igpt  # noqa: E402
from ssl_jax.methods.igpt import palette  # noqa: E402


def config_for(shape: str, remat: bool, palette_path: str, batch: int, size: int):
  c = igpt.get_config('tiny' if shape == 'tiny' else 's')
  c.igpt.palette.path = palette_path
  c.igpt.model.remat = remat
  c.eval.monitors = ()
  c.online_probe.representation = ''
  if shape != 'tiny':
    c.data.image_size = size
    c.batch_size = batch
  return c


def measure(config, steps: int) -> dict[str, float]:
  dt, flops, compiled = time_compiled_step(config, steps)
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return {'dt': dt, 'flops': flops, 'peak': peak, 'temp': memory.temp_size_in_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--s_batch', type=int, default=8)
  parser.add_argument('--s_size', type=int, default=16, help='iGPT-S image side (tokens: side^2)')
  args = parser.parse_args()
  from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
  print('produced by:', provenance.line(), flush=True)
  path = os.path.join(tempfile.mkdtemp(), 'palette.npy')
  palette.save(path, np.random.default_rng(0).uniform(-1, 1, (512, 3)), {'random': True})
  peak = matmul_peak()
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind}; measured float32 matmul '
        f'peak {peak / 1e9:.1f} GFLOP/s')
  print(f'{"model":<28}{"remat":>6}{"batch":>6}{"ms/step":>9}{"ex/s":>8}{"GFLOP/step":>12}'
        f'{"% peak":>8}{"peak MiB":>10}{"temp MiB":>10}')
  for shape in ('tiny', 's'):
    for remat in (False, True):
      config = config_for(shape, remat, path, args.s_batch, args.s_size)
      r = measure(config, args.steps)
      m = config.igpt.model
      name = (f'{"tiny" if shape == "tiny" else "iGPT-S"} {m.num_layers}x{m.width} '
              f'ctx {config.data.image_size ** 2}')
      print(f'{name:<28}{"on" if remat else "off":>6}{config.batch_size:>6}'
            f'{r["dt"] * 1e3:>9.0f}{config.batch_size / r["dt"]:>8.1f}'
            f'{r["flops"] / 1e9:>12.1f}{100 * r["flops"] / r["dt"] / peak:>7.1f}%'
            f'{r["peak"] / 2**20:>10.0f}{r["temp"] / 2**20:>10.0f}')


if __name__ == '__main__':
  main()
