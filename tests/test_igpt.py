"""iGPT: the palette (k-means, quantisation, files), the causal and BERT
masks, the key/value cache, parameter counts at full size, config errors,
logistic-regression probes, and a small end-to-end run with pictures,
samples, the layer sweep, the low-data probe and a fine-tune."""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unoptimised_jit

from ssl_jax.core import validation
from ssl_jax.methods.igpt import palette as palette_lib
from ssl_jax.methods.igpt.model import GPT, shift_right
from ssl_jax.methods.igpt.method import IGPT


def small_igpt_config(**overrides):
  """configs/igpt.py:tiny shrunk: 8x8 images (64 tokens), 2 layers 32 wide,
  a 64-colour palette fitted on a few images."""
  from configs import igpt
  from tests.conftest import _override
  c = igpt.get_config('tiny')
  c.data.name = 'ssl_jax_shapes/small'
  c.data.image_size = 8
  c.igpt.vocab_size = 64
  c.igpt.model.update(dict(width=32, num_layers=2, heads=2, context=64))
  c.igpt.palette.update(dict(fit_images=64, fit_pixels=4096, fit_iterations=5))
  return _override(c, overrides)


def _random_palette(k=64, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (k, 3)).astype(np.float32)


# -- the palette -----------------------------------------------------------------


def test_quantise_is_the_nearest_centroid_and_round_trips():
  palette = _random_palette(512)
  images = np.random.default_rng(1).uniform(0, 1, (2, 9, 7, 3)).astype(np.float32)
  got = np.asarray(jax.jit(palette_lib.quantise)(images, palette))
  x = images * 2 - 1
  brute = np.argmin(((x[..., None, :] - palette) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(got, brute)
  assert got.shape == (2, 9, 7) and got.dtype == np.int32
  # Pixels that are centroids come back exactly.
  tokens = np.random.default_rng(2).integers(0, 512, (3, 5))
  colours = np.asarray(palette_lib.dequantise(jnp.asarray(tokens), palette))
  np.testing.assert_allclose(colours, (palette[tokens] + 1) / 2, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(palette_lib.quantise(colours, palette)), tokens)


def test_kmeans_finds_separated_clusters_deterministically():
  rng = np.random.default_rng(0)
  centres = np.array([[-0.8, -0.8, -0.8], [0.8, 0.8, 0.8], [0.8, -0.8, 0.0],
                      [-0.5, 0.7, -0.2]], np.float32)
  pixels = (centres[rng.integers(0, 4, 3000)] + rng.normal(0, 0.02, (3000, 3))).astype(
      np.float32)
  found, stats = palette_lib.kmeans(pixels, 4, iterations=10, seed=0)
  order = np.lexsort(found.T[::-1])
  np.testing.assert_allclose(found[order], centres[np.lexsort(centres.T[::-1])], atol=0.01)
  assert stats['mean_squared_error'] < 0.01 and stats['empty_clusters_last_iteration'] == 0
  again, _ = palette_lib.kmeans(pixels, 4, iterations=10, seed=0)
  np.testing.assert_array_equal(found, again)


def test_palette_files_load_and_bad_files_fail_clearly(tmp_path):
  good = str(tmp_path / 'p.npy')
  palette_lib.save(good, _random_palette(), {'data': 'test'})
  np.testing.assert_array_equal(palette_lib.load(good, 64), _random_palette())
  with open(str(tmp_path / 'p.json')) as f:
    assert json.load(f)['k'] == 64
  with pytest.raises(palette_lib.PaletteError, match='does not exist.*ssl_jax.palette'):
    palette_lib.load(str(tmp_path / 'missing.npy'), 64)
  with pytest.raises(palette_lib.PaletteError, match='vocabulary is igpt.vocab_size=512'):
    palette_lib.load(good, 512)
  bad = {'text.npy': b'not an array',
         'shape.npy': np.zeros((64, 4), np.float32),
         'nan.npy': np.full((64, 3), np.nan, np.float32),
         'range.npy': np.full((64, 3), 3.0, np.float32)}
  messages = {'text.npy': 'not a .npy array', 'shape.npy': r'shape \(64, 4\)',
              'nan.npy': 'NaN or Inf', 'range.npy': r'scaled to \[-1, 1\]'}
  for name, content in bad.items():
    path = str(tmp_path / name)
    if isinstance(content, bytes):
      with open(path, 'wb') as f:
        f.write(content)
    else:
      np.save(path, content)
    with pytest.raises(palette_lib.PaletteError, match=messages[name]):
      palette_lib.load(path, 64)


# -- the network -----------------------------------------------------------------


@pytest.fixture(scope='module')
def small_net():
  net = GPT(vocab=64, context=16, width=16, num_layers=2, heads=2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)), jnp.int32)
  params = unoptimised_jit(net.init)(jax.random.key(0), tokens)['params']
  # The output embedding starts at zero: move every weight off its init.
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape),
                        params)
  return net, params, tokens


