"""FLOPs of a train step and the peak of the chips it runs on: MFU and HFU.

Two counts of one step, both for the global batch, 2 FLOPs per multiply-add:

  model FLOPs     the matmuls and convolutions of the step as written: its
                  forward pass, the backward pass of what trains, nothing
                  recomputed. Counted from the step's jaxpr (the traced
                  program, before XLA) rather than from a formula written
                  per method: one counter covers every method, probe and
                  fine-tune and cannot drift from the code it describes
                  (tests hold it to a hand formula of a ViT and to XLA's own
                  count of the compiled matmuls). It is taken on the
                  reference program: rematerialisation off (every `remat`
                  key of the config False) and the reference attention, so
                  that neither recomputation nor a fused kernel changes it.
                  Elementwise work (norms, activations, softmax, the
                  optimizer) is not counted, as in PaLM's definition of MFU.
  hardware FLOPs  what XLA's cost analysis of the compiled step reports:
                  everything the chips execute, recomputation and
                  elementwise work included.

MFU = model FLOP/s / peak and HFU = hardware FLOP/s / peak, with peak the
dense matmul throughput of all the run's devices in the compute dtype, from
`PEAK_TFLOPS` (keyed by the device kind JAX reports) or, on CPU, from a
matmul measured once per machine and cached (`cpu_peak`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import time
from typing import Any, Sequence

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from ssl_jax.data import folder

# -- counting ---------------------------------------------------------------------


def _dot_general_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> float:
  # Each output element takes (kernel elements / output features)
  # multiply-adds, whatever the feature or batch grouping.
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
  return 2.0 * math.prod(out) * math.prod(rhs) / out_features


def _sub_jaxprs(params) -> list[Any]:
  found = []
  for value in params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jax_core.ClosedJaxpr):
        found.append(v.jaxpr)
      elif isinstance(v, jax_core.Jaxpr):
        found.append(v)
  return found


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs of a (closed) jaxpr, 2 per multiply-add:
  scans count length times, a while loop its body once (its trip count is
  unknown when tracing: train steps have none), and a cond its cheapest
  branch: conds in a train step gate occasional work that is not the
  model's (the multi-task ViT's gradient diagnostics, every N steps)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_general_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'scan':
      total += eqn.params['length'] * jaxpr_flops(eqn.params['jaxpr'])
    elif name == 'cond':
      total += min(jaxpr_flops(b) for b in eqn.params['branches'])
    else:  # pjit, remat, custom_jvp / custom_vjp calls, while, shard_map ...
      total += sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
  return total


def reference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every `remat` key False and every `attention` key the
  reference implementation: the program model FLOPs are counted on."""
  config = ml_collections.ConfigDict(config.to_dict())

  def visit(block):
    for key in list(block.keys()):
      value = block[key]
      if isinstance(value, ml_collections.ConfigDict):
        visit(value)
      elif key == 'remat':
        block[key] = False
      elif key == 'attention' and isinstance(value, str):
        block[key] = 'xla'
  visit(config)
  return config


# -- XLA's count of the compiled matmuls (for tests and benchmarks) --------------------

_DEF = re.compile(r'%([\w.\-]+) = [a-z0-9]+\[([0-9,]*)\]\S* ([\w\-]+)\((.*)$')


