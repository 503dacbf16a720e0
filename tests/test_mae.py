"""MAE: the masking's counts and draws, an encoder that reads the visible
patches only, positions that follow the cell, the loss against numpy, the
representations, config checks, ViT-B at full size, and an end-to-end run
that resumes exactly and probes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _override, small_method_config, unoptimised_jit

from ssl_jax.config.checks import ConfigError
from ssl_jax.methods.mae.method import MAE, visible_count
from ssl_jax.nn.patches import normalise_patches, patch_vectors


def _config(**overrides):
  """The tiny config with a smaller network (fast to compile)."""
  from configs import mae
  c = mae.get_config('tiny')
  c.mae.model.update(dict(width=16, depth=2, heads=2, decoder_width=16, decoder_depth=1,
                          decoder_heads=2))
  return _override(c, overrides)


def _batch(b=4, size=32, seed=0):
  images = np.random.default_rng(seed).uniform(size=(b, size, size, 3))
  return {'image': jnp.asarray(images, jnp.float32), 'label': jnp.zeros((b,), jnp.int32),
          'valid': jnp.ones((b,), bool)}


@pytest.fixture(scope='module')
def method():
  m = MAE(_config())
  params = unoptimised_jit(lambda k, b: m.init(k, b))(jax.random.key(0), _batch())
  return m, params


def test_visible_counts_round_as_maes_random_masking():
  assert visible_count(196, 0.75) == 49 and visible_count(64, 0.75) == 16
  assert visible_count(64, 0.9) == 6  # int(6.4)
  m = MAE(_config())
  cells = m.split(jax.random.key(0), 512)
  vis, msk = np.asarray(cells.visible), np.asarray(cells.masked)
  assert vis.shape == (512, 16) and msk.shape == (512, 48)
  for v, k in zip(vis, msk):
    assert sorted(v.tolist() + k.tolist()) == list(range(64))
  # Every cell equally likely to be visible, and different per example.
  counts = np.bincount(vis.ravel(), minlength=64) / 512
  assert np.abs(counts - 0.25).max() < 0.08
  assert len({tuple(v) for v in vis}) == 512
  again = m.split(jax.random.key(0), 512)
  np.testing.assert_array_equal(np.asarray(again.visible), vis)


def test_the_encoder_reads_the_visible_patches_only(method):
  m, params = method
  batch = _batch()
  patches = patch_vectors(batch['image'], m.patch)
  cells = m.split(jax.random.key(3), 4)
  rows = jnp.arange(4)[:, None]
  noise = jax.random.uniform(jax.random.key(4), (4, 48, patches.shape[-1]), minval=-1.0)
  changed = patches.at[rows, cells.masked].set(noise)
  forward = unoptimised_jit(lambda x: m.forward(params, x, cells, train=False))
  pred, tokens = forward(patches)
  pred2, tokens2 = forward(changed)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(tokens2))
  np.testing.assert_array_equal(np.asarray(pred), np.asarray(pred2))
  # A visible patch changes what the decoder predicts.
  pred3, _ = forward(patches.at[rows, cells.visible[:, :1]].set(0.3))
  assert np.abs(np.asarray(pred3) - np.asarray(pred)).max() > 1e-4


def test_positions_follow_the_cell_not_the_slot(method):
  """Visible cells given in another order give the same token per cell (the
  position embedding is the cell's), and so the same predictions."""
  m, params = method
  patches = patch_vectors(_batch()['image'], m.patch)
  cells = m.split(jax.random.key(5), 4)
  perm = np.random.default_rng(0).permutation(16)
  shuffled = cells._replace(visible=cells.visible[:, perm])
  forward = unoptimised_jit(lambda c: m.forward(params, patches, c, train=False))
  pred, tokens = forward(cells)
  pred2, tokens2 = forward(shuffled)
  np.testing.assert_allclose(np.asarray(tokens2[:, 1:]), np.asarray(tokens[:, 1:][:, perm]),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(pred2), np.asarray(pred), atol=1e-5)
  assert 'pos_embed' not in params['vit']  # fixed sine-cosine, not learned


@pytest.mark.parametrize('norm_pix', [True, False])
def test_the_loss_is_the_masked_patches_mse_against_numpy(norm_pix):
  m = MAE(_config(**{'mae.norm_pix_loss': norm_pix}))
  batch = _batch()
  batch['valid'] = jnp.array([True, True, True, False])
  params = unoptimised_jit(m.init)(jax.random.key(0), batch)
  k_mask, _ = jax.random.split(jax.random.key(7))
  cells = m.split(k_mask, 4)
  patches = patch_vectors(batch['image'], m.patch)
  loss, pred = unoptimised_jit(lambda p: (
      m.loss(p, batch, jax.random.key(7), train=False)[0],
      m.forward(p, patches, cells, train=False)[0]))(params)
  features = jax.eval_shape(lambda: m.loss(params, batch, jax.random.key(7),
                                           train=False)[1].features)
  p = np.asarray(patches, np.float64)
  if norm_pix:
    p = (p - p.mean(-1, keepdims=True)) / np.sqrt(p.var(-1, keepdims=True) + 1e-6)
  target = np.take_along_axis(p, np.asarray(cells.masked)[..., None], axis=1)
  per = ((np.asarray(pred, np.float64) - target) ** 2).mean(axis=(1, 2))
  np.testing.assert_allclose(float(loss), per[:3].mean(), rtol=1e-5)
  assert set(features) == {'cls', 'tokens'}


def test_normalised_patches_have_zero_mean_and_unit_variance():
  x = patch_vectors(_batch()['image'], 4)
  t = np.asarray(normalise_patches(x))
  np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(t.var(-1), 1, atol=1e-3)


def test_representations_read_whole_images_and_layers_map_to_blocks(method):
  m, _ = method
  enc = jax.eval_shape(lambda: m.init(jax.random.key(0), _batch(), decoder=False))
  assert set(enc) == {'vit'}  # no decoder in a probe's backbone
  out = jax.eval_shape(lambda e: m.represent(e, _batch()), enc)
  assert set(out) == set(m.representations()) == {'cls', 'tokens', 'layer_1', 'layer_2'}
  assert all(v.shape == (4, 16) and v.dtype == jnp.float32 for v in out.values())
  with pytest.raises(ValueError, match='mask_ratio'):
    jax.eval_shape(lambda e: m.represent(e, _batch(), mask_ratio=0.5), enc)
  layers = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(enc)[0]:
    keys = tuple(k.key for k in path)
    layers[keys] = m.layer_of(keys)
  assert layers[('vit', 'embed', 'kernel')] == 0 and layers[('vit', 'cls_token')] == 0
  assert layers[('vit', 'encoder', 'block2', 'LayerNorm_0', 'scale')] == 2
  assert layers[('vit', 'encoder', 'final_norm', 'scale')] == 3


def test_pictures_show_image_masked_input_and_reconstruction(method):
  m, params = method
  images = _batch()['image']
  pics = np.asarray(unoptimised_jit(lambda x: m.pictures(params, x, jax.random.key(1)))(images))
  assert pics.dtype == np.uint8 and pics.shape[0] == 4
  assert pics.shape[2] > 3 * 32  # three panels side by side


@pytest.mark.parametrize('key, value, message', [
    ('mae.mask_ratio', 1.0, 'mask_ratio'),
    ('mae.mask_ratio', 0.99, 'mask_ratio'),  # int(64 x 0.01) = 0 visible
    ('mae.model.width', 18, 'width'),
    ('mae.model.heads', 3, 'heads'),
    ('mae.model.decoder_width', 30, 'decoder_width'),
    ('mae.model.decoder_heads', 5, 'decoder_heads'),
    ('mae.patch_size', 5, 'patch_size'),
    ('mae.model.decoder_depth', 0, 'decoder_depth'),
    ('mae.model.drop_path', 1.0, 'drop_path'),
    ('online_probe.representation', 'layer_1', 'online_probe'),
])
def test_bad_keys_are_refused_by_name(key, value, message):
  from ssl_jax.core import validation
  c = _override(_config(), {key: value})
  with pytest.raises(ConfigError, match=message):
    validation.validate(c, 1)


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vit_b_at_full_size_has_maes_parameter_count():
  """ViT-B/16's encoder and MAE's 8 x 512 decoder, counted by hand: the
  encoder has timm's vit_base_patch16_224 parameters less its head and its
  (here fixed) position embeddings; the decoder as models_mae.py's."""
  from configs import mae
  m = MAE(mae.get_config())
  params = jax.eval_shape(lambda: m.init(jax.random.key(0),
                                         {'image': jnp.zeros((2, 224, 224, 3))}))

  def block(d):  # attention (q, k, v, out with biases), MLP 4x, two norms
    return 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d

  d, dd, pp = 768, 512, 16 * 16 * 3
  encoder = (pp * d + d) + d + 12 * block(d) + 2 * d
  decoder = (d * dd + dd) + dd + 8 * block(dd) + 2 * dd + (dd * pp + pp)
  assert _param_count(params['vit']) == encoder  # 85,647,360
  assert _param_count(params) - encoder == decoder


def _maes_sincos(grid, width):
  """MAE's get_2d_sincos_pos_embed, written out from its description: the
  grid built as meshgrid(columns, rows), so its first half encodes the
  column."""
  def one(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  cols, rows = np.meshgrid(np.arange(grid[1]), np.arange(grid[0]))
  return np.concatenate([one(width // 2, cols), one(width // 2, rows)], axis=1)


def test_sincos_positions_are_maes_with_the_halves_swapped():
  from ssl_jax.nn.posembed import sincos_2d
  ours, theirs = sincos_2d((3, 5), 16), _maes_sincos((3, 5), 16)
  np.testing.assert_allclose(ours[:, :8], theirs[:, 8:], atol=1e-6)  # rows
  np.testing.assert_allclose(ours[:, 8:], theirs[:, :8], atol=1e-6)  # columns
  assert not np.allclose(ours, theirs)


def test_initialisation_is_maes(method):
  m, params = method
  d = 16
  bound = np.sqrt(6 / (d + 4 * d))  # Xavier-uniform of a d -> 4d kernel
  k = np.asarray(params['vit']['encoder']['block1']['MlpBlock_0']['Dense_0']['kernel'])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.8 * bound
  assert np.all(np.asarray(params['vit']['encoder']['block1']['MlpBlock_0']['Dense_0']['bias'])
                == 0)
  tokens = np.concatenate([np.asarray(params['vit']['cls_token']),
                           np.asarray(params['mask_token']['token'])])
  assert 0.005 < tokens.std() < 0.04  # normal(0.02), 32 draws


def test_the_recipe_is_the_papers():
  """configs/mae.py's ImageNet variants against the paper and its code
  (PRETRAIN.md, FINETUNE.md)."""
  from configs import finetune, linear_probe, mae
  c = mae.get_config()
  assert (c.batch_size, c.optimizer.b2, c.optimizer.weight_decay) == (4096, 0.95, 0.05)
  assert c.optimizer.lr == pytest.approx(1.5e-4 * 4096 / 256)
  assert c.total_steps == -(-1600 * 1_281_167 // 4096)
  assert c.optimizer.warmup_steps == -(-40 * 1_281_167 // 4096)
  assert (c.mae.mask_ratio, c.mae.norm_pix_loss, c.data.min_area) == (0.75, True, 0.2)
  assert (c.mae.model.decoder_width, c.mae.model.decoder_depth, c.mae.model.decoder_heads) == (
      512, 8, 16)
  p = linear_probe.get_config('mae')
  assert (p.batch_size, p.optimizer.name, p.classifier.representation) == (16384, 'lars', 'cls')
  assert p.optimizer.lr == pytest.approx(0.1 * 16384 / 256)
  f = finetune.get_config('mae')
  assert f.optimizer.lr == pytest.approx(5e-4 * 1024 / 256) and f.batch_size == 1024
  assert (f.classifier.layer_decay, f.backbone.mae.model.drop_path) == (0.65, 0.1)
  assert (f.classifier.mixup, f.classifier.cutmix, f.classifier.label_smoothing) == (
      0.8, 1.0, 0.1)
  assert (f.optimizer.b1, f.optimizer.b2) == (0.9, 0.999)


def test_fine_tuning_drops_paths_and_evaluation_does_not():
  """Two keys drop different paths in training; evaluation drops none: it
  is the network without drop-path, on the same parameters."""
  m = MAE(_config(**{'mae.model.drop_path': 0.5}))
  plain = MAE(_config())
  enc = unoptimised_jit(lambda k, b: m.init(k, b, decoder=False))(jax.random.key(0), _batch())
  train = unoptimised_jit(lambda p, b, k: m.represent(p, b, train=True, rng=k)['tokens'])
  a, b = (np.asarray(train(enc, _batch(), jax.random.key(s))) for s in (1, 2))
  assert np.abs(a - b).max() > 1e-4
  evaluate = unoptimised_jit(lambda p, b: (m.represent(p, b)['tokens'],
                                           plain.represent(p, b)['tokens']))
  dropped, undropped = evaluate(enc, _batch())
  np.testing.assert_array_equal(np.asarray(dropped), np.asarray(undropped))


@pytest.mark.slow
def test_paper_setting_steps_on_synthetic_data():
  """The ImageNet config's abstract train step, then one real step at a
  small batch on one device."""
  from configs import mae
  from ssl_jax.core import assembly
  from ssl_jax.core import step as step_lib
  config = mae.get_config()
  trainer = assembly.Trainer(config)
  abstract = trainer.abstract_state()
  step = step_lib.make_train_step(trainer.task, trainer.tx, trainer.lr_schedule, 0)
  _, metrics = jax.eval_shape(step, abstract, assembly.abstract_batch(config))
  assert metrics['loss'].shape == ()
  config.batch_size = 2
  small = assembly.Trainer(config, devices=jax.devices()[:1])
  state = small.init_state(small.abstract_state())
  images = np.random.default_rng(0).uniform(size=(2, 224, 224, 3)).astype(np.float32)
  real = {'image': jnp.asarray(images), 'label': jnp.zeros((2,), jnp.int32),
          'valid': jnp.ones((2,), bool)}
  compiled, _ = small.compile_step(small.abstract_state(), assembly.abstract_batch(config))
  _, metrics = compiled(state, real)
  assert np.isfinite(float(metrics['loss'])), metrics


@pytest.mark.slow
@pytest.mark.e2e
def test_mae_resumes_exactly_and_probes(data_dir, tmp_path):
  """A run stopped at a checkpoint and resumed ends with the very
  parameters of an uninterrupted one; a linear probe and a fine-tune of the
  checkpoint train. (Other device counts: the golden losses are recorded
  only where 1 and 8 devices agree, and tests/test_multihost.py holds 2
  processes of 4 devices to them.)"""
  from configs import mae
  from ssl_jax.core import train
  config = small_method_config('mae', 'tiny', data_dir, batch_size=8,
                               **{'mae.model.depth': 2, 'mae.model.decoder_depth': 1})
  whole = train.run(config, str(tmp_path / 'whole'))
  parts = str(tmp_path / 'parts')
  assert train.run(config, parts, stop_after=2).last_step == 2
  second = train.run(config, parts)
  for a, b in zip(jax.tree.leaves(second.state.params), jax.tree.leaves(whole.state.params),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  for kind in ('linear_probe', 'finetune'):
    probe = getattr(mae, f'{kind}_config')('tiny')
    probe.backbone.mae = config.mae
    probe.data.update(dict(name='ssl_jax_shapes/small', data_dir=data_dir,
                           held_out_examples=48))
    probe.init.workdir = str(tmp_path / 'whole')
    probe.update(dict(total_steps=2, batch_size=16, log_every=1))
    if kind == 'linear_probe':
      probe.classifier.whiten_examples = 64
    probe.optimizer.warmup_steps = 0
    probe.checkpoint.every = 2
    probe.eval.update(dict(split='test[:48]', batch_size=48))
    out = train.run(probe, str(tmp_path / kind))
    assert 0 <= out.evaluation['eval/top1'] <= 1