def test_changing_a_token_changes_no_earlier_prediction(small_net):
  net, params, tokens = small_net
  apply = unoptimised_jit(lambda t: net.apply({'params': params}, shift_right(t))[0])
  t = 9
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % 64)
  before, after = np.asarray(apply(tokens)), np.asarray(apply(changed))
  np.testing.assert_allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-6)
  assert np.abs(before[:, t + 1:] - after[:, t + 1:]).max() > 1e-3


def test_cached_decoding_matches_the_full_forward_pass(small_net):
  net, params, tokens = small_net
  variables = {'params': params}
  apply = jax.jit(net.apply)  # the index traced: one compile for every step
  full = apply(variables, shift_right(tokens))[0]
  inputs = shift_right(tokens)
  cache = net.init_cache(2, 16)
  (logits, cache), _ = apply(variables, inputs[:, :5], cache=cache, index=0)
  out = [logits]
  for i in range(5, 16):
    (logits, cache), _ = apply(variables, inputs[:, i:i + 1], cache=cache, index=i)
    out.append(logits)
  np.testing.assert_allclose(np.concatenate(out, 1), full, atol=1e-5)


def test_bert_masks_have_the_configured_rate_and_only_masked_tokens_count(tmp_path):
  path = str(tmp_path / 'p.npy')
  palette_lib.save(path, _random_palette(), {})
  config = small_igpt_config(**{'igpt.objective': 'bert', 'igpt.palette.path': path})
  obj = IGPT(config)
  keep = np.asarray(obj.bert_keep(jax.random.key(0), (64, 64)))
  assert abs((~keep).mean() - 0.15) < 0.01
  assert len({tuple(row) for row in keep}) == 64  # independent per example
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  params = unoptimised_jit(obj.init)(jax.random.key(0), {'image': images})
  loss, aux = jax.jit(obj.loss)(params, {"image": images}, jax.random.key(2))
  metrics = aux.metrics
  assert 0.05 < float(metrics['mask_rate']) < 0.3 and np.isfinite(float(loss))
  # The zero-initialised output gives uniform predictions: log(vocab) per token.
  np.testing.assert_allclose(float(loss), np.log(64), rtol=1e-5)


def test_palette_initialisation_starts_close_colours_close(tmp_path):
  # token_init='palette': close colours start with close embeddings, at the
  # normal initialisation's scale; every other parameter is initialised as
  # with the default ('normal', the released model's).
  path = str(tmp_path / 'p.npy')
  colours = _random_palette()
  colours[1] = colours[0] + 0.01  # a near twin of colour 0
  palette_lib.save(path, colours, {})
  images = {'image': jnp.zeros((2, 8, 8, 3))}
  base = IGPT(small_igpt_config(**{'igpt.palette.path': path})).init(
      jax.random.key(0), images)['net']
  net = IGPT(small_igpt_config(**{'igpt.palette.path': path, 'igpt.model.token_init': 'palette'})
             ).init(jax.random.key(0), images)['net']
  wte = np.asarray(net['wte'])
  dist = np.linalg.norm(wte - wte[0], axis=1)
  assert dist[1] < 0.05 * np.median(dist[2:])
  assert abs(wte.std() - 0.02) < 1e-4
  base_dist = np.linalg.norm(np.asarray(base['wte']) - np.asarray(base['wte'][0]), axis=1)
  assert base_dist[1] > 0.5 * np.median(base_dist[2:])  # the normal init: unrelated
  for k in base:
    if k != 'wte':
      jax.tree.map(np.testing.assert_array_equal, base[k], net[k])


