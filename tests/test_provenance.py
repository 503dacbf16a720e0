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


def test_probe_results_say_which_augmentation_trained_them(tmp_path):
  from conftest import small_classifier_config, small_config
  from ssl_jax.core import train
  assert train.augmentation_summary(small_config()) == ''  # pretraining: the method's views
  probe = small_classifier_config('linear')
  said = train.augmentation_summary(probe)
  assert 'random horizontal flip (data.flip=false: none)' in said
  probe.data.flip = False
  probe.data.min_area = 1.0
  assert train.augmentation_summary(probe) == 'whole images; no flip'
  tuned = small_classifier_config('finetune', **{'classifier.mixup': 0.8,
                                                 'data.randaugment': (2, 9, 0.5)})
  said = train.augmentation_summary(tuned)
  assert 'RandAugment 2 ops, magnitude 9 +- 0.5 (data.randaugment=())' in said
  assert 'mixup 0.8 (classifier.mixup=0)' in said
  results = metrics.EvalResults(str(tmp_path), augmentation='whole images; no flip')
  results.add(5, {'eval/top1': 0.5})
  assert 'Training augmentation: whole images; no flip' in (tmp_path / 'eval.md').read_text()
