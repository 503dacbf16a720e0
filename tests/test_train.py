"""The loop end to end on the CPU: metrics, checkpoints, exact resume after
SIGTERM and kill -9, 8 devices == 1 device, NaN and bad-checkpoint errors.
Two processes against one: tests/test_multihost.py (every method's tiny
run against its golden losses)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import EVERY, ROOT, STEPS, small_config

from ssl_jax.core import checkpoint as ckpt_lib
from ssl_jax.core import assembly, provenance, train


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def losses(workdir):
  return {r['step']: r['loss'] for r in read_metrics(workdir)}


@pytest.mark.slow
@pytest.mark.e2e
def test_run_writes_metrics_events_and_checkpoints(reference):
  config, workdir, result = reference
  assert (result.first_step, result.last_step, result.preempted) == (0, STEPS, False)
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == list(range(1, STEPS + 1))
  for key in ('loss', 'learning_rate', 'grad_norm', 'examples_per_sec', 'step_time',
              'model_tflops_per_sec', 'hardware_tflops_per_sec', 'mfu', 'hfu',
              'pixel_accuracy', 'online_probe/loss', 'online_probe/top1'):
    assert np.isfinite(records[-1][key]), key
  # The monitors ran every 15 steps (eval.every) and at the end.
  evaluated = {r['step']: r for r in records if 'knn/top1' in r}
  assert sorted(evaluated) == [15, 30]
  for r in evaluated.values():
    assert 0 <= r['knn/top1'] <= 1 and 0 <= r['fewshot/1shot'] <= 1 and 'fewshot/5shot' in r
  saved = json.load(open(os.path.join(workdir, 'eval.json')))
  assert [r['step'] for r in saved['evaluations']] == [15, 30]
  assert (saved['evaluations'][-1]['knn/top1'] == evaluated[30]['knn/top1']
          == result.evaluation['knn/top1'])
  table = open(os.path.join(workdir, 'eval.md')).read().splitlines()
  assert table[0].startswith('| step | fewshot/1shot (%)') and len(table) == 6
  # What produced it: in eval.json, under the table, and in config.json.
  made_by = saved['provenance']
  assert len(made_by) == 1 and made_by[0]['start_step'] == 0
  assert made_by[0]['devices'] == '8 x cpu' and made_by[0]['jax'] == jax.__version__
  assert len(made_by[0]['lock']) == 16 and isinstance(made_by[0]['dirty'], bool)
  assert table[-1] == 'Produced by: ' + provenance.line(made_by[0])
  assert json.load(open(os.path.join(workdir, 'config.json')))['provenance'] == made_by
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert kept == [20, 25, 30]  # every 5, the last 3 kept
  assert json.load(open(os.path.join(workdir, 'config.json')))['total_steps'] == STEPS
  assert records[-1]['loss'] < records[0]['loss']


@pytest.mark.slow
@pytest.mark.e2e
def test_one_device_matches_eight(reference, tmp_path):
  config, workdir, result = reference
  one = train.run(config, str(tmp_path), devices=jax.devices()[:1])
  assert one.last_step == STEPS
  ref, got = losses(workdir), losses(str(tmp_path))
  np.testing.assert_allclose([got[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)],
                             rtol=1e-4)
  for a, b in zip(jax.tree.leaves(one.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-3)


def _launch(workdir, data_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'tests', '_run_small.py'), workdir, data_dir,
       str(STEPS), str(EVERY)], env=env, cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.e2e
def test_fsdp_matches_replicated(reference, tmp_path):
  config, workdir, _ = reference
  fsdp = small_config(**{'data.data_dir': config.data.data_dir, 'total_steps': STEPS,
                         'checkpoint.every': EVERY, 'sharding.rule': 'fsdp',
                         'sharding.fsdp_axis_size': 4, 'sharding.fsdp_min_size': 256})
  trainer = assembly.Trainer(fsdp)
  specs = [a.sharding.spec for a in jax.tree.leaves(trainer.abstract_state().params)]
  assert any('fsdp' in spec for spec in specs) and any('fsdp' not in spec for spec in specs)
  train.run(fsdp, str(tmp_path), stop_after=EVERY)
  ref, got = losses(workdir), losses(str(tmp_path))
  np.testing.assert_allclose([got[s] for s in range(1, EVERY + 1)],
                             [ref[s] for s in range(1, EVERY + 1)], rtol=1e-4)


def _wait_for_checkpoint_after(workdir, step, proc, timeout=240):
  directory = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(directory) and any(
        d.isdigit() and int(d) > step for d in os.listdir(directory)):
      return
    if proc.poll() is not None:
      raise AssertionError(f'run ended early:\n{proc.stdout.read()}')
    time.sleep(0.02)
  raise AssertionError('no checkpoint appeared in time')


@pytest.mark.slow
def test_sigterm_then_kill9_resume_gives_identical_losses(reference, data_dir, tmp_path):
  _, ref_dir, _ = reference
  workdir = str(tmp_path / 'w')
  # 1. SIGTERM (preemption): saves a checkpoint and exits with status 75 ...
  proc = _launch(workdir, data_dir)
  _wait_for_checkpoint_after(workdir, 0, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  stopped = ckpt_lib.Checkpointer(workdir, keep=3)
  first_stop = stopped.latest_step()
  stopped.close()
  assert 0 < first_stop < STEPS, out
  # ... with the preemption status and last line, and the workdir released.
  assert proc.returncode == 75, out
  assert out.strip().splitlines()[-1] == (
      f'preempted at step {first_stop}, resume with the same command')
  assert not os.path.exists(os.path.join(workdir, '.lock'))  # released
  # 2. Resume at once (not refused), then kill -9 right after the next
  # checkpoint lands: the workdir stays claimed by a dead process.
  proc = _launch(workdir, data_dir)
  _wait_for_checkpoint_after(workdir, first_stop, proc)
  proc.kill()
  proc.wait()
  assert len(os.listdir(os.path.join(workdir, '.lock'))) == 1
  # 3. Resume to the end: the dead holder's claim is taken over at once.
  proc = _launch(workdir, data_dir)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out
  assert 'resumed from checkpoint' in out
  assert f'taking over workdir {workdir}' in out
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == list(range(1, STEPS + 1))  # each step once
  ref = losses(ref_dir)
  assert {r['step']: r['loss'] for r in records} == ref  # bit-identical


@pytest.mark.slow
@pytest.mark.e2e
def test_nan_stops_with_step_and_keeps_last_good_checkpoint(reference, data_dir,
                                                            tmp_path, monkeypatch):
  config = small_config(**{'data.data_dir': data_dir, 'total_steps': 12,
                           'checkpoint.every': 4})
  real = assembly.global_batches

  def poisoned(config, source, mesh, start_step):
    for step, batch in enumerate(real(config, source, mesh, start_step), start_step + 1):
      if step == 7:
        batch = dict(batch, image=batch['image'] * np.nan)
      yield batch

  monkeypatch.setattr(assembly, 'global_batches', poisoned)
  with pytest.raises(train.NonFiniteLossError,
                     match='at step 7; the last checkpoint, step 4, in .* is intact'):
    train.run(config, str(tmp_path))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.all_steps() == [4]
  state = checkpointer.restore_state(4, assembly.Trainer(config, num_classes=10).abstract_state())
  checkpointer.close()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


@pytest.mark.slow
@pytest.mark.e2e
def test_incompatible_config_and_unreadable_checkpoint(reference, tmp_path):
  config, ref_dir, _ = reference
  workdir = str(tmp_path / 'copy')
  shutil.copytree(ref_dir, workdir)
  wider = small_config(**{'data.data_dir': config.data.data_dir, 'total_steps': STEPS + 5,
                          'checkpoint.every': EVERY, 'patchformer.model.width': 64})
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r'incompatible config: patchformer.model.width \(checkpoint: 32, now: 64\)'):
    train.run(wider, workdir)
  # Corrupt the latest checkpoint's array data: a clear error, nothing deleted.
  latest = os.path.join(workdir, 'checkpoints', str(STEPS))
  for root, _, files in os.walk(os.path.join(latest, 'state')):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  longer = small_config(**{'data.data_dir': config.data.data_dir, 'total_steps': STEPS + 5,
                           'checkpoint.every': EVERY})
  with pytest.raises(ckpt_lib.CheckpointError, match=f'checkpoint {STEPS} .* unreadable'):
    train.run(longer, workdir)
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))) == [20, 25, 30]


def test_nonfinite_message_names_what_is_left_and_only_remedies_that_apply():
  host = {'loss': float('nan'), 'grad_norm': float('inf')}
  config = small_config(**{'optimizer.grad_clip_norm': 1.0})
  fresh = train.nonfinite_message(config, 3, host, None, '/w/checkpoints')
  assert 'at step 3; no checkpoint was written yet (the first is due at step 3)' in fresh
  assert 'clipping' not in fresh and 'float32' not in fresh  # already clipped, float32
  later = train.nonfinite_message(
      small_config(**{'optimizer.grad_clip_norm': None, 'compute_dtype': 'bfloat16'}), 9, host,
      6, '/w/checkpoints')
  assert 'the last checkpoint, step 6, in /w/checkpoints is intact' in later
  assert 'gradient clipping' in later and "compute_dtype='float32'" in later
