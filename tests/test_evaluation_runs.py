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
from ssl_jax.core import assembly, seeds, sweep, train
from ssl_jax.core import checkpoint as ckpt_lib
from ssl_jax.core import validation
from ssl_jax.tasks import whitening as whitening_lib
from ssl_jax.data import pipeline, splits
from ssl_jax.evaluate.evaluator import Evaluator, open_split


def _probe_config(reference, mode='linear', **overrides):
  config, ref_dir, _ = reference
  return small_classifier_config(mode, **{'data.data_dir': config.data.data_dir,
                                          'init.workdir': ref_dir, **overrides})


def _first_features(config, params, n):
  """`config.classifier.representation`'s features under `params` of the
  first `n` training images outside the held-out ones, in evaluation views:
  the images a head's whitening is fitted to."""
  trainer = assembly.Trainer(config, num_classes=10)
  evaluator = Evaluator(config, trainer.task, trainer.mesh, 10)
  held = assembly.build_source(config).held_out.ids  # never read by the whitening
  source = pipeline.SubsetSource(open_split(config, 'train'),
                                 splits.remaining_ids(2000, held)[:n])
  return evaluator.features(params, source, config.classifier.representation)[0]


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
  assert config.classifier.representation == 'attention_pool'
  mean, matrix = whitening_lib.whitening(_first_features(config, result.state.params, 48))
  head = result.state.params['head']
  np.testing.assert_allclose(head['feature_mean'], mean, rtol=1e-5, atol=1e-6)
  metric = np.asarray(head['whitening']) @ np.asarray(head['whitening']).T
  np.testing.assert_allclose(metric, matrix @ matrix.T, rtol=1e-3, atol=1e-3 * np.abs(metric).max())
  evaluated = json.load(open(tmp_path / 'eval.json'))['evaluations']
  assert [r['step'] for r in evaluated] == [config.total_steps]
  final = evaluated[-1]
  assert final['eval/examples'] == 96 and 0 <= final['eval/top1'] <= final['eval/top5'] <= 1
  assert final['val/examples'] == 100 and final['selected_step'] == config.total_steps
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
  # With the head's per-feature standardisation (Selfie's and DV2's tiny
  # recipe): fitted once to the starting backbone, never refitted on resume.
  config = _probe_config(reference, 'finetune', **{
      'data.label_fraction': 0.1, 'classifier.whiten': True,
      'classifier.whiten_kind': 'per_feature', 'classifier.whiten_examples': 48})
  whole = train.run(config, str(tmp_path / 'whole'))
  # The 10% subset: 190 of the 1900 training images left after the 100 held
  # out (10 per class), 19 per class, none of them held out.
  source = assembly.build_source(config)
  assert source.num_examples == 190
  assert np.bincount(source.labels()).tolist() == [19] * 10
  assert not set(source.ids) & set(source.held_out.ids)
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
  # The standardisation is the pretrained features' (the first 48 training
  # images outside the held-out ones, evaluation views), unchanged by training.
  start = dict(whole.state.params, backbone={
      k: v for k, v in reference[2].state.params['model'].items() if k != 'decoder'})
  mean, matrix = whitening_lib.per_feature(_first_features(config, start, 48))
  for head in (whole.state.params['head'], second.state.params['head']):
    np.testing.assert_allclose(head['feature_mean'], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head['whitening'], matrix, rtol=1e-5)


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
def test_sweep_chooses_on_held_out_examples_and_reads_the_test_split_once(
    reference, tmp_path, split_reads):
  config = _probe_config(reference, **{'total_steps': 4, 'checkpoint.every': 4})
  config.sweep.update(dict(batch_size=(8, 16), lr=(1e-3,), epochs=None))
  rows = sweep.run_sweep(config, str(tmp_path))
  assert [(r['batch_size'], r['lr'], r['steps']) for r in rows] == [(8, 1e-3, 4), (16, 1e-3, 4)]
  # Whitening features of training images, one held-out pass per point, and
  # eval.split once, last, for the chosen point only.
  assert [r for r in split_reads.reads if r != 'train'] == ['held_out', 'held_out', 'test[:96]']
  chosen = max(rows, key=lambda r: r['val/top1'])
  assert [('eval/top1' in r) for r in rows] == [r is chosen for r in rows]
  saved = json.load(open(tmp_path / 'sweep.json'))
  assert saved['rows'] == rows and saved['provenance']['lock']
  assert saved['chosen'] == rows.index(chosen) and saved['reported_on'].startswith('test[:96]')
  assert saved['selected_on'].startswith('100 examples held out of train')
  table = (tmp_path / 'sweep.md').read_text().splitlines()
  assert table[0].startswith('| batch_size | lr | steps | val/top1 (%) | val/top5 (%) | chosen')
  assert sum(line.count('| * |') for line in table[:4]) == 1
  assert table[5].startswith('Chosen on: 100 examples held out of train')
  assert table[6].startswith(f'Reported on test[:96] (once, for the chosen point): batch '
                             f'{chosen["batch_size"]}')
  assert table[-1].startswith('Produced by: commit ')
  # The chosen point's own eval.json holds the reported numbers.
  name = sweep.point_name(chosen['batch_size'], chosen['lr'])
  final = json.load(open(tmp_path / name / 'eval.json'))['evaluations'][-1]
  assert final['eval/top1'] == chosen['eval/top1']
  # Finished points and the report are read back, not recomputed.
  reads = len(split_reads.reads)
  assert sweep.run_sweep(config, str(tmp_path)) == rows
  assert len(split_reads.reads) == reads
  # The sweep holds its workdir (each point holds its own): a second one is refused.
  assert not os.path.exists(tmp_path / locking.LOCK_DIR)  # released
  with locking.Lease(str(tmp_path)):
    with pytest.raises(locking.Busy, match='is in use by another run'):
      sweep.run_sweep(config, str(tmp_path))
  config.data.held_out_examples = 0
  with pytest.raises(validation.ConfigError, match='held_out_examples must be > 0'):
    sweep.run_sweep(config, str(tmp_path / 'none'))
  # With epochs, each point's length covers the same number of examples.
  config.sweep.epochs = 1.0
  assert [sweep.point_config(config, b, 1e-3, 2000).total_steps for b in (16, 32)] == [125, 63]


