"""Non-gradient method state: a vocabulary-like table (tests/vocabulary_method.py)
updated inside the jitted step, sharded like the parameters, checkpointed,
restored exactly on resume, the same on 1 and 8 devices, and kept frozen by
a probe of the checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import vocabulary_config as _vocabulary_config

from ssl_jax.core import assembly, train
from vocabulary_method import update_table

STEPS = 8
pytestmark = pytest.mark.usefixtures('vocabulary')


def vocabulary_config(data_dir, **overrides):
  return _vocabulary_config(**{'data.data_dir': data_dir, 'total_steps': STEPS,
                               'checkpoint.every': 4, 'optimizer.warmup_steps': 1, **overrides})


def test_update_assigns_well_separated_codes_to_their_rows():
  """Three clusters far apart, one row near each: every code goes to its
  cluster's row; the rows decay and take the codes' sum; unused rows decay."""
  centres = jnp.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
  table = jnp.concatenate([centres / 10.0, jnp.zeros((1, 3))])  # row 3: never the argmax
  rng = np.random.default_rng(0)
  labels = np.array([0, 1, 2, 0, 2, 2])
  codes = centres[labels] + jnp.asarray(rng.normal(scale=0.1, size=(6, 3)), jnp.float32)
  weights = jnp.array([1, 1, 1, 1, 1, 0.0])  # the last example is padding
  assign, new, counts = update_table(table, jnp.zeros(4), codes, weights, 0.9)
  np.testing.assert_array_equal(assign, labels)
  for row in range(4):
    members = codes[(labels == row) & (np.asarray(weights) > 0)]
    expected = 0.9 * table[row] + 0.1 * members.sum(0)
    np.testing.assert_allclose(new[row], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(counts, [0.2, 0.1, 0.2, 0.0], atol=1e-7)


def test_state_is_sharded_like_the_parameters(data_dir):
  config = vocabulary_config(data_dir, **{'sharding.rule': 'fsdp', 'sharding.fsdp_axis_size': 2,
                                          'sharding.fsdp_min_size': 8})
  abstract = assembly.Trainer(config, num_classes=10).abstract_state()
  assert 'fsdp' in abstract.method_state['table'].sharding.spec  # [6, 4]: 6 splits in 2
  assert abstract.method_state['counts'].shape == (6,)


@pytest.mark.slow
@pytest.mark.e2e
def test_state_updates_resumes_exactly_and_matches_one_device(data_dir, tmp_path):
  config = vocabulary_config(data_dir)
  whole = train.run(config, str(tmp_path / 'whole'))
  trainer = assembly.Trainer(config, num_classes=10)
  initial = trainer.init_state(trainer.abstract_state())
  table = np.asarray(whole.state.method_state['table'])
  assert not np.allclose(table, np.asarray(initial.method_state['table']))  # it moved
  assert float(np.asarray(whole.state.method_state['counts']).sum()) > 0

  parts = str(tmp_path / 'parts')  # stopped at step 3 (a checkpoint), then resumed
  first = train.run(config, parts, stop_after=3)
  assert first.last_step == 3
  second = train.run(config, parts)
  assert second.first_step == 3
  for a, b in zip(jax.tree.leaves(second.state.method_state),
                  jax.tree.leaves(whole.state.method_state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  one = train.run(config, str(tmp_path / 'one'), devices=jax.devices()[:1])
  np.testing.assert_array_equal(np.asarray(one.state.method_state['counts']),
                                np.asarray(whole.state.method_state['counts']))
  np.testing.assert_allclose(np.asarray(one.state.method_state['table']), table,
                             rtol=1e-5, atol=1e-6)

  # The public API loads the network and its state from the workdir alone.
  from ssl_jax import api
  model = api.load(str(tmp_path / 'whole'))
  assert model.step == STEPS and model.representations == ('code', 'codes')
  images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
  feats = model.features(images)
  logits = feats['code'] @ table.T
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(feats['codes'], expected / expected.sum(-1, keepdims=True),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'images must be \[n, 32, 32, 3\]'):
    model.features(images[:, :16])

  # A linear probe restores the table from the checkpoint and keeps it frozen.
  from configs import common
  probe = common.classification_config(config, mode='linear')
  probe.backbone.vocabulary = config.vocabulary
  probe.init.workdir = str(tmp_path / 'whole')
  probe.classifier.update(dict(representation='codes', whiten=False))
  probe.update(dict(total_steps=2, batch_size=16, log_every=1))
  probe.optimizer.warmup_steps = 0
  probe.checkpoint.every = 2
  probe.eval.update(dict(split='test[:48]', batch_size=48))
  probe.data.held_out_examples = 0
  out = train.run(probe, str(tmp_path / 'probe'))
  np.testing.assert_array_equal(np.asarray(out.state.method_state['table']), table)
  assert 0 <= out.evaluation['eval/top1'] <= 1


def test_declared_views_reach_the_batches_and_the_step(data_dir, tmp_path, monkeypatch):
  """A method that declares two views gets batches [b, 2, S, S, 3] from the
  loop (its views share their crop, the second is jittered) and trains."""
  from ssl_jax.methods import registry
  monkeypatch.setitem(registry.METHODS, 'vocabulary_views', 'two_view_method')
  config = vocabulary_config(data_dir, objective='vocabulary_views', total_steps=2,
                             **{'checkpoint.every': 2})
  assert assembly.abstract_batch(config)['image'].shape == (16, 2, 32, 32, 3)
  run = assembly.assemble(config)
  batch = next(assembly.global_batches(config, run.source, run.trainer.mesh, 0))
  images = np.asarray(batch['image'])
  assert images.shape == (16, 2, 32, 32, 3)
  assert not np.array_equal(images[:, 0], images[:, 1])
  # Shared geometry: the same crop, only brighter or darker per image.
  flat = images.reshape(16, 2, -1)
  correlation = [np.corrcoef(a, b)[0, 1] for a, b in flat]
  assert min(correlation) > 0.9, correlation
  result = train.run(config, str(tmp_path))
  assert result.last_step == 2 and np.isfinite(float(result.state.step))
