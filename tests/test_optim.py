import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl_jax.core import optim

L = 2  # transformer blocks in the toy tree


def config(grad_clip_norm=1.0):
  return ml_collections.ConfigDict(dict(
      total_steps=10,
      optimizer=dict(lr=1e-2, schedule='constant', warmup_steps=0, b1=0.9, b2=0.95,
                     eps=1e-8, weight_decay=0.05, grad_clip_norm=grad_clip_norm),
      online_probe=dict(lr=1e-3)))


def toy_params():
  keys = iter(jax.random.split(jax.random.key(0), 16))
  dense = lambda n: {'kernel': jax.random.normal(next(keys), (n, 4)),
                     'bias': jax.random.normal(next(keys), (4,))}
  return {'embed': dense(3),
          'transformer': {'block1': dense(4), 'block2': dense(4),
                          'final_norm': {'scale': jnp.ones(4)}},
          'head': dense(4),
          'probe': dense(4)}


def layer_of(path):
  if path[0] == 'embed':
    return 0
  if path[0] == 'probe':  # a scale != 1, to show that the 'probe' group ignores it
    return 1
  if path[0] == 'transformer' and path[1].startswith('block'):
    return int(path[1][len('block'):])
  return L + 1


def grads_like(params, seed=1):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def labels(params):
  def label(path, _):
    top = path[0].key
    return {'probe': 'probe', 'embed': 'frozen'}.get(top, 'train')
  return jax.tree_util.tree_map_with_path(label, params)


def one_step(tx, params, grads):
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  return updates


def test_layer_decay_scales():
  scales = optim.layer_decay_scales(toy_params(), layer_of, L, 0.5)
  assert scales['embed'] == {'kernel': 0.125, 'bias': 0.125}
  assert scales['transformer']['block1']['kernel'] == 0.25
  assert scales['transformer']['block2']['bias'] == 0.5
  assert scales['transformer']['final_norm']['scale'] == 1.0
  assert scales['head']['kernel'] == 1.0
  assert jax.tree.structure(scales) == jax.tree.structure(toy_params())
  with pytest.raises(ValueError, match='not in'):
    optim.layer_decay_scales(toy_params(), lambda path: L + 2, L, 0.5)


@pytest.mark.parametrize('param_labels', [None, labels])
def test_decay_one_changes_nothing(param_labels):
  params = toy_params()
  grads = grads_like(params)
  plain = one_step(optim.make_optimizer(config(), param_labels), params, grads)
  scales = optim.layer_decay_scales(params, layer_of, L, 1.0)
  scaled = one_step(optim.make_optimizer(config(), param_labels, lr_scales=scales),
                    params, grads)
  jax.tree.map(np.testing.assert_array_equal, scaled, plain)


@pytest.mark.parametrize('as_callable', [False, True])
@pytest.mark.parametrize('grad_clip_norm', [None, 1.0])
def test_decay_scales_each_update(as_callable, grad_clip_norm):
  params = toy_params()
  grads = grads_like(params)
  scales = optim.layer_decay_scales(params, layer_of, L, 0.5)
  lr_scales = (functools.partial(optim.layer_decay_scales, layer_of=layer_of,
                                 num_layers=L, decay=0.5) if as_callable else scales)
  plain = one_step(optim.make_optimizer(config(grad_clip_norm)), params, grads)
  scaled = one_step(optim.make_optimizer(config(grad_clip_norm), lr_scales=lr_scales),
                    params, grads)
  # Block 1 of L: 0.5 ** L, exactly (the clipping saw the unscaled gradients).
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(scaled['transformer']['block1'][name],
                                  0.5 ** L * plain['transformer']['block1'][name])
    assert np.any(plain['transformer']['block1'][name] != 0)
  jax.tree.map(lambda s, u, p: np.testing.assert_array_equal(s, p * u), scaled, plain,
               jax.tree.map(lambda s: np.float32(s), scales))


