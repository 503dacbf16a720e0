"""Tasks: the online probe leaves the self-supervised update alone; a linear
probe updates only its head and keeps no optimizer state for the backbone;
losses and metrics of classification."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_classifier_config, small_config, vocabulary_config

from ssl_jax import tasks
from ssl_jax.core import optim
from ssl_jax.core import validation
from ssl_jax.nn.losses import topk_correct
from ssl_jax.tasks import classification
from ssl_jax.tasks import whitening as whitening_lib
from ssl_jax.core import step as step_lib

BATCH = {'image': jax.random.uniform(jax.random.key(0), (4, 32, 32, 3)),
         'label': jnp.array([0, 1, 2, 1]), 'valid': jnp.ones((4,), bool)}


def _step(config, task, steps=1):
  """(initial state, state after `steps` steps, the last step's metrics)."""
  tx = optim.make_optimizer(config, task.param_labels)
  state = jax.jit(lambda key: step_lib.init_state(task, tx, key, BATCH))(jax.random.key(0))
  train_step = jax.jit(step_lib.make_train_step(task, tx, optim.schedule(config), 0))
  new, metrics = train_step(state, BATCH)
  for _ in range(steps - 1):
    new, metrics = train_step(new, BATCH)
  return state, new, metrics


def test_online_probe_does_not_change_self_supervised_update(vocabulary):
  # Clipping at a tiny norm is active on every step: if the probe's gradients
  # entered the clipped global norm, the model's update would change. (Any
  # method will do: the small test method compiles in a second.)
  kw = {'optimizer.grad_clip_norm': 0.01, 'optimizer.warmup_steps': 0}
  with_probe = vocabulary_config(**kw)
  without = vocabulary_config(**kw, **{'online_probe.representation': ''})
  task_a, task_b = tasks.build(with_probe, 10), tasks.build(without, 10)
  assert task_b.probe is None and task_a.probe is not None
  state_a, new_a, metrics_a = _step(with_probe, task_a)
  state_b, new_b, metrics_b = _step(without, task_b)
  chex.assert_trees_all_equal(state_a.params['model'], state_b.params['model'])
  # The same self-supervised loss and update, to the last bit (the clipped
  # global norm, which every gradient enters, would move the update).
  assert float(metrics_a['loss']) == float(metrics_b['loss'])
  chex.assert_trees_all_equal(new_a.params['model'], new_b.params['model'])
  # ... while the probe itself learns.
  assert 'online_probe/top1' in metrics_a and 'online_probe/top1' not in metrics_b
  assert not np.allclose(new_a.params['online_probe']['classifier']['kernel'],
                         state_a.params['online_probe']['classifier']['kernel'])
  # ... and the method's non-gradient state is updated by the same step.
  assert not np.allclose(new_a.method_state['table'], state_a.method_state['table'])


def test_no_labels_means_no_online_probe():
  task = tasks.build(small_config(), None)
  shapes = jax.eval_shape(task.init, jax.random.key(0), BATCH)
  assert task.probe is None and set(shapes) == {'model'}


@pytest.mark.slow  # over 8 s: the slow tier (the fast one stays under 4 minutes)
def test_linear_probe_updates_only_the_head_and_keeps_no_backbone_state():
  config = small_classifier_config('linear', **{'optimizer.warmup_steps': 0})
  task = tasks.build(config, 10)
  state, new, metrics = _step(config, task)
  assert 'decoder' not in state.params['backbone']  # section 2.2: decoder removed
  chex.assert_trees_all_equal(new.params['backbone'], state.params['backbone'])
  assert not np.allclose(new.params['head']['classifier']['kernel'], 0)
  # The whitening is set once from the features (train.run), then frozen.
  for name in ('feature_mean', 'whitening'):
    np.testing.assert_array_equal(new.params['head'][name], state.params['head'][name])
  n_classifier = sum(x.size for x in jax.tree.leaves(state.params['head']['classifier']))
  n_state = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  assert n_state == 2 * n_classifier  # Adam's two moments of the classifier only
  assert 0 <= float(metrics['top1']) <= 1


def test_whitening_makes_ill_conditioned_features_white():
  rng = np.random.default_rng(0)
  # Five strong directions and eleven weak ones, mixed into every feature,
  # off-centre: the shape of self-supervised features (condition number 400;
  # the weak directions hold ~1% of an average feature's variance, well
  # above eps, so whitening must bring them to ~1).
  basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
  scales = np.concatenate([np.full(5, 100.0), np.geomspace(10.0, 5.0, 11)])
  x = (rng.normal(size=(4000, 16)) * scales) @ basis.T + 7.0
  mean, matrix = whitening_lib.whitening(x)
  assert mean.dtype == matrix.dtype == np.float32
  white = (x - mean) @ matrix
  np.testing.assert_allclose(white.mean(0), 0, atol=1e-4)
  eigenvalues = np.linalg.eigvalsh(np.cov(white.T, bias=True))
  assert eigenvalues.min() > 0.85 and eigenvalues.max() < 1.0 + 1e-4, eigenvalues
  # eps bounds the amplification of directions with no variance at all.
  _, degenerate = whitening_lib.whitening(np.c_[x, np.zeros(4000)])
  assert np.abs(degenerate).max() < 1 / np.sqrt(whitening_lib.WHITEN_EPS) + 1e-3
  with pytest.raises(ValueError, match=r'features \[n >= 2, D\]'):
    whitening_lib.whitening(x[:1])


def test_a_fine_tune_may_standardise_its_features_but_not_whiten_them():
  # A fine-tune's head may standardise each feature by statistics fitted
  # once to the starting backbone and then fixed while the backbone trains
  # (whiten_kind='per_feature'); the full whitening is for frozen features.
  config = small_classifier_config('finetune', **{'classifier.whiten': True})
  with pytest.raises(validation.ConfigError, match="classifier.whiten_kind='full' is not "
                     "allowed with classifier.mode='finetune' and whiten=True: must be "
                     "'per_feature'"):
    validation.validate(config, 1, 1)
  config.classifier.whiten_kind = 'per_feature'
  validation.validate(config, 1, 1)
  task = tasks.build(config, 10)
  labels = task.param_labels(jax.eval_shape(task.init, jax.random.key(0), BATCH))
  assert labels['head']['feature_mean'] == labels['head']['whitening'] == 'frozen'
  assert set(jax.tree.leaves(labels['head']['classifier'])) == {'train'}
  assert set(jax.tree.leaves(labels['backbone'])) == {'train'}


@pytest.mark.slow
@pytest.mark.e2e
def test_finetune_trains_everything_with_masking_dropout_and_residual_head():
  config = small_classifier_config('finetune', **{'optimizer.warmup_steps': 0})
  task = tasks.build(config, 10)
  # Two steps: the classifier starts at zero, so the first step's gradient
  # reaches only the head.
  state, new, _ = _step(config, task, steps=2)
  assert 'residual' in state.params['head']
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params['backbone'],
                         new.params['backbone'])
  for module, flags in changed.items():  # every part of the backbone trains
    assert any(jax.tree.leaves(flags)), module
  # Training is stochastic (masks, crops, dropout); prediction is not.
  l1 = task.loss(new.params, BATCH, jax.random.key(1))[0]
  l2 = task.loss(new.params, BATCH, jax.random.key(2))[0]
  assert float(l1) != float(l2)
  np.testing.assert_array_equal(task.predict(state.params, BATCH),
                                task.predict(state.params, BATCH))