@pytest.mark.slow  # over 8 s: the slow tier (the fast one stays under 4 minutes)
def test_bert_evaluation_draws_fresh_masks_and_ensembles_predictions(tmp_path):
  from configs import common
  from ssl_jax.tasks.classification import Classification
  path = str(tmp_path / 'p.npy')
  palette_lib.save(path, _random_palette(), {})
  config = small_igpt_config(**{'igpt.objective': 'bert', 'igpt.palette.path': path,
                                'igpt.bert_eval_masks': 3})
  task = Classification(common.classification_config(config, mode='finetune'), 10)
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  params = task.init(jax.random.key(0), {'image': images})
  params['head'] = jax.tree.map(lambda p: jax.random.normal(jax.random.key(5), p.shape),
                                params['head'])
  batch = {'image': images}
  draws = task.backbone.represent_draws(params['backbone'], batch, jax.random.key(7))
  assert len(draws) == 3  # one per mask, and the masks differ
  assert not np.allclose(draws[0]['layer_2'], draws[1]['layer_2'])
  # Another batch's key draws other masks.
  other = task.backbone.represent_draws(params['backbone'], batch, jax.random.key(8))
  assert not np.allclose(draws[0]['layer_2'], other[0]['layer_2'])
  # Predictions: the log of the probabilities averaged over the masks.
  head = lambda f: task.head.apply({'params': params['head']}, f['layer_2'], train=False)
  want = np.log(np.mean([jax.nn.softmax(head(d)) for d in draws], 0))
  got = task.predict(params, batch, rng=jax.random.key(7))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Feature probes read the features averaged over the same masks.
  np.testing.assert_allclose(task.represent(params, batch, rng=jax.random.key(7))['layer_2'],
                             np.mean([d['layer_2'] for d in draws], 0), rtol=1e-5, atol=1e-6)
  # A fine-tune's training step reads one forward pass under one fresh mask
  # (the generative loss's), not the evaluation's ensemble.
  obj = task.backbone
  trained = obj.represent(params['backbone'], batch, rng=jax.random.key(7), train=True)
  tokens = obj.tokens(params['backbone'], images)
  keep = obj.bert_keep(jax.random.key(7), tokens.shape)
  assert (~keep).any()
  one = obj._apply(params['backbone'], tokens, keep)[1]['layer_2'].mean(1)
  np.testing.assert_allclose(trained['layer_2'], one, rtol=1e-5, atol=1e-6)
  _, _, generative = obj.generative_loss(params['backbone'], batch, jax.random.key(7))
  np.testing.assert_allclose(generative['layer_2'], one, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('variant,paper_millions', [('s', 76), ('m', 455), ('l', 1362)])
def test_parameter_counts_match_the_paper(variant, paper_millions, tmp_path):
  from configs import igpt
  path = str(tmp_path / 'p.npy')
  palette_lib.save(path, _random_palette(512), {})
  config = igpt.get_config(variant)
  config.igpt.palette.path = path
  obj = IGPT(config)
  shapes = jax.eval_shape(obj.init, jax.random.key(0),
                          {'image': jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)})
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['net']))
  assert abs(count / 1e6 - paper_millions) / paper_millions < 0.02, count


# -- logistic-regression probes ----------------------------------------------------