@pytest.mark.slow
@pytest.mark.e2e
def test_early_stopping_reports_the_best_held_out_step_and_reads_the_test_split_once(
    reference, tmp_path, split_reads, monkeypatch):
  # Held-out top-1 falling at every evaluation: the best is the first (step 2).
  falling = iter([0.9, 0.8, 0.7, 0.6])
  select = Evaluator.select
  monkeypatch.setattr(Evaluator, 'select', lambda *a, **k: dict(
      select(*a, **k), **{'val/top1': next(falling)}))
  config = _probe_config(reference, 'finetune', **{'eval.every': 2, 'eval.select': 'best'})
  first = train.run(config, str(tmp_path), stop_after=5)  # preempted after step 5
  assert first.last_step == 5 and sorted(os.listdir(tmp_path / 'best')) == ['2']
  result = train.run(config, str(tmp_path))  # resumes: step 2 stays the best
  records = json.load(open(tmp_path / 'eval.json'))['evaluations']
  assert [r['step'] for r in records] == [2, 4, 6, 8]
  assert split_reads.reads == ['held_out'] * 4 + ['test[:96]']
  assert not any(k.startswith('eval/') for r in records[:-1] for k in r)
  final = records[-1]
  assert final['selected_step'] == 2 == result.evaluation['selected_step']
  assert final['selected_val/top1'] == 0.9 and final['val/top1'] == 0.6
  assert sorted(os.listdir(tmp_path / 'best')) == ['2']  # parameters only, one step
  # The reported numbers are those of step 2's parameters.
  run_ = assembly.assemble(config, restored=True)
  abstract = run_.trainer.abstract_state()
  with ckpt_lib.Checkpointer(str(tmp_path), keep=None, read_only=True,
                             subdir='best') as checkpointer:
    kept = checkpointer.restore_state(2, {'params': abstract.params,
                                          'method_state': abstract.method_state})
  assert run_.evaluator.report(kept['params'], kept['method_state'])['eval/top1'] == (
      final['eval/top1'])


@pytest.mark.parametrize('overrides, message', [
    ({'eval.every': 2, 'data.held_out_examples': 0},
     r'config.eval.every=2 is not allowed with data.held_out_examples=0: evaluations during '
     'training read the held-out examples'),
    ({'eval.select': 'best'}, r"config.eval.select='best' \(early stopping\) needs held-out"),
    ({'eval.select': 'first'}, r"config.eval.select='first' is not allowed: must be one of "
                               "'last', 'best'"),
    ({'data.held_out_examples': -1}, r'config.data.held_out_examples=-1 is not allowed'),
])
def test_selection_settings_that_would_read_the_reported_split_are_refused(overrides, message):
  config = small_classifier_config('finetune', **overrides)
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config, 1)


@pytest.mark.slow
@pytest.mark.e2e
def test_seeds_run_each_seed_and_report_mean_std_and_n(reference, tmp_path):
  config = _probe_config(reference, **{'total_steps': 4, 'checkpoint.every': 4, 'seed': 3,
                                       'classifier.whiten_examples': 48})
  saved = seeds.run_seeds(config, str(tmp_path), 2)
  assert [r['seed'] for r in saved['runs']] == [3, 4]
  assert sorted(os.listdir(tmp_path)) == ['seed3', 'seed4', 'seeds.json', 'seeds.md']
  top1 = [r['eval/top1'] for r in saved['runs']]
  assert saved['summary']['eval/top1'] == pytest.approx(
      {'mean': np.mean(top1), 'std': np.std(top1, ddof=1), 'n': 2})
  assert saved['varies'].startswith('the linear seed only')
  table = (tmp_path / 'seeds.md').read_text()
  assert f'| eval/top1 | {seeds.format_spread(saved["summary"]["eval/top1"], True)} % |' in table
  assert 'Seeds vary: the linear seed only' in table
  # Finished seeds are read back, not retrained.
  again = seeds.run_seeds(config, str(tmp_path), 2)
  assert again['runs'] == saved['runs']


def test_seed_config_fills_the_pretraining_seed_and_spread_is_the_sample_std():
  config = small_classifier_config(**{'init.workdir': 'runs/pf/seed{seed}'})
  c = seeds.seed_config(config, 7)
  assert c.seed == 7 and c.init.workdir == 'runs/pf/seed7'
  assert seeds.what_varies(config).startswith('both: the pretraining run of each seed')
  assert seeds.spread([0.3, 0.5]) == pytest.approx({'mean': 0.4, 'std': 0.1414213, 'n': 2})
  assert seeds.spread([0.3]) == {'mean': 0.3, 'std': 0.0, 'n': 1}
  assert seeds.format_spread({'mean': 0.3111, 'std': 0.0123, 'n': 3}, True) == (
      '31.1 ± 1.2 (n=3)')
  assert seeds.format_spread(seeds.spread([0.3111]), True) == '31.1 (n=1)'  # no '± 0.0'