def hlo_matmul_flops(hlo_text: str) -> float:
  """Matmul and convolution FLOPs of an optimised HLO module (`compiled.as_text()`),
  read off its `dot` and `convolution` instructions: XLA's count of the
  matmuls, rematerialised ones included, per device; each instruction counts
  once (a loop's body once, as in XLA's cost analysis)."""
  shapes, ops = {}, []
  for line in hlo_text.splitlines():
    m = _DEF.search(line)
    if not m:
      continue
    name, dims, op, rest = m.groups()
    shapes[name] = [int(d) for d in dims.split(',') if d]
    if op in ('dot', 'convolution'):
      ops.append((shapes[name], op, rest))
  total = 0.0
  for out, op, rest in ops:
    operands = [shapes[n] for n in re.findall(r'%([\w.\-]+)', rest.split(')', 1)[0])]
    if op == 'dot':
      contract = re.search(r'lhs_contracting_dims=\{([0-9,]*)\}', rest)
      dims = [int(d) for d in contract.group(1).split(',') if d] if contract else []
      total += 2.0 * math.prod(out) * math.prod(operands[0][d] for d in dims)
    else:
      labels = re.search(r'dim_labels=[^_]+_([^-]+)->', rest).group(1)
      rhs = operands[1]
      total += 2.0 * math.prod(out) * math.prod(rhs) / rhs[labels.index('o')]
  return total


# -- peaks -------------------------------------------------------------------------------

# Dense matmul TFLOP/s of one JAX device, by compute dtype, from the vendors'
# published figures. A TPU v2/v3 chip shows up as two devices (one per
# TensorCore), later TPUs as one. On TPU a float32 matmul runs at the
# default precision as one bfloat16 pass, so both dtypes have the bfloat16
# peak; on NVIDIA GPUs XLA runs float32 matmuls in TF32 (Ampere and later).
# Matched as substrings of `device.device_kind`, first match wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ('TPU v2', {'bfloat16': 22.5, 'float32': 22.5}),
    ('TPU v3', {'bfloat16': 61.5, 'float32': 61.5}),
    ('TPU v4', {'bfloat16': 275.0, 'float32': 275.0}),
    ('TPU v5 lite', {'bfloat16': 197.0, 'float32': 197.0}),   # v5e
    ('TPU v5e', {'bfloat16': 197.0, 'float32': 197.0}),
    ('TPU v5', {'bfloat16': 459.0, 'float32': 459.0}),        # v5p
    ('TPU v6 lite', {'bfloat16': 918.0, 'float32': 918.0}),   # v6e (Trillium)
    ('TPU v6e', {'bfloat16': 918.0, 'float32': 918.0}),
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 378.0}),
    ('H100', {'bfloat16': 989.4, 'float32': 494.7}),          # SXM
    ('H200', {'bfloat16': 989.4, 'float32': 494.7}),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
)


def table_peak(device_kind: str, dtype: str) -> float | None:
  """FLOP/s of one device of this kind from PEAK_TFLOPS (None: not listed)."""
  for pattern, peaks in PEAK_TFLOPS:
    if pattern in device_kind:
      return peaks[dtype] * 1e12
  return None


def measure_matmul_peak(dtype: str = 'float32', sizes=(1024, 2048), repeats: int = 5,
                        device=None) -> float:
  """Best matmul FLOP/s of `device` over a few square sizes."""
  device = device or jax.local_devices()[0]
  best = 0.0
  for n in sizes:
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype)), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    for _ in range(repeats):
      t = time.perf_counter()
      f(a).block_until_ready()
      best = max(best, 2 * n**3 / (time.perf_counter() - t))
  return best


def _cache_path() -> epath.Path:
  return epath.Path(folder.cache_dir()) / 'cpu_peak.json'


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


