"""Compares two folders written by benchmarks/record_runs.sh: every logged
value of every run (timings aside), and the probes' result files. Prints,
per run, whether it is bit-identical and the worst relative difference.

  python benchmarks/compare_runs.py /tmp/runs_before /tmp/runs_after
"""

import json
import os
import sys

TIMINGS = ('step_time', 'examples_per_sec', 'model_tflops_per_sec', 'hardware_tflops_per_sec', 'mfu', 'hfu')
RESULTS = ('layers.json', 'low_data.json', 'eval.json')


def records(folder):
  path = os.path.join(folder, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return [json.loads(line) for line in f]


def numbers(saved):
  """A result file without what produced it (commits, times differ)."""
  if isinstance(saved, dict):
    saved = {k: v for k, v in saved.items() if k != 'provenance'}
    if set(saved) == {'evaluations'}:  # eval.json; before provenance, only the list
      saved = saved['evaluations']
  return saved


def main(before, after):
  same = True
  for name in sorted(os.listdir(after)):
    if not os.path.isdir(os.path.join(before, name)):
      continue
    a = records(os.path.join(after, name)) or []
    b = records(os.path.join(before, name)) or []
    worst, exact = 0.0, len(a) == len(b)
    for ra, rb in zip(a, b):
      for key in (set(ra) | set(rb)) - set(TIMINGS):
        va, vb = ra.get(key), rb.get(key)
        if va != vb:
          exact = False
          if isinstance(va, float) and isinstance(vb, float):
            worst = max(worst, abs(va - vb) / max(abs(vb), 1e-12))
    for result in RESULTS:
      pa, pb = os.path.join(after, name, result), os.path.join(before, name, result)
      if os.path.exists(pa) and os.path.exists(pb):
        with open(pa) as fa, open(pb) as fb:
          exact = exact and numbers(json.load(fa)) == numbers(json.load(fb))
    same = same and exact
    print(f'{name}: {len(a)} / {len(b)} records, bit-identical={exact}, '
          f'worst relative difference {worst:.2e}')
  return 0 if same else 1


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:3]))