def test_head_init_normal_sends_a_gradient_to_the_backbone_at_once():
  # classifier.head_init: 'zeros' (the default) gives a zero first gradient
  # with respect to the features, so to every backbone parameter; 'normal'
  # does not.
  from ssl_jax.nn.heads import ClassifierHead
  feats = jax.random.normal(jax.random.key(0), (4, 16))
  for head_init in ('zeros', 'normal'):
    config = small_classifier_config('finetune', **{'classifier.head_init': head_init})
    validation.validate(config, 8)
    head = tasks.build(config, 10).head
    assert isinstance(head, ClassifierHead) and head.zero_init == (head_init == 'zeros')
    params = head.init(jax.random.key(1), feats, train=False)
    grad = jax.grad(lambda f: optax.softmax_cross_entropy_with_integer_labels(
        head.apply(params, f, train=False), BATCH['label']).mean())(feats)
    assert (float(jnp.abs(grad).max()) == 0.0) == (head_init == 'zeros')
  with pytest.raises(validation.ConfigError, match="head_init='ones' is not allowed"):
    validation.validate(small_classifier_config('finetune', **{'classifier.head_init': 'ones'}),
                        8)


def test_a_saved_config_reads_keys_added_since_as_the_values_it_ran_with():
  # ssl_jax.api rebuilds runs from their checkpoints' configs: a key added
  # after a checkpoint was written reads as the value that reproduces it
  # (checks.ADDED_KEYS and the method's added_keys, under backbone. for a
  # probe), and only where its section exists.
  import json
  import ml_collections
  from ssl_jax.config.checks import flatten, to_json
  probe = json.loads(to_json(small_classifier_config('finetune', **{
      'classifier.head_init': 'normal', 'classifier.whiten_kind': 'per_feature'})))
  del probe['classifier']['head_init'], probe['classifier']['whiten_kind']
  del probe['backbone']['patchformer']['model']['resnet_norm']
  filled = tasks.fill_added_keys(probe)
  assert (filled['classifier']['head_init'], filled['classifier']['whiten_kind']) == (
      'zeros', 'full')
  assert filled['backbone']['patchformer']['model']['resnet_norm'] == 'layer'
  assert 'resnet_norm' not in probe['backbone']['patchformer']['model']  # a copy
  validation.validate(ml_collections.ConfigDict(filled), 8)
  pretraining = json.loads(to_json(small_config()))
  filled = tasks.fill_added_keys(pretraining)
  assert 'classifier' not in filled  # no section made up
  assert flatten(filled).items() >= flatten(pretraining).items()  # nothing present changed