@functools.cache
def cpu_peak(dtype: str = 'float32') -> float:
  """FLOP/s of a matmul on this host's CPU: measured once per (CPU model,
  cores, dtype, jax version) and cached in $SSL_JAX_CACHE/cpu_peak.json
  (ssl_jax.data.folder.cache_dir(), by default ~/.cache/ssl_jax)
  (delete it to measure again, e.g. after measuring on a busy machine). All
  the host's fake CPU devices share these cores: this is the host's peak."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  key = f'{_cpu_name()} | {cores} cores | {dtype} | jax {jax.__version__}'
  path = _cache_path()
  try:
    cached = json.loads(path.read_text())
  except (OSError, ValueError):
    cached = {}
  if key not in cached:
    cached[key] = measure_matmul_peak(dtype)
    logging.info('measured the CPU matmul peak (%s): %.1f GFLOP/s, cached in %s',
                 key, cached[key] / 1e9, path)
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.parent / f'{path.name}.{os.getpid()}.tmp'
      tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
      tmp.rename(path)
    except OSError as e:
      logging.warning('could not cache the CPU peak in %s: %s', path, e)
  return cached[key]


def peak_flops(devices: Sequence[Any], dtype: str) -> tuple[float | None, str]:
  """(FLOP/s of all `devices` together in `dtype`, where the figure comes
  from); None where the device kind is not in PEAK_TFLOPS."""
  kinds = {d.device_kind for d in devices}
  kind = sorted(kinds)[0]
  if len(kinds) > 1:
    logging.warning('devices of several kinds %s: peak of %s used', sorted(kinds), kind)
  if devices[0].platform == 'cpu':
    hosts = len({d.process_index for d in devices})
    return cpu_peak(dtype) * hosts, f'measured CPU matmul x {hosts} host(s)'
  one = table_peak(kind, dtype)
  if one is None:
    return None, f'{kind!r} is not in ssl_jax.core.flops.PEAK_TFLOPS'
  return one * len(devices), f'{kind} {one / 1e12:g} TFLOP/s x {len(devices)} devices'


# Hardware FLOPs are the model's plus recomputation and elementwise work, so
# an XLA count under this fraction of the model's matmuls is no hardware
# count: the cost analysis did not see the matrix work. Measured on an H200
# (jax 0.11.2): XLA counted 7% and 24% of two paper configs' model FLOPs
# (the GEMMs run as library calls there; README, Benchmarks). On the CPU the
# two agree to within a few percent, either way (0.97x on a tiny config).
MIN_HARDWARE_TO_MODEL = 0.5


def hardware_count(model_flops: float | None, hardware_flops: float | None) -> float | None:
  """hardware_flops, or None where it is under MIN_HARDWARE_TO_MODEL x
  model_flops (an undercount; see there)."""
  if hardware_flops and model_flops and hardware_flops < MIN_HARDWARE_TO_MODEL * model_flops:
    return None
  return hardware_flops


def utilisation(model_flops: float | None, hardware_flops: float | None,
                seconds_per_step: float, peak: float | None) -> dict[str, float]:
  """The log's throughput scalars of one step time (no hardware ones where
  XLA's count is an undercount: hardware_count)."""
  hardware_flops = hardware_count(model_flops, hardware_flops)
  out = {}
  if model_flops:
    out['model_tflops_per_sec'] = model_flops / seconds_per_step / 1e12
  if hardware_flops:
    out['hardware_tflops_per_sec'] = hardware_flops / seconds_per_step / 1e12
  if peak:
    if model_flops:
      out['mfu'] = model_flops / seconds_per_step / peak
    if hardware_flops:
      out['hfu'] = hardware_flops / seconds_per_step / peak
  return out


def describe(model_flops: float | None, hardware_flops: float | None,
             peak: float | None, source: str) -> str:
  fmt = lambda f: 'n/a' if not f else f'{f / 1e9:.3g} GFLOP'  # noqa: E731
  peak_text = 'unknown' if not peak else f'{peak / 1e12:.4g} TFLOP/s'
  xla = fmt(hardware_flops)
  if hardware_flops and hardware_count(model_flops, hardware_flops) is None:
    xla += (f' (under {MIN_HARDWARE_TO_MODEL:g}x the model\'s: its cost analysis misses the '
            'matrix work here, so no hardware FLOP/s or HFU)')
  return f'FLOPs per step: model {fmt(model_flops)}, XLA {xla}; peak {peak_text} ({source})'


def compiled_flops(compiled, num_devices: int) -> float | None:
  """Hardware FLOPs of one step for all devices: XLA's cost analysis of the
  compiled computation (recomputation and elementwise work included)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  # XLA reports the cost of the per-device (SPMD-partitioned) program.
  return float(flops) * num_devices if flops else None
