"""RandSAC's three architectures against the paper's Tables 10 and 11.

  python benchmarks/randsac.py [--steps 5] [--batch 64]

Prints, in one run:
1. Per architecture (two-stream, masked transformer, masked transformer with
   skips) and model size (ViT-T on CIFAR-10's 8x8 tokens, ViT-S on
   ImageNet-100's 14x14, ViT-B on ImageNet-1K's 12x12, with the variants'
   decoders): encoder and decoder parameters, and the forward cost of one
   image counted by XLA from the compiled computation, next to the paper's
   Table 10 (parameters) and Table 11 ("FLOPs"). XLA counts 2 FLOPs per
   multiply-add; the paper's figures match multiply-add counts (e.g. ViT-S
   at 196 tokens: 6.7 G multiply-adds), so the comparison column is XLA's
   FLOPs / 2. Square segments 16 -> 4 (the encoder and decoder each read
   all but one segment, as in Figure 4) and blobs 16 -> 4 (variable sizes:
   both read every token) are both shown (ViT-S: blobs only; 16 squares do
   not tile its 14x14 tokens).
2. The CIFAR-10 ViT-T train step on this machine, per architecture:
   examples/s and model FLOP/s as a fraction of the measured float32 matmul
   peak. Figures are noisy on a shared machine: compare ratios in one run.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.patchformer_step import matmul_peak, time_step  # noqa: E402
from configs import randsac  # noqa: E402
from ssl_jax.methods.randsac.method import RandSAC  # noqa: E402
from ssl_jax.nn.patches import patch_vectors  # noqa: E402

ARCHITECTURES = ('two_stream', 'masked', 'masked_skip')
SIZES = (('ViT-T', 'cifar10'), ('ViT-S', 'imagenet100'), ('ViT-B', ''))
# Table 10: (encoder, decoder) parameters; Table 11: forward "FLOPs".
PAPER_PARAMS = {('ViT-T', 'two_stream'): (7e6, 0), ('ViT-T', 'masked'): (5e6, 2e6),
                ('ViT-T', 'masked_skip'): (5e6, 2e6), ('ViT-S', 'two_stream'): (30e6, 0),
                ('ViT-S', 'masked'): (21e6, 9e6), ('ViT-S', 'masked_skip'): (21e6, 9e6)}
PAPER_FLOPS = {('ViT-T', 'two_stream'): 499.60e6, ('ViT-T', 'masked'): 483.82e6,
               ('ViT-T', 'masked_skip'): 484.26e6, ('ViT-S', 'two_stream'): 10.94e9,
               ('ViT-S', 'masked'): 6.73e9, ('ViT-S', 'masked_skip'): 6.77e9,
               ('ViT-B', 'two_stream'): 35.74e9, ('ViT-B', 'masked'): 21.25e9,
               ('ViT-B', 'masked_skip'): 21.49e9}
ENCODER = ('block', 'patch_embed', 'final_norm')


def config_for(variant: str, architecture: str, kind: str):
  c = randsac.get_config(variant)
  c.randsac.model.architecture = architecture
  c.randsac.segments.update(dict(kind=kind, counts=(16, 4)))
  return c


def params_and_flops(config) -> tuple[int, int, float]:
  """(encoder parameters, decoder parameters, forward FLOPs of one image)."""
  obj = RandSAC(config)
  s = config.data.image_size
  image = np.random.RandomState(0).rand(1, s, s, 3).astype(np.float32)
  params = jax.eval_shape(lambda: obj.init(jax.random.key(0), {'image': image}))
  enc = sum(int(np.prod(x.shape)) for k, v in params.items() if k.startswith(ENCODER)
            for x in jax.tree.leaves(v))
  dec = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) - enc

  def forward(p, images):
    ser = obj.serialise(jax.random.key(1), 1)
    return obj.forward(p, patch_vectors(images, obj.patch), ser)[0]

  compiled = jax.jit(forward).lower(params, image).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return enc, dec, float(analysis['flops'])


def _g(x: float) -> str:
  return f'{x / 1e9:.3f}G' if x >= 1e9 else f'{x / 1e6:.1f}M'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=64, help='CIFAR-10 ViT-T step batch')
  parser.add_argument('--sizes', default='ViT-T,ViT-S,ViT-B')
  args = parser.parse_args()
  from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
  print('produced by:', provenance.line(), flush=True)
  sizes = args.sizes.split(',')

  print('1. parameters (Table 10) and forward cost of one image (Table 11)')
  print(f'{"model":<7}{"architecture":<13}{"segments":<10}{"encoder":>9}{"decoder":>9}'
        f'{"paper enc/dec":>15}{"XLA FLOPs":>11}{"FLOPs/2":>10}{"paper":>10}{"ratio":>7}')
  for size, variant in SIZES:
    if size not in sizes:
      continue
    for arch in ARCHITECTURES:
      for kind in ('square', 'blob'):
        if kind == 'square' and size == 'ViT-S':
          continue  # 16 squares do not tile ImageNet-100's 14x14 tokens
        enc, dec, flops = params_and_flops(config_for(variant, arch, kind))
        paper = PAPER_PARAMS.get((size, arch))
        paper_params = f'{paper[0] / 1e6:.0f}M/{paper[1] / 1e6:.0f}M' if paper else '-'
        macs, paper_flops = flops / 2, PAPER_FLOPS[(size, arch)]
        print(f'{size:<7}{arch:<13}{kind + " 16-4":<10}{enc / 1e6:>8.2f}M{dec / 1e6:>8.2f}M'
              f'{paper_params:>15}{_g(flops):>11}{_g(macs):>10}{_g(paper_flops):>10}'
              f'{macs / paper_flops:>7.2f}')

  print()
  peak = matmul_peak()
  print(f'2. CIFAR-10 ViT-T train step, batch {args.batch}, square 16 -> 4; '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}; measured float32 matmul '
        f'peak {peak / 1e9:.1f} GFLOP/s')
  print(f'{"architecture":<13}{"ms/step":>9}{"ex/s":>8}{"GFLOP/step":>12}{"% peak":>8}')
  for arch in ARCHITECTURES:
    config = config_for('cifar10', arch, 'square')
    config.batch_size = args.batch
    config.eval.monitors = ()
    dt, flops = time_step(config, args.steps)
    print(f'{arch:<13}{dt * 1e3:>9.0f}{args.batch / dt:>8.1f}{flops / 1e9:>12.1f}'
          f'{100 * flops / dt / peak:>7.1f}%')


if __name__ == '__main__':
  main()