@pytest.mark.parametrize('as_callable', [False, True])
def test_scales_apply_to_the_train_group_only(as_callable):
  params = toy_params()
  grads = grads_like(params)
  scales = optim.layer_decay_scales(params, layer_of, L, 0.5)
  lr_scales = (functools.partial(optim.layer_decay_scales, layer_of=layer_of,
                                 num_layers=L, decay=0.5) if as_callable else scales)
  plain_tx = optim.make_optimizer(config(), labels)
  tx = optim.make_optimizer(config(), labels, lr_scales=lr_scales)
  plain = one_step(plain_tx, params, grads)
  scaled = one_step(tx, params, grads)
  # 'frozen' (the embedding): no state and a zero update, whatever its scale.
  state = tx.init(params)
  assert jax.tree.leaves(state.inner_states['frozen']) == []
  # No group holds moments for the embedding kernel, the only (3, 4) leaf.
  assert all(leaf.shape != (3, 4) for leaf in jax.tree.leaves(state))
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0), scaled['embed'])
  # 'probe': unscaled, although its scale is 0.25.
  assert scales['probe']['kernel'] == 0.25
  jax.tree.map(np.testing.assert_array_equal, scaled['probe'], plain['probe'])
  # 'train': scaled per leaf.
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(scaled['transformer']['block1'][name],
                                  0.25 * plain['transformer']['block1'][name])
    np.testing.assert_array_equal(scaled['transformer']['block2'][name],
                                  0.5 * plain['transformer']['block2'][name])
    np.testing.assert_array_equal(scaled['head'][name], plain['head'][name])
  # The scaling adds no state arrays.
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(plain_tx.init(params)))


def test_scale_by_tree_passes_masked_nodes_through():
  params = toy_params()
  scales = jax.tree.map(lambda _: 3.0, params)
  mask = jax.tree.map(lambda _: False, params)
  mask['head'] = {'kernel': True, 'bias': True}
  tx = optax.masked(optim.scale_by_tree(scales), mask)
  grads = grads_like(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['head']['kernel'], 3.0 * grads['head']['kernel'])
  np.testing.assert_array_equal(updates['embed']['kernel'], grads['embed']['kernel'])


def test_without_lr_scales_state_is_unchanged():
  params = toy_params()
  o = config().optimizer
  reference = optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm),
      optax.adamw(optim.schedule(config()), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                  mask=optim.decay_mask))
  assert (jax.tree.structure(optim.make_optimizer(config()).init(params))
          == jax.tree.structure(reference.init(params)))


def _first_updates(name, **optimizer):
  c = config(grad_clip_norm=None)
  c.optimizer.update(dict(name=name, weight_decay=0.0, **optimizer))
  params = {'w': jnp.full((3, 2), 2.0), 'b': jnp.ones(2)}
  grads = {'w': jnp.full((3, 2), 0.5), 'b': jnp.full(2, -0.25)}
  tx = optim.make_optimizer(c)
  state = tx.init(params)
  out = []
  for _ in range(200):
    updates, state = tx.update(grads, state, params)
    out.append(updates)
  return c.optimizer, out


def test_bert_adamw_has_no_bias_correction_and_optax_adamw_has():
  o, adam = _first_updates('adamw')
  _, bert = _first_updates('bert_adamw')
  lr = o.lr
  # Step 1: Adam's bias-corrected direction is sign(g); BERT's AdamWeightDecay
  # moves (1 - b1) / sqrt(1 - b2) of that.
  np.testing.assert_allclose(adam[0]['w'], -lr, rtol=1e-5)
  np.testing.assert_allclose(bert[0]['w'], -lr * 0.1 / np.sqrt(0.05), rtol=1e-5)
  np.testing.assert_allclose(bert[0]['b'], lr * 0.1 / np.sqrt(0.05), rtol=1e-5)
  # Once the moving averages have forgotten their zero start, both agree.
  np.testing.assert_allclose(bert[-1]['w'], adam[-1]['w'], rtol=1e-4)


def test_lars_scales_matrices_by_their_trust_ratio_only():
  _, lars = _first_updates('lars', momentum=0.9)
  lr, w, g = 1e-2, np.full((3, 2), 2.0), np.full((3, 2), 0.5)
  trust = 1e-3 * np.linalg.norm(w) / np.linalg.norm(g)
  np.testing.assert_allclose(lars[0]['w'], -lr * trust * g, rtol=1e-5)
  np.testing.assert_allclose(lars[0]['b'], lr * 0.25, rtol=1e-5)  # no trust ratio on biases
  np.testing.assert_allclose(lars[1]['w'], -lr * trust * g * 1.9, rtol=1e-5)  # momentum
