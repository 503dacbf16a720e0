"""What produced a result: the record written into every result file."""

import hashlib
import os
import subprocess

import jax

from conftest import ROOT

from ssl_jax.core import metrics, provenance


def test_record_names_the_commit_lock_software_and_devices():
  r = provenance.record()
  head = subprocess.run(['git', '-C', ROOT, 'rev-parse', 'HEAD'], capture_output=True,
                        text=True).stdout.strip()
  assert r['commit'] == (head or None)
  with open(os.path.join(ROOT, 'requirements.lock'), 'rb') as f:
    assert r['lock'] == hashlib.sha256(f.read()).hexdigest()[:16]
  assert (r['jax'], r['devices'], r['processes']) == (jax.__version__, '8 x cpu', 1)
  line = provenance.line(dict(r, commit='0123456789abcdef', dirty=True, start_step=40))
  assert line.startswith(f'commit 0123456789ab (dirty), requirements.lock {r["lock"]}, '
                         f'jax {jax.__version__}, jaxlib ')
  assert line.endswith(' from step 40') and '8 x cpu (1 process)' in line


def test_eval_results_keep_every_invocation_and_read_the_old_format(tmp_path):
  first = dict(provenance.record(), start_step=0)
  results = metrics.EvalResults(str(tmp_path), provenance=first)
  results.add(10, {'eval/top1': 0.5})
  results.add(20, {'eval/top1': 0.6})
  resumed = dict(first, start_step=10, commit='another')
  again = metrics.EvalResults(str(tmp_path), resume_step=10, provenance=resumed)
  again.add(20, {'eval/top1': 0.7})
  assert again.provenance == [first, resumed]
  assert [r['eval/top1'] for r in again.records] == [0.5, 0.7]
  footer = (tmp_path / 'eval.md').read_text().splitlines()[-3:]
  assert footer == ['Produced by: ' + provenance.line(first), '',
                    'Produced by: ' + provenance.line(resumed)]
  (tmp_path / 'eval.json').write_text('[{"step": 10, "eval/top1": 0.5}]')  # before provenance
  old = metrics.EvalResults(str(tmp_path), resume_step=10)
  assert old.records == [{'step': 10, 'eval/top1': 0.5}] and old.provenance == []
