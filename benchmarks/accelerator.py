"""Each method's paper-sized train step on the accelerator JAX finds.

  python benchmarks/accelerator.py [--methods=mae,igpt] [--steps=20]
      [--attention=auto|xla|cudnn|splash] [--batch_per_device=N] [--out=F.json]

For every method, its paper's config (configs/METHOD.py, default variant)
in bfloat16 on a random batch (no dataset: the step's time does not depend
on the pixels), the batch `batch_per_device` x the devices found (each
method's default below, sized for one 80-140 GiB GPU or a TPU chip). It
prints one Markdown table: compile seconds, ms/step (median of `steps`
steps after two warm-up steps), examples/s, model and XLA TFLOP/s, MFU and
HFU against the peak table of ssl_jax.core.flops, and the step's device
memory (XLA's memory analysis of the compiled step).

--attention chooses the attention kernel of the methods that have the key
(ssl_jax.nn.attention): 'auto' takes cuDNN on GPU and splash on TPU, and
falls back to 'xla' where a model needs what the fused kernel lacks (a
per-example mask: RandSAC's segments under splash; attention dropout); the
table's `attention` column says what ran.

Public anchors, as MFU: a Flax ViT-B/16 reaches about 16% on H100 and 30%
on A100 in NVIDIA's published JAX numbers, about 27-37% for ViT-B/L on TPU
v4 in public JAX DeiT runs.

On a machine without an accelerator it says so and exits 0 (CPU figures
are benchmarks/patchformer_step.py's and benchmarks/compare.py's business).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

METHODS = ('mae', 'multitask_vit', 'randsac', 'patchformer', 'igpt', 'selfie', 'dv2')
# Images per device per step (DV2 counts views) for one large accelerator.
BATCH_PER_DEVICE = {'mae': 256, 'multitask_vit': 64, 'randsac': 128, 'patchformer': 64,
                    'igpt': 8, 'selfie': 64, 'dv2': 64}
ATTENTION = ('auto', 'xla', 'cudnn', 'splash')


def accelerator() -> str | None:
  """'gpu' or 'tpu' when JAX's default backend is one, else None."""
  backend = jax.default_backend()
  return backend if backend in ('gpu', 'tpu') else None


def paper_config(method: str, batch_per_device: int, attention: str, workdir: str,
                 variant: str | None = None):
  config = importlib.import_module(f'configs.{method}').get_config(variant)
  config.unlock()
  config.compute_dtype = 'bfloat16'
  config.batch_size = batch_per_device * jax.device_count()
  # An FSDP group sized for a pod (iGPT-L's 32) shrinks to what divides the
  # devices here; the sharding rule stays the paper's.
  config.sharding.fsdp_axis_size = math.gcd(config.sharding.fsdp_axis_size, jax.device_count())
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, config.total_steps - 1)
  if method == 'igpt':  # a palette of the right size: its values do not change the step's time
    path = os.path.join(workdir, 'palette.npy')
    k = config.igpt.vocab_size
    np.save(path, np.random.RandomState(0).uniform(-1, 1, (k, 3)).astype(np.float32))
    config.igpt.palette.path = path
  if 'model' in config[method] and 'attention' in config[method].model:
    config[method].model.attention = attention
  return config


def measure(config, steps: int) -> dict:
  """Compile time, step times and FLOPs of config's train step on a random batch."""
  from benchmarks.patchformer_step import random_batch  # pylint: disable=g-import-not-at-top
  from ssl_jax.core import assembly, flops  # pylint: disable=g-import-not-at-top
  trainer = assembly.assemble(config, data=False).trainer
  abstract = trainer.abstract_state()
  state = trainer.init_state(abstract)
  shapes = assembly.abstract_batch(config)
  t0 = time.perf_counter()
  compiled, hardware = trainer.compile_step(abstract, shapes)
  compile_s = time.perf_counter() - t0
  print(f'  compiled in {compile_s:.0f} s', file=sys.stderr, flush=True)
  batch = random_batch(config, trainer)
  t0 = time.perf_counter()
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  print(f'  two warm-up steps in {time.perf_counter() - t0:.1f} s', file=sys.stderr, flush=True)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  dt = statistics.median(times)
  model = trainer.model_flops()
  peak, source = flops.peak_flops(list(trainer.mesh.devices.flat), 'bfloat16')
  # The compiled step's own footprint (state, batch, outputs not aliased to
  # inputs, temporaries), not the allocator's peak: that one is the whole
  # process's, so it would carry an earlier method's peak into a later row.
  analysis = compiled.memory_analysis()
  memory = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
  return {'compile_s': compile_s, 'seconds_per_step': dt,
          'examples_per_sec': config.batch_size / dt, 'model_flops': model,
          'hardware_flops': hardware, 'peak': peak, 'peak_source': source,
          'peak_memory_bytes': memory, 'batch_size': config.batch_size,
          **flops.utilisation(model, hardware, dt, peak)}


