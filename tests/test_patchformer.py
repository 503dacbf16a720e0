import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config, unoptimised_jit

from ssl_jax.methods import registry
from ssl_jax.methods.patchformer import augment
from ssl_jax.methods.patchformer.model import UpsamplingDecoder
from ssl_jax.nn import losses
from ssl_jax.nn.patches import patchify
from ssl_jax.nn.posembed import FactorizedPosEmbed
from ssl_jax.nn import heads, resnet
from ssl_jax.methods.patchformer import method as pf


def test_patchify_row_major():
  img = jnp.arange(4 * 4).reshape(1, 4, 4, 1).astype(jnp.float32)
  p = patchify(img, 2)
  chex.assert_shape(p, (1, 4, 2, 2, 1))
  np.testing.assert_array_equal(p[0, 1, :, :, 0], [[2, 3], [6, 7]])
  np.testing.assert_array_equal(p[0, 2, :, :, 0], [[8, 9], [12, 13]])


def test_targets_are_most_significant_bits_of_subsampled_gray():
  # A 16x16 patch whose luma is constant within each 2x2 cell.
  rng = np.random.RandomState(0)
  cells = rng.rand(8, 8).astype(np.float32)
  gray = np.kron(cells, np.ones((2, 2), np.float32))
  patch = np.repeat(gray[..., None], 3, -1)[None]  # R=G=B -> luma = value
  t = np.asarray(pf.patch_targets(jnp.asarray(patch), crop=16, size=8, bits=2))
  np.testing.assert_array_equal(t[0], np.minimum(np.floor(cells * 4), 3))
  # Centre crop 8 of 16 without subsampling.
  t = np.asarray(pf.patch_targets(jnp.asarray(patch), crop=8, size=8, bits=2))
  np.testing.assert_array_equal(t[0], np.minimum(np.floor(gray[4:12, 4:12] * 4), 3))
  # Edges: 0 -> level 0, 1 -> the top level.
  assert pf.patch_targets(jnp.ones((1, 4, 4, 3)), 4, 2, 2).max() == 3
  assert pf.patch_targets(jnp.zeros((1, 4, 4, 3)), 4, 2, 2).max() == 0


def test_soft_label_noise():
  logits = jnp.log(jnp.array([[0.7, 0.1, 0.1, 0.1]]))
  got = losses.soft_cross_entropy(logits, jnp.array([0]), 0.01)
  soft = np.array([0.99 + 0.0025, 0.0025, 0.0025, 0.0025])
  np.testing.assert_allclose(got, -(soft * np.log([0.7, 0.1, 0.1, 0.1])).sum(), rtol=1e-5)


def test_augment_range_and_independence():
  x = jax.random.uniform(jax.random.key(0), (6, 5, 8, 8, 3))
  y = augment.augment_patches(jax.random.key(1), x, augment.PatchAugment())
  chex.assert_shape(y, x.shape)
  assert float(y.min()) >= -1 and float(y.max()) <= 1
  # Same input patch, different draws per patch.
  same = jnp.broadcast_to(x[:1, :1], x.shape)
  z = augment.augment_patches(jax.random.key(1), same, augment.PatchAugment())
  assert len({np.asarray(p).tobytes() for p in z.reshape(30, -1)}) == 30


def test_quantize_levels():
  x = jnp.linspace(0, 1, 101)
  assert len(np.unique(np.asarray(augment.quantize(x, 2)))) == 4
  np.testing.assert_allclose(augment.quantize(x, 8), x, atol=1 / 510 + 1e-6)


def test_random_crops_stay_inside_patch():
  patches = jnp.arange(2 * 16 * 16).reshape(1, 2, 16, 16, 1).astype(jnp.float32)
  crops = augment.random_crops(jax.random.key(0), patches, 14)
  chex.assert_shape(crops, (1, 2, 14, 14, 1))
  for i in range(2):
    assert set(np.asarray(crops[0, i]).ravel()) <= set(np.asarray(patches[0, i]).ravel())


def test_module_shapes():
  key = jax.random.key(0)
  x = jnp.zeros((2, 3, 14, 14, 3))
  net = resnet.ResNetStacks(stage_sizes=(1, 1, 1), width=8, stem_width=8)
  (out, stages), _ = jax.eval_shape(net.init_with_output, key, x)  # shapes only
  chex.assert_shape(out, (2, 3, 128))  # width 8 * 2**2 * 4 (expansion)
  chex.assert_shape([stages['stage_1'], stages['stage_3']], [(2, 3, 14, 14, 32), (2, 3, 4, 4, 128)])
  pos = FactorizedPosEmbed((4, 5), 6)
  emb, variables = pos.init_with_output(key, jnp.array([[0, 6, 19]]))
  v = variables['params']
  np.testing.assert_allclose(emb[0, 1], v['row'][1] + v['col'][1])
  np.testing.assert_allclose(emb[0, 2], v['row'][3] + v['col'][4])
  pool = heads.AttentionPool(heads=2)
  pooled, _ = jax.eval_shape(pool.init_with_output, key, jnp.zeros((2, 7, 16)),
                             jnp.ones((2, 3, 16)))
  chex.assert_shape(pooled, (2, 7, 16))
  dec = UpsamplingDecoder(size=8, classes=4, width=8)
  logits, _ = jax.eval_shape(dec.init_with_output, key, jnp.zeros((2, 7, 16)))
  chex.assert_shape(logits, (2, 7, 8, 8, 4))