@pytest.mark.parametrize('method, key, old, other', [
    ('patchformer', 'patchformer.model.resnet_norm', 'layer', 'none'),
    ('igpt', 'igpt.model.token_init', 'normal', 'palette')])
def test_a_config_from_before_a_method_key_reads_as_what_it_ran_with(method, key, old, other):
  # A config saved before `key` existed ran with `old`: rebuilt from its
  # checkpoint (ssl_jax.api: load, sampling, pictures) it reads as `old` and
  # validates; it resumes under `old`, not `other`; and a probe's
  # architecture check tells `other` apart when the key fixes parameters
  # (resnet_norm does, token_init only starts them).
  import importlib
  import json
  import ml_collections
  from configs import finetune
  from ssl_jax.config.checks import flatten, get, incompatible_keys, to_json
  module = importlib.import_module(f'configs.{method}')
  saved = json.loads(to_json(module.get_config('tiny')))
  *sections, leaf = key.split('.')
  del get(saved, '.'.join(sections))[leaf]
  filled = tasks.fill_added_keys(saved)
  assert get(filled, key) == old
  validation.validate(ml_collections.ConfigDict(filled), 8)
  fixes_parameters = key == 'patchformer.model.resnet_norm'
  for value, mismatch in ((old, []), (other, [key])):
    current = module.get_config('tiny')
    current.update_from_flattened_dict({key: value})
    assert incompatible_keys(saved, json.loads(to_json(current)),
                             tasks.added_keys(current)) == mismatch
    probe = finetune.get_config(f'{method}_tiny')
    probe.backbone.update_from_flattened_dict({key: value})
    backbone = flatten(json.loads(to_json(probe.backbone)))
    assert tasks.architecture_mismatch(flatten(saved), backbone) == (
        mismatch if fixes_parameters else [])


def test_classification_loss_smoothing_padding_and_topk():
  logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
  batch = {'label': jnp.array([0, 1, 2]), 'valid': jnp.array([True, True, False])}
  loss, metrics = classification.classification_loss(logits, batch, 0.0)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  np.testing.assert_allclose(loss, xent[:2].mean(), rtol=1e-6)
  assert float(metrics['top1']) == 0.5  # the padded third example does not count
  smooth, _ = classification.classification_loss(logits, batch, 0.3)
  assert float(smooth) != float(loss)
  np.testing.assert_array_equal(topk_correct(logits, batch['label'], 1), [1, 0, 0])
  np.testing.assert_array_equal(topk_correct(logits, batch['label'], 2), [1, 1, 0])


@pytest.mark.parametrize('key, value, match', [
    ('classifier.representation', 'layer_9', r"classifier.representation='layer_9' is not "
     r"allowed: must be one of 'attention_pool', 'tokens', 'patch_embed', 'layer_1'"),
    ('eval.representation', 'pooled', "eval.representation='pooled' is not allowed"),
])
def test_unknown_representation_names_are_rejected(key, value, match):
  config = small_classifier_config('linear', **{key: value})
  if key == 'eval.representation':
    config.eval.update(dict(monitors=('knn',), train_split='train[:160]'))
  validation.validate(config, 8)
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_representations(config, tasks.build(config, 10).representations())


@pytest.mark.parametrize('value', [0.0, -0.1, 1.5])
def test_label_fraction_outside_unit_interval_is_rejected(value):
  config = small_classifier_config('finetune', **{'data.label_fraction': value})
  with pytest.raises(validation.ConfigError,
                     match=rf'data.label_fraction={value} is not allowed: must be a number in '
                           r'\(0, 1\]'):
    validation.validate(config, 8)