def run_method(method, args, platform, workdir) -> dict:
  from ssl_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  batch = args.batch_per_device or BATCH_PER_DEVICE[method]
  wanted = args.attention
  if wanted == 'auto':
    wanted = {'gpu': 'cudnn', 'tpu': 'splash'}.get(platform, 'xla')
  tried = [wanted] + (['xla'] if args.attention == 'auto' and wanted != 'xla' else [])
  error = None
  for attention in tried:
    try:
      config = paper_config(method, batch, attention, workdir, args.variant)
      has_key = 'model' in config[method] and 'attention' in config[method].model
      result = measure(config, args.steps)
      return dict(result, method=method, attention=attention if has_key else 'xla (no key)')
    except (ConfigError, ValueError, NotImplementedError) as e:  # a fused kernel this model cannot use
      error = f'{type(e).__name__}: {str(e).splitlines()[0]}'
      print(f'{method}: attention={attention!r} refused ({error})', flush=True)
  return {'method': method, 'error': error}


def table(rows) -> str:
  head = ('| method | attention | batch | compile s | ms/step | examples/s | model TFLOP/s '
          '| XLA TFLOP/s | MFU | HFU | step memory GiB |')
  lines = [head, '|' + '---|' * 11]
  for r in rows:
    if 'error' in r:
      lines.append(f'| {r["method"]} | failed: {r["error"]} |' + ' |' * 9)
      continue
    pct = lambda k: f'{100 * r[k]:.1f}%' if k in r else 'n/a'  # noqa: E731
    tf = lambda k: f'{r[k]:.3g}' if k in r else 'n/a'  # noqa: E731
    lines.append(
        f'| {r["method"]} | {r["attention"]} | {r["batch_size"]} | {r["compile_s"]:.0f} '
        f'| {1e3 * r["seconds_per_step"]:.1f} | {r["examples_per_sec"]:.0f} '
        f'| {tf("model_tflops_per_sec")} | {tf("hardware_tflops_per_sec")} | {pct("mfu")} '
        f'| {pct("hfu")} | {r["peak_memory_bytes"] / 2**30:.2f} |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--attention', default='auto', choices=ATTENTION)
  parser.add_argument('--batch_per_device', type=int, default=None,
                      help='images per device per step (default: per method, see the module)')
  parser.add_argument('--out', default=None, help='also write the rows as JSON here')
  parser.add_argument('--variant', default=None,
                      help="every method's config variant instead of the paper's (e.g. tiny)")
  parser.add_argument('--cpu', action='store_true',
                      help='measure on the CPU anyway (to check this script; not a benchmark)')
  args = parser.parse_args(argv)
  methods = args.methods.split(',')
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    parser.error(f'--methods: unknown {unknown}; choose from {",".join(METHODS)}')
  if args.steps < 1:
    parser.error('--steps must be >= 1')
  platform = accelerator() or ('cpu' if args.cpu else None)
  if platform is None:
    print(f'no accelerator: JAX found only {jax.default_backend()} devices '
          f'({jax.devices()[0].device_kind}); nothing to measure here. On a GPU or TPU '
          'machine: python benchmarks/accelerator.py')
    return 0
  from ssl_jax.core import provenance  # pylint: disable=g-import-not-at-top
  print('produced by:', provenance.line(), flush=True)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}', flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for method in methods:
      rows.append(run_method(method, args, platform, workdir))
      print(table(rows[-1:]).splitlines()[-1], flush=True)
      if args.out:  # after every row: an interrupted run keeps what it measured
        with open(args.out, 'w') as f:
          json.dump(rows, f, indent=1)
  print(table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