def test_logistic_regression_fits_separable_classes_and_subsets_are_balanced(tmp_path):
  from ssl_jax.evaluate import logistic
  rng = np.random.default_rng(0)
  means = rng.normal(0, 1, (5, 16))
  y = rng.integers(0, 5, 600)
  x = means[y] + rng.normal(0, 0.3, (600, 16))
  fitted = logistic.fit(x, y, 5, l2=1e-3, steps=50)
  assert logistic.accuracy(fitted, x, y) > 0.98
  # Chunks of 64 rows from a memory map on disk give the same classifier.
  np.save(tmp_path / 'x.npy', x.astype(np.float32))
  streamed = logistic.fit(np.load(tmp_path / 'x.npy', mmap_mode='r'), y, 5, l2=1e-3,
                          steps=50, chunk=64)
  np.testing.assert_allclose(streamed['w'], fitted['w'], rtol=1e-3, atol=1e-4)
  assert logistic.accuracy(streamed, x, y, chunk=100) == logistic.accuracy(fitted, x, y)
  mean, std = logistic.moments(x, chunk=64)
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, x.std(0), rtol=1e-4)
  noise = rng.normal(0, 1, (600, 16))  # no signal: chance on held-out data
  fitted = logistic.fit(noise[:300], y[:300], 5, l2=1e-3, steps=50)
  assert logistic.accuracy(fitted, noise[300:], y[300:]) < 0.4
  idx = logistic.class_balanced(y, 7, 5, seed=3)
  assert np.bincount(y[idx]).tolist() == [7] * 5
  assert not np.array_equal(idx, logistic.class_balanced(y, 7, 5, seed=4))
  with pytest.raises(ValueError, match='fewer than the 1000 per class'):
    logistic.class_balanced(y, 1000, 5, seed=0)


# -- configs ---------------------------------------------------------------------


@pytest.mark.parametrize('overrides,message', [
    ({'data.image_size': 32}, r'32x32 = 1024 tokens do not fit.*data.image_size <= 16'),
    ({'igpt.model.heads': 3}, 'must be a positive integer that divides model.width=64'),
    ({'igpt.objective': 'mlm'}, "one of 'ar', 'bert'"),
    ({'igpt.palette.fit_pixels': 10}, 'igpt.vocab_size=512'),
    ({'igpt.bert_mask_rate': 0.0}, r'a number in \(0, 1\)'),
    ({'igpt.model.token_init': 'rgb'}, "token_init='rgb' is not allowed.*'normal', 'palette'"),
])
def test_bad_igpt_configs_fail_before_anything_runs(overrides, message):
  from configs import igpt
  from tests.conftest import _override
  config = _override(igpt.get_config('tiny'), overrides)
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config, 8)


def test_variants_and_unknown_layers():
  from configs import igpt
  assert igpt.get_config('tiny,bert').igpt.objective == 'bert'
  assert igpt.get_config('bert').igpt.model.num_layers == 48
  assert igpt.get_config('l48').igpt.model.context == 2304
  with pytest.raises(ValueError, match="unknown modifier 'bret'"):
    igpt.get_config('tiny,bret')
  config = igpt.get_config('tiny')
  config.eval.representation = 'layer_9'
  with pytest.raises(validation.ConfigError, match="'layer_9' is not allowed.*'layer_4'"):
    validation.validate_representations(config, tuple(f'layer_{i}' for i in range(5)))


