"""DV2: L_mp and L_mi against numpy loops, the dynamic vocabulary against a
literal loop over equations 17-19, masks, the invisibility of masked
patches to the exchange layers, the configs' validation, the full-size
variants, and end-to-end runs (resume, 1 vs 8 devices, a probe)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _override, small_method_config, unoptimised_jit

from ssl_jax.config.checks import ConfigError
from ssl_jax.methods.dv2 import vocabulary as vocab_lib
from ssl_jax.methods.dv2.method import image_loss, patch_loss


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rescaled(a, b):
  return (_unit(a) @ _unit(b).T + 1) / 2


def _pair_loss_loop(pred, target, positive, weight, normalise):
  """A loop over every pair: -log s (positive) or -log(1 - s) (negative)."""
  sim = _rescaled(pred, target)
  pos, neg, n_pos, n_neg = 0.0, 0.0, 0.0, 0.0
  for i in range(len(pred)):
    for j in range(len(target)):
      w = weight[i, j]
      if positive(i, j):
        pos += -np.log(sim[i, j]) * w
        n_pos += w
      else:
        neg += -np.log(1 - sim[i, j]) * w
        n_neg += w
  if normalise == 'printed':
    return (pos + neg) / (n_pos + n_neg)
  return pos / n_pos + neg / n_neg


# -- L_mp and L_mi ---------------------------------------------------------------


@pytest.mark.parametrize('negatives', ['batch', 'image'])
@pytest.mark.parametrize('normalise', ['printed', 'balanced'])
def test_patch_loss_matches_a_loop_over_pairs(normalise, negatives):
  """Two images x 2 versions (N = 4), M = 4 cells, Q = 2 masked; the last
  image is padding. Positives: the same image (any version), the same cell."""
  rng = np.random.default_rng(1)
  n, m, q, d, views = 4, 4, 2, 5, 2
  pred = rng.normal(size=(n, q, d)).astype(np.float32)
  target = rng.normal(size=(n, m, d)).astype(np.float32)
  masked = np.array([[0, 3], [1, 2], [2, 3], [0, 1]])
  weights = np.array([1, 1, 0, 0], np.float32)  # image 1 (versions 2, 3) is padding
  loss, parts = patch_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(masked), views,
                           jnp.asarray(weights), normalise, negatives)
  rows = [(i, masked[i, k]) for i in range(n) for k in range(q)]
  cols = [(i, j) for i in range(n) for j in range(m)]
  counted = lambda r, c: negatives == 'batch' or r[0] // views == c[0] // views
  w = np.array([[weights[r[0]] * weights[c[0]] * counted(r, c) for c in cols] for r in rows])
  positive = lambda a, b: rows[a][0] // views == cols[b][0] // views and rows[a][1] == cols[b][1]
  want = _pair_loss_loop(pred.reshape(n * q, d), target.reshape(n * m, d), positive, w,
                         normalise)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # Each prediction has `views` positives (its cell in every version).
  assert sum(positive(a, b) for a in range(2) for b in range(n * m)) == 2 * views
  # Retrieval: is the most similar target (of the real ones; of the own image's) a positive?
  sim = _rescaled(pred.reshape(n * q, d), target.reshape(n * m, d))
  real = [a for a in range(n * q) if weights[rows[a][0]] > 0]
  for key, allowed in (('top1', lambda a, b: weights[cols[b][0]] > 0),
                       ('top1_in_image', lambda a, b: rows[a][0] // views == cols[b][0] // views)):
    hits = [positive(a, max((b for b in range(n * m) if allowed(a, b)), key=lambda b: sim[a, b]))
            for a in real]
    np.testing.assert_allclose(float(parts[key]), np.mean(hits), rtol=1e-6)


@pytest.mark.parametrize('normalise', ['printed', 'balanced'])
def test_image_loss_matches_a_loop_over_pairs(normalise):
  rng = np.random.default_rng(2)
  pred = rng.normal(size=(9, 3)).astype(np.float32)
  target = rng.normal(size=(9, 3)).astype(np.float32)
  weights = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], np.float32)  # the third image is padding
  loss, _ = image_loss(jnp.asarray(pred), jnp.asarray(target), 3, jnp.asarray(weights),
                       normalise)
  want = _pair_loss_loop(pred, target, lambda i, j: i // 3 == j // 3,
                         np.outer(weights, weights), normalise)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_printed_normaliser_gives_the_positive_a_tiny_weight():
  """With one positive per row among N M targets, 'printed' weighs the
  positive term 1 / (N M) of the negatives' (what 'balanced' undoes)."""
  n, m, d = 8, 16, 4
  rng = np.random.default_rng(3)
  target = rng.normal(size=(n, m, d)).astype(np.float32)
  masked = np.tile(np.arange(2), (n, 1))
  pred = target[:, :2].copy()
  far = -target[:, :2]  # predictions opposite to their true patches
  args = (jnp.asarray(masked), 1, jnp.ones((n,)))
  near = {k: float(patch_loss(jnp.asarray(pred), jnp.asarray(target), *args, k)[0])
          for k in ('printed', 'balanced')}
  away = {k: float(patch_loss(jnp.asarray(far), jnp.asarray(target), *args, k)[0])
          for k in ('printed', 'balanced')}
  # Moving every prediction from its patch to the opposite costs 'balanced'
  # far more than 'printed', where the positives hardly count.
  assert away['balanced'] - near['balanced'] > 10 * (away['printed'] - near['printed'])


