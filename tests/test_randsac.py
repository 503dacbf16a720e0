"""RandSAC: the masks hide later segments from every architecture, the skip
connections' shapes, the loss, the paper's settings at full size, config
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unoptimised_jit

from ssl_jax.core import validation
from ssl_jax.methods.randsac.method import RandSAC
from ssl_jax.nn.patches import normalise_patches, patch_vectors


def small_randsac_config(**overrides):
  """configs/randsac.py:tiny shrunk: 16x16 images in 2x2 patches (8x8
  tokens), 2 encoder layers 16 wide, 1 decoder layer."""
  from configs import randsac
  from tests.conftest import _override
  c = randsac.get_config('tiny')
  c.data.name = 'ssl_jax_shapes/small'
  c.data.image_size = 16
  c.randsac.patch_size = 2
  c.randsac.model.update(dict(width=16, num_layers=2, heads=2, decoder_layers=1,
                              decoder_heads=2))
  return _override(c, overrides)


def _images(b=4, size=16, key=0):
  return jax.random.uniform(jax.random.key(key), (b, size, size, 3))


@pytest.mark.parametrize('architecture,kind,counts', [
    ('masked', 'square', (16, 4)), ('masked_skip', 'square', (16, 4)),
    ('two_stream', 'square', (16, 4)), ('masked_skip', 'blob', (7,)),
    ('two_stream', 'blob', (7, 3))])
def test_predictions_never_see_later_segments(architecture, kind, counts):
  """Perturb the pixels of every segment from rank r on: the predictions of
  segments up to r (which may read only segments < r) do not move, those of
  segment r + 1 do (so the test can fail)."""
  config = small_randsac_config(**{'randsac.model.architecture': architecture,
                                   'randsac.segments.kind': kind,
                                   'randsac.segments.counts': counts})
  obj = RandSAC(config)
  batch = {'image': _images()}
  params = unoptimised_jit(obj.init)(jax.random.key(0), batch)
  ser = jax.jit(obj.serialise, static_argnums=1)(jax.random.key(1), 4)
  forward = unoptimised_jit(lambda p, x: obj.forward(p, x, ser)[0])
  patches = patch_vectors(batch['image'], 2)
  # The segment rank of every token (row-major).
  token_rank = jnp.zeros_like(ser.rank).at[jnp.arange(4)[:, None], ser.order].set(ser.rank)
  _, _, _, tgt_rank = obj.split(ser)
  r = 2
  noise = jax.random.normal(jax.random.key(2), patches.shape)
  perturbed = jnp.where((token_rank >= r)[..., None], noise, patches)
  before, after = np.asarray(forward(params, patches)), np.asarray(forward(params, perturbed))
  early = np.asarray(tgt_rank <= r)
  np.testing.assert_allclose(before[early], after[early], atol=1e-5)
  later = np.asarray(tgt_rank == r + 1)
  assert later.any() and np.abs(before[later] - after[later]).max() > 1e-3


def test_skip_connection_shapes_and_start():
  config = small_randsac_config(**{'randsac.model.num_layers': 3,
                                   'randsac.model.decoder_layers': 2})
  params = jax.eval_shape(RandSAC(config).init, jax.random.key(0), {'image': _images(2)})
  assert params['skip']['weights'].shape == (2, 3)  # [decoder layers, encoder layers]
  w = np.asarray(jax.jit(lambda: jax.tree.map(
      lambda x: x, RandSAC(config).init(jax.random.key(0), {'image': _images(2)})))(
      )['skip']['weights'])
  assert (w == np.array([[0, 0, 1], [0, 0, 1]])).all()  # starts as the last layer
  assert sorted(k for k in params['skip'] if k.startswith('norm')) == ['norm1', 'norm2']
  plain = RandSAC(small_randsac_config(**{'randsac.model.architecture': 'masked'}))
  assert 'skip' not in jax.eval_shape(plain.init, jax.random.key(0), {'image': _images(2)})
  two = RandSAC(small_randsac_config(**{'randsac.model.architecture': 'two_stream'}))
  params = jax.eval_shape(two.init, jax.random.key(0), {'image': _images(2)})
  assert not any(k.startswith('decoder') for k in params)
  assert sorted(k for k in params if k.startswith('block')) == ['block1', 'block2', 'block3']


def test_norm_pix_targets_and_loss_weights():
  x = patch_vectors(_images(2), 2)
  t = normalise_patches(x)
  np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(t.std(-1), 1, atol=1e-2)
  obj = RandSAC(small_randsac_config(**{'randsac.segments.kind': 'blob',
                                        'randsac.segments.counts': (5,)}))
  batch = {'image': _images(4)}
  params = unoptimised_jit(obj.init)(jax.random.key(0), batch)
  loss_fn = unoptimised_jit(lambda b: obj.loss(params, b, jax.random.key(1), train=False)[0])
  full = loss_fn(dict(batch, valid=jnp.array([True, True, False, False])))
  # Padded examples do not count: the loss equals that of the valid ones...
  half = loss_fn({'image': batch['image'].at[2:].set(batch['image'][:2]),
                  'valid': jnp.array([True, True, False, False])})
  np.testing.assert_allclose(full, half, rtol=1e-6)
  # ...and the first segment is never predicted: changing the model's
  # predictions for it (through its own pixels only) cannot move the loss.
  assert np.isfinite(float(full)) and 0.5 < float(full) < 5


def test_representations_average_whole_images():
  obj = RandSAC(small_randsac_config())
  batch = {'image': _images(3)}
  params = unoptimised_jit(lambda k, b: obj.init(k, b, decoder=False))(jax.random.key(0), batch)
  assert sorted(params) == ['block1', 'block2', 'final_norm', 'patch_embed']
  feats = jax.jit(obj.represent)(params, batch)
  assert set(feats) == set(obj.representations()) == {'encoder', 'layer_1', 'layer_2'}
  assert all(v.shape == (3, 16) for v in feats.values())
  with pytest.raises(ValueError, match='mask_ratio'):
    obj.represent(params, batch, mask_ratio=0.1)


# Table 10 reports encoder / decoder parameters of 5M / 2M (ViT-T, CIFAR-10)
# and 21M / 9M (ViT-S, ImageNet-100): 3 decoder layers for ViT-T, 4 for ViT-S.
@pytest.mark.slow
@pytest.mark.parametrize('variant,encoder,decoder,grid', [
    ('cifar10', 5.35e6, 1.79e6, 8), ('imagenet100', 21.6e6, 9.76e6, 14),
    ('', 85.8e6, 75.6e6, 12)])
def test_paper_settings_build_at_full_size(variant, encoder, decoder, grid):
  """Full-size states and a train step traced with jax.eval_shape."""
  from configs import randsac
  from ssl_jax.core import step as step_lib
  from ssl_jax.core import assembly
  config = randsac.get_config(variant)
  if config.data.name == 'folder':
    config.data.data_dir = '/imagenet100'
  trainer = assembly.Trainer(config, num_classes=10)
  abstract = trainer.abstract_state()
  params = abstract.params['model']
  count = lambda keys: sum(int(np.prod(x.shape)) for k in keys  # noqa: E731
                           for x in jax.tree.leaves(params[k]))
  enc = count([k for k in params if k.startswith(('block', 'patch_embed', 'final_norm'))])
  dec = count([k for k in params if k.startswith(('decoder', 'skip', 'pixels'))])
  assert abs(enc - encoder) / encoder < 0.02, enc
  assert abs(dec - decoder) / decoder < 0.02, dec
  assert trainer.task.method.grid == (grid, grid)
  step = step_lib.make_train_step(trainer.task, trainer.tx, trainer.lr_schedule, 0)
  new_state, metrics = jax.eval_shape(step, abstract, assembly.abstract_batch(config))
  assert metrics['loss'].shape == () and new_state.step.shape == ()


@pytest.mark.parametrize('key,value,match', [
    ('randsac.segments.counts', (9,), 'do not tile the 8x8 token grid; square counts'),
    ('randsac.segments.counts', (16, 16), 'decreasing'),
    ('randsac.segments.counts', (1,), 'one segment leaves nothing'),
    ('randsac.segments.kind', 'hexagon', "one of 'square', 'blob'"),
    ('randsac.segments.blob_std', (0.0, 1.0), '0 < lo <= hi'),
    ('randsac.model.architecture', 'xlnet', "'masked', 'masked_skip', 'two_stream'"),
    ('randsac.model.width', 18, 'multiple of 4'),
    ('randsac.patch_size', 5, 'divides data.image_size=16'),
])
def test_bad_config_values_fail_with_the_key(key, value, match):
  config = small_randsac_config(**{key: value})
  with pytest.raises(validation.ConfigError, match=match) as e:
    validation.validate(config, 1)
  assert key in str(e.value)


def test_raster_blobs_and_unnested_squares_are_rejected():
  config = small_randsac_config(**{'randsac.segments.kind': 'blob',
                                   'randsac.segments.order': 'raster'})
  with pytest.raises(validation.ConfigError, match='blobs have no raster order'):
    validation.validate(config, 1)
  # On 12x12 tokens, 16 squares are 3x3 and 9 are 4x4: they do not nest.
  config = small_randsac_config(**{'data.image_size': 24, 'randsac.segments.counts': (16, 9)})
  with pytest.raises(validation.ConfigError, match='do not nest'):
    validation.validate(config, 1)


def _finetune_config(data_dir, init_workdir=None, **overrides):
  """configs/finetune.py:randsac's recipe (D.3) on small_randsac_config's
  network."""
  from configs import common, finetune
  from tests.conftest import _override
  c = common.classification_config(small_randsac_config(**{'data.data_dir': data_dir}),
                                   mode='finetune')
  recipe = finetune.get_config('randsac')  # the whole D.3 recipe
  c.classifier.update(recipe.classifier.to_dict())
  c.optimizer.update(recipe.optimizer.to_dict())
  c.optimizer.lr = 1e-3
  c.data.randaugment = recipe.data.randaugment
  c.backbone.randsac.model.drop_path = recipe.backbone.randsac.model.drop_path
  c.init.workdir = init_workdir
  c.update(dict(total_steps=2, batch_size=16, log_every=1))
  c.data.held_out_examples = 0
  c.optimizer.warmup_steps = 1
  c.checkpoint.every = 2
  c.eval.update(dict(split='test[:48]', batch_size=48, every=0))
  return _override(c, overrides)


def test_finetune_recipe_layer_decay_scales(data_dir):
  from ssl_jax.core import assembly, optim
  config = _finetune_config(data_dir)
  trainer = assembly.Trainer(config, num_classes=10)
  params = trainer.abstract_state().params
  task = trainer.task
  scales = optim.layer_decay_scales(params, task.layer_of, task.depth, 0.65)
  d, depth = 0.65, 2
  assert scales['backbone']['patch_embed']['kernel'] == pytest.approx(d ** (depth + 1))
  assert scales['backbone']['block1']['norm1']['scale'] == pytest.approx(d ** depth)
  assert scales['backbone']['block2']['mlp']['Dense_0']['kernel'] == pytest.approx(d)
  assert scales['backbone']['final_norm']['scale'] == 1.0
  assert scales['head']['classifier']['kernel'] == 1.0
  bad = _finetune_config(data_dir, **{'classifier.layer_decay': 0.0})
  with pytest.raises(validation.ConfigError, match='layer_decay'):
    validation.validate(bad, 1)


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_pretraining_pictures_and_finetune_end_to_end(data_dir, tmp_path):
  """A few RandSAC steps on 8 devices: the loss falls, metrics, checkpoints
  and the PNG pictures exist; the fine-tune recipe (Mixup/CutMix,
  RandAugment, layer decay, drop path) then starts from the checkpoint."""
  import json
  import os

  from ssl_jax import drawing
  from ssl_jax.core import train
  workdir = str(tmp_path / 'pretrain')
  config = small_randsac_config(**{
      'data.data_dir': data_dir, 'total_steps': 10, 'batch_size': 16, 'log_every': 1,
      'checkpoint.every': 10, 'optimizer.warmup_steps': 2, 'optimizer.lr': 3e-3})
  config.eval.update(dict(split='test[:48]', train_split='train[:96]', batch_size=48,
                          every=0, monitors=('knn',), knn_k=5))
  result = train.run(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    losses = [r['loss'] for r in map(json.loads, f) if 'loss' in r]
  assert len(losses) == 10 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
  assert 'knn/top1' in result.evaluation
  png = drawing.png_path(workdir, 10)
  assert os.path.getsize(png) > 1000
  import tensorflow as tf
  image = tf.io.decode_png(tf.io.read_file(png)).numpy()
  # 8 rows of four 128-pixel panels (16x16 images upscaled x8).
  assert image.shape == (8 * 128 + 7 * 2, 4 * 128 + 3 * 2, 3)

  ft = _finetune_config(data_dir, init_workdir=workdir)
  out = train.run(ft, str(tmp_path / 'finetune'))
  assert set(out.evaluation) >= {'eval/top1', 'eval/top5'}


# The ablation rows of configs/randsac.py's docstring, as overrides of a
# variant; each must be a valid config (no run: validation only).
ABLATIONS = {
    'pixel-raster (T1)': ('cifar10_ablation', {'randsac.patch_size': 1,
                                               'randsac.segments.counts': (1024,),
                                               'randsac.segments.order': 'raster'}),
    'patch-raster (T1, T2)': ('cifar10_ablation', {'randsac.segments.counts': (64,),
                                                   'randsac.segments.order': 'raster'}),
    'patch-random (T2, T3 M=1, T4)': ('cifar10_ablation', {'randsac.segments.counts': (64,)}),
    'IN100 patch-raster (T2)': ('imagenet100', {'randsac.segments.kind': 'square',
                                                'randsac.segments.counts': (196,),
                                                'randsac.segments.order': 'raster'}),
    'square M=4 (T3, T6)': ('cifar10_ablation', {'randsac.segments.counts': (4,)}),
    'blob K=11 (T5)': ('cifar10_ablation', {'randsac.segments.kind': 'blob',
                                            'randsac.segments.counts': (11,)}),
    'blob shuffle K=9 (T5)': ('cifar10_ablation', {'randsac.segments.kind': 'blob',
                                                   'randsac.segments.counts': (9,),
                                                   'randsac.segments.coherent': False}),
    'square 16->4 (T6)': ('cifar10_ablation', {'randsac.segments.counts': (16, 4)}),
    'blob 7->3 (T6)': ('cifar10_ablation', {'randsac.segments.kind': 'blob',
                                            'randsac.segments.counts': (7, 3)}),
    'deeper 64->16->4': ('cifar10_ablation', {'randsac.segments.counts': (64, 16, 4)}),
    'patch size 2 (T9)': ('cifar10_ablation', {'randsac.patch_size': 2,
                                               'randsac.segments.counts': (256,)}),
    'patch size 16 (T9)': ('cifar10_ablation', {'randsac.patch_size': 16,
                                                'randsac.segments.counts': (4,)}),
    'two-stream (T10)': ('cifar10', {'randsac.model.architecture': 'two_stream'}),
    'masked with skips (T10)': ('imagenet100', {'randsac.model.architecture': 'masked_skip'}),
    'IN100 squares at 192': ('imagenet100', {'data.image_size': 192,
                                            'randsac.segments.kind': 'square'}),
}


@pytest.mark.parametrize('row', sorted(ABLATIONS))
def test_ablation_rows_are_valid_overrides(row):
  from configs import randsac
  from tests.conftest import _override
  variant, overrides = ABLATIONS[row]
  config = _override(randsac.get_config(variant), overrides)
  if config.data.name == 'folder':
    config.data.data_dir = '/imagenet100'
  validation.validate(config, 8)


def test_backbone_fine_tunes_at_another_resolution():
  """Sine-cosine position encodings have no parameters: the ImageNet
  backbone pretrained at 192 (12x12 tokens) fine-tunes at 224 (14x14, where
  16 -> 4 squares do not tile), with the same parameter shapes."""
  import json
  from configs import finetune
  from ssl_jax import tasks
  from ssl_jax.config.checks import flatten, to_json
  from ssl_jax.core import assembly
  from configs import randsac
  pretrain = randsac.get_config('')
  c = finetune.get_config('randsac')
  c.data.image_size = 224
  validation.validate(c, 8)
  saved = flatten(json.loads(to_json(pretrain)))
  assert tasks.architecture_mismatch(saved, flatten(json.loads(to_json(c.backbone)))) == []
  tiny = finetune.get_config('randsac_tiny')
  shapes = []
  for size in (32, 48):
    tiny.data.image_size = size
    params = assembly.Trainer(tiny, num_classes=10).abstract_state().params['backbone']
    shapes.append(jax.tree.map(lambda a: a.shape, params))
  assert shapes[0] == shapes[1]