# -- end to end ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_pretraining_fits_the_palette_samples_and_finetunes(data_dir, tmp_path,
                                                                 split_reads):
  """AR pretraining on 8 devices fits the missing palette, the loss falls,
  the PNG pictures exist; the sampler draws from the checkpoint; a fine-tune
  keeps the generative loss."""
  from configs import common
  from ssl_jax import drawing
  from ssl_jax.core import feature_probe, train
  workdir = str(tmp_path / 'pretrain')
  config = small_igpt_config(**{
      'data.data_dir': data_dir, 'total_steps': 12, 'batch_size': 16, 'log_every': 1,
      'checkpoint.every': 12, 'optimizer.warmup_steps': 2, 'optimizer.lr': 1e-2})
  config.eval.update(dict(split='test[:48]', train_split='train[:96]', batch_size=48,
                          every=0, monitors=('knn',), knn_k=5))
  result = train.run(config, workdir)
  path = palette_lib.resolve_path(config)
  assert path.startswith(data_dir) and palette_lib.load(path, 64).shape == (64, 3)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    losses = [r['loss'] for r in map(json.loads, f) if 'loss' in r]
  assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
  assert 'knn/top1' in result.evaluation
  assert os.path.getsize(drawing.png_path(workdir, 12)) > 1000
  np.testing.assert_array_equal(np.asarray(result.state.params['model']['palette']),
                                palette_lib.load(path, 64))  # frozen: never trained

  objective = IGPT(config)
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  grids = objective.sample_grids(result.state.params['model'], images, jax.random.key(1),
                                 completions=2, temperature=1.0)
  free, completed = np.asarray(grids['unconditional']), np.asarray(grids['completions'])
  assert free.shape[0] == 2 and free.dtype == np.uint8
  assert completed.shape[2] > free.shape[2]  # image | palette | given | 2 completions

  probe = common.classification_config(config, mode='linear')
  probe.init.workdir = workdir
  probe.update(dict(total_steps=1, batch_size=16))
  probe.optimizer.warmup_steps = 0
  probe.eval.update(dict(split='test[:48]', batch_size=48))
  probe.data.held_out_examples = 50
  probe.feature_probe.update(dict(train_examples=96, steps=20, l2_grid=(1e-3, 1e-1),
                                  shots=(2,), seeds=2, ridge_shots=2))
  layers_dir = str(tmp_path / 'layers')
  before = len(split_reads.reads)
  temporary = lambda: {p for p in os.listdir(tempfile.gettempdir())  # noqa: E731
                       if p.startswith('ssl_jax_features_')}
  temporary_before = temporary()
  rows = feature_probe.run(probe, layers_dir, 'layers')
  # l2 and layer chosen on the held-out examples; the test split read once, last.
  assert split_reads.reads[before:] == ['train', 'held_out', 'test[:48]']
  # Features went to memory maps in a temporary directory, removed after.
  assert temporary() <= temporary_before
  assert [r['representation'] for r in rows] == ['layer_0', 'layer_1', 'layer_2']
  assert all(0 <= r['top1'] <= 1 and 0 <= r['val_top1'] <= 1 for r in rows)
  assert all(0 <= r['knn_top1'] <= 1 for r in rows)  # beside each probe, nothing chosen
  assert all(0 <= r['ridge_2shot_top1'] <= 1 for r in rows)
  assert sum(r['chosen'] == '*' for r in rows) == 1
  assert os.path.getsize(os.path.join(layers_dir, 'layers.png')) > 1000
  # What the benchmarks read back when they resume (its config recorded).
  assert feature_probe.rows_of(probe, layers_dir) == rows
  probe.feature_probe.features_dir = str(tmp_path / 'features')
  low = feature_probe.run(probe, layers_dir, 'low_data')
  kept = np.load(tmp_path / 'features' / 'process0' / '1_layer_2.npy', mmap_mode='r')
  assert kept.shape == (96, 32)  # the training features, kept where asked
  assert low[0]['labels'] == 2 * 10 and low[0]['seeds'] == 2

  ft = common.classification_config(config, mode='finetune')
  ft.classifier.generative_weight = 1.0
  ft.init.workdir = workdir
  ft.update(dict(total_steps=2, batch_size=16, log_every=1))
  ft.optimizer.warmup_steps = 1
  ft.checkpoint.every = 2
  ft.eval.update(dict(split='test[:48]', batch_size=48, every=0))
  ft.data.held_out_examples = 0
  out = train.run(ft, str(tmp_path / 'finetune'))
  assert set(out.evaluation) >= {'eval/top1', 'eval/top5'}
  with open(os.path.join(str(tmp_path / 'finetune'), 'metrics.jsonl')) as f:
    assert 'generative_loss' in json.loads(f.readline())
