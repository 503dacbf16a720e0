"""Linear probe, fine-tune and sweep runs from a pretraining checkpoint, on
the same loop: frozen backbones stay bit-identical, results land in the
workdir, a resumed fine-tune matches an uninterrupted one, and bad init
checkpoints fail before anything compiles."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import small_classifier_config

from ssl_jax import locking
from ssl_jax.core import assembly, sweep, train
from ssl_jax.core import validation
from ssl_jax.tasks import whitening as whitening_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate.evaluator import Evaluator, open_split


def _probe_config(reference, mode='linear', **overrides):
  config, ref_dir, _ = reference
  return small_classifier_config(mode, **{'data.data_dir': config.data.data_dir,
                                          'init.workdir': ref_dir, **overrides})


def _records(workdir, name='metrics.jsonl'):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.e2e
def test_linear_probe_keeps_the_pretrained_backbone_frozen(reference, tmp_path):
  config = _probe_config(reference, **{'classifier.whiten_examples': 48})
  result = train.run(config, str(tmp_path))
  pretrained = dict(reference[2].state.params['model'])
  del pretrained['decoder']  # section 2.2: removed
  for a, b in zip(jax.tree.leaves(result.state.params['backbone']),
                  jax.tree.leaves(pretrained), strict=True):
    np.testing.assert_array_equal(a, b)
  # The head whitens the pretrained features of the first 48 training images.
  trainer = assembly.Trainer(config, num_classes=10)
  evaluator = Evaluator(config, trainer.task, trainer.mesh, 10)
  source = pipeline.SubsetSource(open_split(config, 'train'), np.arange(48))
  features, _ = evaluator.features(result.state.params, source, 'attention_pool')
  mean, matrix = whitening_lib.whitening(features)
  head = result.state.params['head']
  np.testing.assert_allclose(head['feature_mean'], mean, rtol=1e-5, atol=1e-6)
  metric = np.asarray(head['whitening']) @ np.asarray(head['whitening']).T
  np.testing.assert_allclose(metric, matrix @ matrix.T, rtol=1e-3, atol=1e-3 * np.abs(metric).max())
  evaluated = json.load(open(tmp_path / 'eval.json'))['evaluations']
  assert [r['step'] for r in evaluated] == [config.total_steps]
  final = evaluated[-1]
  assert final['eval/examples'] == 96 and 0 <= final['eval/top1'] <= final['eval/top5'] <= 1
  assert final == dict(result.evaluation)
  table = (tmp_path / 'eval.md').read_text().splitlines()
  assert table[0].startswith('| step | eval/examples | eval/loss | eval/top1 (%) | eval/top5 (%)')
  assert _records(str(tmp_path))[-1]['eval/top1'] == final['eval/top1']  # and to TensorBoard


@pytest.mark.slow
@pytest.mark.e2e
def test_raw_pixel_probe_runs_through_the_same_loop(reference, tmp_path):
  config = _probe_config(reference, **{'init.workdir': None, 'total_steps': 4,
                                       'classifier.whiten': False})  # as pixels_tiny
  config.backbone = {'objective': 'pixels', 'data': {'image_size': 32}}
  config.classifier.representation = 'pixels'
  result = train.run(config, str(tmp_path))
  assert result.state.params['backbone'] == {}
  assert result.state.params['head']['classifier']['kernel'].shape == (32 * 32 * 3, 10)
  assert 0 <= result.evaluation['eval/top1'] <= 1


@pytest.mark.slow
@pytest.mark.e2e
def test_low_label_finetune_trains_the_backbone_and_resumes_exactly(reference, tmp_path):
  config = _probe_config(reference, 'finetune', **{'data.label_fraction': 0.1})
  whole = train.run(config, str(tmp_path / 'whole'))
  # The 10% subset: 200 of the 2000 training images, 20 per class.
  source = assembly.build_source(config)
  assert source.num_examples == 200
  assert np.bincount(source.labels()).tolist() == [20] * 10
  # Interrupted after 4 steps (a checkpoint), then resumed from it.
  parts = str(tmp_path / 'parts')
  first = train.run(config, parts, stop_after=4)
  assert first.last_step == 4
  second = train.run(config, parts)
  assert second.first_step == 4
  got = {r['step']: r['loss'] for r in _records(parts)}
  want = {r['step']: r['loss'] for r in _records(str(tmp_path / 'whole'))}
  assert got == want  # bit-identical, each step once
  pretrained = reference[2].state.params['model']['transformer']
  tuned = whole.state.params['backbone']['transformer']
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tuned),
                                                        jax.tree.leaves(pretrained)))
  assert second.evaluation['eval/top1'] == whole.evaluation['eval/top1']


@pytest.fixture
def no_compiling(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('compiled or initialised before rejecting the input')
  monkeypatch.setattr(assembly.Trainer, 'compile_step', fail)
  monkeypatch.setattr(assembly.Trainer, 'init_state', fail)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize('overrides, message', [
    ({'init.workdir': '/nonexistent/run'},
     "config.init.workdir='/nonexistent/run' does not exist: it must be the --workdir of a "
     'pretraining run'),
    ({'init.step': 7}, r'config.init.step=7 is not a checkpoint in .*; available: \[20, 25, 30\]'),
    ({'backbone.patchformer.model.width': 64},
     r'holds a different network than config.backbone: patchformer.model.width \(checkpoint: '
     r'32, config.backbone: 64\). Pass the pretraining values, e.g. '
     r'--config.backbone.patchformer.model.width=32'),
    ({'backbone.objective': 'pixels'},
     r"was written by objective 'patchformer', but config.backbone.objective='pixels'"),
    ({'classifier.representation': 'layer_7'},
     r"config.classifier.representation='layer_7' is not allowed: must be one of"),
])
def test_bad_init_inputs_fail_before_compiling(reference, tmp_path, no_compiling, overrides,
                                               message):
  config = _probe_config(reference, **overrides)
  if config.backbone.objective == 'pixels':
    config.classifier.representation = 'pixels'
  with pytest.raises(validation.ConfigError, match=message):
    train.run(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
  assert sorted(os.listdir(os.path.join(reference[1], 'checkpoints'))) == ['20', '25', '30']


@pytest.mark.slow
@pytest.mark.e2e
def test_workdir_without_checkpoints_is_rejected(reference, tmp_path, no_compiling):
  config = _probe_config(reference, **{'init.workdir': str(tmp_path)})
  with pytest.raises(validation.ConfigError, match='has no checkpoints/ directory'):
    train.run(config, str(tmp_path / 'w'))


@pytest.mark.slow
@pytest.mark.e2e
def test_sweep_runs_every_point_and_writes_one_table(reference, tmp_path):
  config = _probe_config(reference, **{'total_steps': 4, 'checkpoint.every': 4})
  config.sweep.update(dict(batch_size=(8, 16), lr=(1e-3,), epochs=None))
  rows = sweep.run_sweep(config, str(tmp_path))
  assert [(r['batch_size'], r['lr'], r['steps']) for r in rows] == [(8, 1e-3, 4), (16, 1e-3, 4)]
  saved = json.load(open(tmp_path / 'sweep.json'))
  assert saved['rows'] == rows and saved['provenance']['lock']
  table = (tmp_path / 'sweep.md').read_text().splitlines()
  assert table[0].startswith('| batch_size | lr | steps | eval/top1 (%) | eval/top5 (%) | best')
  assert len(table) == 6 and sum(line.count('| * |') for line in table) == 1
  assert table[-1].startswith('Produced by: commit ')
  # Finished points are read back, not retrained.
  assert sweep.run_sweep(config, str(tmp_path)) == rows
  # The sweep holds its workdir (each point holds its own): a second one is refused.
  assert not os.path.exists(tmp_path / locking.LOCK_DIR)  # released
  with locking.Lease(str(tmp_path)):
    with pytest.raises(locking.Busy, match='is in use by another run'):
      sweep.run_sweep(config, str(tmp_path))
  # With epochs, each point's length covers the same number of examples.
  config.sweep.epochs = 1.0
  assert [sweep.point_config(config, b, 1e-3, 2000).total_steps for b in (16, 32)] == [125, 63]