def test_resnet_norm_none_keeps_a_patch_s_contrast():
  # LayerNorm makes a patch's features invariant to its contrast (around
  # zero, with no biases before the norms); 'none' (an affine map per norm)
  # does not.
  key = jax.random.key(0)
  x = jax.random.uniform(key, (2, 4, 4, 3), minval=-0.1, maxval=0.1)
  for norm, invariant in (('layer', True), ('none', False)):
    net = resnet.ResNetStacks(stage_sizes=(1, 1), width=4, stem_width=8, norm=norm)
    params = unoptimised_jit(net.init)(key, x)
    # Nonzero residual branches (their last scales start at zero).
    params = jax.tree_util.tree_map(lambda v: v + 0.5 * (v == 0), params)
    apply = unoptimised_jit(lambda x: net.apply(params, x)[0])
    out, out4 = apply(x), apply(4 * x)
    moved = np.abs(out4 - out).max() / np.abs(out).max()
    assert (moved < 1e-3) if invariant else (moved > 0.02), (norm, moved)


@pytest.fixture(scope='module')
def small_objective():
  config = small_config()
  obj = registry.get(config.objective)(config, jnp.float32)
  batch = {'image': jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))}
  return obj, unoptimised_jit(obj.init)(jax.random.key(0), batch), batch


def test_loss_starts_near_uniform(small_objective):
  obj, params, batch = small_objective
  loss, (metrics, features, _) = jax.jit(obj.loss)(params, batch, jax.random.key(1))
  assert abs(float(loss) - np.log(4)) < 0.3
  assert 0 <= float(metrics['pixel_accuracy']) <= 1
  assert set(features) == set(obj.representations())


def test_padded_examples_do_not_count(small_objective):
  obj, params, batch = small_objective
  valid = jnp.array([True, True, False, False])
  loss_fn = jax.jit(lambda b: obj.loss(params, b, jax.random.key(1), train=False)[0])
  loss_all = loss_fn(dict(batch, valid=valid))
  loss_other = loss_fn(dict(batch, image=batch['image'].at[2:].set(0.5), valid=valid))
  np.testing.assert_allclose(loss_all, loss_other, rtol=1e-6)


def test_named_representations(small_objective):
  obj, params, batch = small_objective
  reps = jax.jit(obj.represent)(params, batch)
  assert set(reps) == set(obj.representations()) == {
      'attention_pool', 'tokens', 'patch_embed', 'layer_1'}
  for v in reps.values():
    chex.assert_shape(v, (4, 32))
  # Fine-tuning's view: 10% of the patches masked, random jitter crops.
  fine_tune_view = jax.jit(lambda p, b, k: obj.represent(p, b, rng=k, train=True,
                                                         mask_ratio=0.1))
  masked = fine_tune_view(params, batch, jax.random.key(2))
  assert not np.allclose(masked['tokens'], reps['tokens'])
  again = fine_tune_view(params, batch, jax.random.key(2))
  np.testing.assert_array_equal(masked['tokens'], again['tokens'])


@pytest.mark.slow  # over 8 s: the slow tier (the fast one stays under 4 minutes)
def test_bfloat16_compute_keeps_float32_params():
  config = small_config()
  obj = registry.get(config.objective)(config, jnp.bfloat16)
  batch = {'image': jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))}
  params = jax.jit(obj.init)(jax.random.key(0), batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  loss, _ = jax.jit(obj.loss)(params, batch, jax.random.key(1))
  assert loss.dtype == jnp.float32 and abs(float(loss) - np.log(4)) < 0.3


@pytest.mark.slow
def test_paper_setting_builds_at_full_size():
  """The default config (224x224, ResNet-41, 10x1024 transformer) traced
  with jax.eval_shape: no compilation, no memory."""
  from configs import patchformer
  from ssl_jax.core import step as step_lib
  from ssl_jax.core import assembly
  config = patchformer.get_config()
  trainer = assembly.Trainer(config)
  abstract = trainer.abstract_state()
  params = abstract.params['model']
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  # 125.9M transformer + 8.5M ResNet-41 + 12.6M attention pool + 4.6M decoder.
  assert 150e6 < n < 155e6, n
  blocks = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params['transformer']))
  assert abs(blocks - 10 * 12 * 1024**2) / blocks < 0.01, blocks
  enc = sum(int(np.prod(x.shape)) for x in
            jax.tree.leaves(params['patch_encoder']))
  assert 8.0e6 < enc < 9.0e6, enc  # ResNet-50's first three stacks: 8.5M
  step = step_lib.make_train_step(trainer.task, trainer.tx, trainer.lr_schedule, 0)
  new_state, metrics = jax.eval_shape(step, abstract, assembly.abstract_batch(config))
  assert metrics['loss'].shape == () and new_state.step.shape == ()
  obj = trainer.task.method
  assert (obj.grid, obj.n_masked, obj.n_patches) == ((14, 14), 116, 196)