# -- the dynamic vocabulary -------------------------------------------------------


def _update_loop(vectors, mass, age, targets, weights, decay, stale_after):
  """Equations 17-19 written out, one target and one entry at a time."""
  s = len(vectors)
  choice = []
  for u in targets:
    scores = []
    for i in range(s):
      x = mass[i] * vectors[i] + u
      scores.append(x @ u / (np.linalg.norm(x) * np.linalg.norm(u)))
    choice.append(int(np.argmax(scores)))
  new_v, new_m, new_age, stale = vectors.copy(), mass.copy(), age.copy(), 0
  for i in range(s):
    members = [j for j, c in enumerate(choice) if c == i and weights[j] > 0]
    count = sum(weights[j] for j in members)
    if members:
      v = mass[i] * vectors[i] + sum(weights[j] * targets[j] for j in members)
      new_v[i] = v / np.linalg.norm(v)
      stale += age[i] >= stale_after
      new_age[i] = 0
    else:
      new_age[i] = age[i] + 1
    new_m[i] = (mass[i] + count) * decay
  return np.array(choice), new_v, new_m, new_age, stale


def test_vocabulary_update_matches_the_equations():
  """Four entries: a heavy one on the x axis, a light one on y, a stale one
  (long unchosen, mass decayed) pointing away from everything, and a heavy
  one on z. Targets near x go to the heavy x entry; a target near -x, far
  from every entry, goes to the light stale entry (low mass favours it:
  "favors entry with smaller mass value"), which is re-assigned; the
  padding target changes nothing."""
  vectors = _unit(np.array([[1, 0, 0], [0, 1, 0], [0.6, -0.8, 0.0], [0, 0, 1]], np.float32))
  mass = np.array([50.0, 2.0, 0.3, 50.0], np.float32)
  age = np.array([0, 3, 500, 0], np.int32)
  targets = _unit(np.array([[0.99, 0.1, 0], [0.98, -0.1, 0.1], [-0.95, 0.1, -0.2],
                            [0.1, 0.99, 0], [0, 0.2, 0.98]], np.float32))
  weights = np.array([1, 1, 1, 1, 0], np.float32)  # the last target is padding
  choice, v, m, a, stale = _update_loop(vectors, mass, age, targets, weights, 0.9, 100)
  np.testing.assert_array_equal(choice, [0, 0, 2, 1, 3])
  got_choice = vocab_lib.assign(jnp.asarray(vectors), jnp.asarray(mass), jnp.asarray(targets))
  np.testing.assert_array_equal(got_choice, choice)
  state = {'vectors': jnp.asarray(vectors), 'mass': jnp.asarray(mass), 'age': jnp.asarray(age)}
  new, stats = vocab_lib.update(state, jnp.asarray(targets), jnp.asarray(weights), 0.9, 100)
  np.testing.assert_allclose(new['vectors'], v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['mass'], m, rtol=1e-6)
  np.testing.assert_array_equal(new['age'], a)
  # The unchosen entry (z: only the padding target picked it) keeps its
  # direction and decays; the stale entry now points at its new target.
  np.testing.assert_allclose(new['vectors'][3], vectors[3])
  np.testing.assert_allclose(float(new['mass'][3]), 50.0 * 0.9, rtol=1e-6)
  assert float(vectors[2] @ targets[2]) < -0.5 and float(new['vectors'][2] @ targets[2]) > 0.9
  assert float(stats['stale_reassigned']) == stale == 1
  assert float(stats['entries_used']) == 3


def test_vocabulary_assignment_tells_light_entries_apart_by_direction():
  """Entries whose masses decayed to 2e-4 .. 3e-4 (unchosen for ~850
  steps): their cosines with any target round to 1.0 in float32, yet the
  assignment picks the entry equation 17 picks when evaluated literally at
  40 significant digits (here: the one pointing at the target), not the
  lowest index; heavy entries and opposite targets are in the mix."""
  import decimal
  rng = np.random.default_rng(9)
  vectors = _unit(rng.normal(size=(12, 6)))
  mass = np.concatenate([rng.uniform(2e-4, 3e-4, size=7), [5.0, 30.0, 0.5, 2.0, 1e-3]])
  targets = _unit(np.concatenate([vectors[:7] + 0.05 * rng.normal(size=(7, 6)),
                                  -vectors[7:9], rng.normal(size=(5, 6))]))
  vectors32, mass32, targets32 = (np.asarray(a, np.float32) for a in (vectors, mass, targets))
  decimal.getcontext().prec = 40
  want = []
  for u in targets32:
    scores = []
    for v, m in zip(vectors32, mass32):
      x = [decimal.Decimal(float(m)) * decimal.Decimal(float(a)) + decimal.Decimal(float(b))
           for a, b in zip(v, u)]
      dot = sum(xi * decimal.Decimal(float(b)) for xi, b in zip(x, u))
      scores.append(dot / (sum(xi * xi for xi in x).sqrt()
                           * sum(decimal.Decimal(float(b)) ** 2 for b in u).sqrt()))
    want.append(max(range(len(scores)), key=lambda i: (scores[i], -i)))
  got = vocab_lib.assign(jnp.asarray(vectors32), jnp.asarray(mass32), jnp.asarray(targets32))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(want[:7], np.arange(7))  # each light entry takes its target


def test_vocabulary_loss_matches_equation_20_and_passes_no_gradient_to_its_entries():
  rng = np.random.default_rng(4)
  vectors = _unit(rng.normal(size=(6, 3))).astype(np.float32)
  pred = rng.normal(size=(4, 3)).astype(np.float32)
  target = _unit(rng.normal(size=(4, 3))).astype(np.float32)
  weights = np.array([1, 1, 1, 0], np.float32)
  want = 0.0
  for j in range(3):
    for i in range(6):
      want += (_rescaled(vectors[i:i + 1], target[j:j + 1])[0, 0] - 1) * np.log(
          1 - _rescaled(vectors[i:i + 1], pred[j:j + 1])[0, 0])
  args = (jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weights))
  got = vocab_lib.loss(jnp.asarray(vectors), *args, 'predictions')
  np.testing.assert_allclose(float(got), want / 3, rtol=1e-5)
  np.testing.assert_allclose(float(vocab_lib.loss(jnp.asarray(vectors), *args, 'pairs')),
                             want / 3 / 6, rtol=1e-5)
  grad = jax.grad(lambda v: vocab_lib.loss(v, *args, 'pairs'))(jnp.asarray(vectors))
  np.testing.assert_array_equal(grad, 0.0)
  # The update carries no gradient to the targets either.
  state = vocab_lib.init(jax.random.key(0), 6, 3)
  g = jax.grad(lambda t: vocab_lib.update(state, t, jnp.ones(4), 0.99, 10)[0]['vectors'].sum())(
      jnp.asarray(target))
  np.testing.assert_array_equal(g, 0.0)
  # The prediction does get one: pushed away from the entries.
  assert float(jnp.abs(jax.grad(lambda p: vocab_lib.loss(
      jnp.asarray(vectors), p, *args[1:], 'pairs'))(args[0])).sum()) > 0


def test_vocabulary_assignment_is_the_same_sharded_over_8_devices():
  """Well-separated targets (no near-ties): the jitted update on targets
  sharded over 8 devices equals the one on a single device."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  rng = np.random.default_rng(5)
  centres = _unit(rng.normal(size=(16, 8)))
  targets = _unit(centres[np.arange(64) % 16] + 0.01 * rng.normal(size=(64, 8))).astype(
      np.float32)
  state = vocab_lib.init(jax.random.key(1), 32, 8)
  # Masses from fresh to long unchosen, so light entries compete too.
  state['mass'] = jnp.asarray(np.geomspace(1e-4, 20.0, 32), jnp.float32)
  update = jax.jit(lambda s, t, w: vocab_lib.update(s, t, w, 0.99, 10))
  one = update(state, jnp.asarray(targets), jnp.ones(64))
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  sharded = jax.device_put(jnp.asarray(targets), NamedSharding(mesh, P('data')))
  weights = jax.device_put(jnp.ones(64), NamedSharding(mesh, P('data')))
  eight = update(state, sharded, weights)
  np.testing.assert_array_equal(np.asarray(eight[0]['age']), np.asarray(one[0]['age']))
  np.testing.assert_array_equal(np.asarray(eight[0]['mass']), np.asarray(one[0]['mass']))
  np.testing.assert_allclose(np.asarray(eight[0]['vectors']), np.asarray(one[0]['vectors']),
                             rtol=1e-6, atol=1e-6)


# -- masks and the exchange layers ------------------------------------------------


def _tiny_dv2(**overrides):
  from configs import dv2
  c = dv2.get_config('tiny')
  for key, value in overrides.items():
    c.dv2[key] = value
  return c


def test_masks_hide_a_fixed_count_of_distinct_patches_per_version():
  from ssl_jax.methods.dv2.method import DV2
  method = DV2(_tiny_dv2())
  idx = method._mask(jax.random.key(3), 40)
  assert idx.masked.shape == (40, 4) and idx.visible.shape == (40, 12)
  cells = np.sort(np.concatenate([idx.visible, idx.masked], axis=1), axis=1)
  np.testing.assert_array_equal(cells, np.broadcast_to(np.arange(16), (40, 16)))
  assert len({tuple(r) for r in np.asarray(idx.masked)}) > 30  # drawn per version


def test_masked_patches_are_invisible_to_the_exchange_layers_and_the_transformer():
  """Changing the pixels of the masked patches changes their targets and
  nothing of the context: not the predictions, not I^, not the targets of
  the visible patches. Changing a visible patch changes the predictions
  (the exchange layers and the transformer do read the visible patches)."""
  from ssl_jax.methods.dv2.model import DV2Net
  c = _tiny_dv2()
  assert c.dv2.model.exchange_layers > 0
  c.dv2.model.num_layers = 1  # enough for the property, and faster to compile
  net = DV2Net(c.dv2.model, (4, 4))
  rng = np.random.default_rng(6)
  patches = jnp.asarray(rng.uniform(-1, 1, size=(2, 16, 8, 8, 3)), jnp.float32)
  masked = jnp.array([[1, 5, 6, 12], [0, 3, 9, 15]])
  visible = jnp.array([sorted(set(range(16)) - set(map(int, r))) for r in masked])
  params = unoptimised_jit(functools.partial(net.init, train=False))(
      jax.random.key(0), patches, visible, masked, None)
  apply = unoptimised_jit(lambda p: net.apply(params, p, visible, masked, None, train=False))
  base = apply(patches)
  rows = jnp.arange(2)[:, None]
  noise = jnp.asarray(rng.uniform(-1, 1, size=(2, 4, 8, 8, 3)), jnp.float32)
  moved = apply(patches.at[rows, masked].set(noise))
  np.testing.assert_array_equal(moved.patch_predictions, base.patch_predictions)
  np.testing.assert_array_equal(moved.image_prediction, base.image_prediction)
  vis = lambda t: np.asarray(jnp.take_along_axis(t, visible[..., None], axis=1))
  np.testing.assert_array_equal(vis(moved.patch_targets), vis(base.patch_targets))
  assert not np.allclose(moved.patch_targets, base.patch_targets)
  touched = apply(patches.at[rows, visible[:, :1]].set(noise[:, :1]))
  assert not np.allclose(touched.patch_predictions, base.patch_predictions)


@pytest.mark.parametrize('key, value, message', [
    ('dv2.views', 3, 'batch_size'),
    ('dv2.model.norm_groups', 3, 'norm_groups'),
    ('dv2.model.stage_sizes', (1, 1, 1), 'stage_sizes'),
    ('dv2.vocabulary.normalise', 'sum', 'vocabulary.normalise'),
    ('dv2.augment.hue', 0.9, 'dv2.augment'),
    ('dv2.num_masked', 16, 'num_masked'),
    ('online_probe.representation', 'image_res3', 'online_probe'),
])
def test_bad_dv2_keys_are_refused_by_name(key, value, message):
  from ssl_jax.core import validation
  c = _override(_tiny_dv2(), {key: value})
  with pytest.raises(ConfigError, match=message):
    validation.validate(c, 1)


def test_every_ablation_row_is_a_valid_config():
  from configs import dv2
  from ssl_jax.core import validation
  for variant in ('tiny', ''):
    base = dv2.get_config(variant)
    rows = dv2.ablation(base)
    assert len(rows) == 10 and rows['baseline'] == dv2.BASELINE
    for name, overrides in rows.items():
      c = _override(dv2.get_config(variant), {f'dv2.{k}': v for k, v in overrides.items()})
      validation.validate(c, 8)


# -- full size: shapes, and one step on synthetic data ---------------------------


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.slow
@pytest.mark.parametrize('module, variant, real_step', [
    ('dv2', '', True), ('dv2', 'cifar10', True), ('selfie', '', True), ('selfie', 'allp', False)])
def test_paper_settings_build_at_full_size_and_step_on_synthetic_data(module, variant,
                                                                      real_step):
  """The STL-10 and CIFAR-10 variants traced at full size with
  jax.eval_shape (no compilation, no memory), then one real train step on
  synthetic images of their shape at a small batch, on one device."""
  import importlib

  from ssl_jax.core import assembly
  from ssl_jax.core import step as step_lib
  config = importlib.import_module(f'configs.{module}').get_config(variant)
  trainer = assembly.Trainer(config)
  abstract = trainer.abstract_state()
  params = abstract.params['model']
  stacks = _param_count({k: v for k, v in params['resnet'].items() if k.startswith('res')})
  if module == 'dv2':
    assert 23.0e6 < stacks < 24.0e6, stacks  # ResNet-50's four stacks: 23.5M
    assert sorted(k for k in params['resnet'] if k.startswith('exchange')) == [
        'exchange_res2', 'exchange_res3', 'exchange_res4']
    assert abstract.method_state['patch_vocabulary']['vectors'].shape == (16384, 128)
    assert abstract.method_state['image_vocabulary']['mass'].shape == (16384,)
  else:
    assert 8.0e6 < stacks < 9.0e6, stacks  # the first three stacks: 8.5M
  blocks = _param_count(params['context']['encoder'])
  assert abs(blocks - 3 * 12 * 1024**2) / blocks < 0.01, blocks  # 3 layers of width 1024
  step = step_lib.make_train_step(trainer.task, trainer.tx, trainer.lr_schedule, 0)
  batch = assembly.abstract_batch(config)
  views = len(trainer.task.method.views(config))
  size = config.data.image_size
  assert batch['image'].shape == (256 // views, views, size, size, 3)  # batch_size counts views
  new_state, metrics = jax.eval_shape(step, abstract, batch)
  assert metrics['loss'].shape == () and new_state.step.shape == ()
  if not real_step:
    return
  config.batch_size = 2 * views
  small = assembly.Trainer(config, devices=jax.devices()[:1])
  state = small.init_state(small.abstract_state())
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, views, size, size, 3)).astype(np.float32)
  real = {'image': jnp.asarray(images), 'label': jnp.zeros((2,), jnp.int32),
          'valid': jnp.ones((2,), bool)}
  compiled, _ = small.compile_step(small.abstract_state(), assembly.abstract_batch(config))
  before = jax.device_get(state.method_state)  # the step donates the state
  new, metrics = compiled(state, real)
  assert np.isfinite(float(metrics['loss'])), metrics
  if module == 'dv2':
    assert float(metrics['patch_vocabulary/entries_used']) >= 1
    assert not np.array_equal(np.asarray(new.method_state['patch_vocabulary']['mass']),
                              before['patch_vocabulary']['mass'])


# -- end to end ----------------------------------------------------------------------


@pytest.mark.slow  # not e2e: the README tier runs the tiny config in test_golden
def test_dv2_resumes_exactly_with_its_vocabularies_and_probes(data_dir, tmp_path):
  """The tiny model (smaller vocabularies, batch 16 versions): a run stopped
  at a checkpoint and resumed ends with the very parameters and vocabularies
  of an uninterrupted run; a linear probe of the checkpoint trains. (Other
  device counts: the golden losses are recorded only where 1 and 8 devices
  agree, and tests/test_multihost.py holds 2 processes of 4 devices to them.)"""
  from ssl_jax.core import train
  # No evaluation monitors: they only read the parameters compared below, and
  # cost this test 20 s on a quiet machine.
  config = small_method_config('dv2', 'tiny', data_dir, **{
      'dv2.vocabulary.size': 64, 'batch_size': 16, 'eval.monitors': ()})
  whole = train.run(config, str(tmp_path / 'whole'))
  parts = str(tmp_path / 'parts')
  assert train.run(config, parts, stop_after=2).last_step == 2
  second = train.run(config, parts)
  assert second.first_step == 2
  for a, b in zip(jax.tree.leaves((second.state.params, second.state.method_state)),
                  jax.tree.leaves((whole.state.params, whole.state.method_state)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  vocab = whole.state.method_state['patch_vocabulary']
  assert float(np.asarray(vocab['mass']).max()) > 1.0  # fed

  from configs import dv2
  probe = dv2.linear_probe_config('tiny')
  probe.backbone.dv2 = config.dv2
  probe.data.update(dict(name='ssl_jax_shapes/small', data_dir=data_dir,
                         held_out_examples=48))
  probe.init.workdir = str(tmp_path / 'whole')
  probe.update(dict(total_steps=2, batch_size=16, log_every=1))
  probe.classifier.whiten_examples = 64
  probe.optimizer.warmup_steps = 0
  probe.checkpoint.every = 2
  probe.eval.update(dict(split='test[:48]', batch_size=48))
  out = train.run(probe, str(tmp_path / 'probe'))
  assert 0 <= out.evaluation['eval/top1'] <= 1
