"""Selfie and Allp: the loss against a numpy reference (one softmax), the
masked patches' invisibility, the configs' validation, end-to-end runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _override, small_method_config, unoptimised_jit

from ssl_jax.config.checks import ConfigError
from ssl_jax.methods.selfie.method import selfie_loss


def test_selfie_loss_is_one_softmax_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(3, 4, 4)).astype(np.float32)
  expected = np.zeros(3)
  for b in range(3):
    for k in range(4):
      z = logits[b, k] - logits[b, k].max()
      expected[b] += -(z[k] - np.log(np.exp(z).sum())) / 4
  np.testing.assert_allclose(selfie_loss(jnp.asarray(logits)), expected, rtol=1e-5)
  # Confident, correct logits: one softmax gives ~0; a softmax applied twice
  # (probabilities fed to a cross-entropy as logits) could not go below
  # -log(e / (e + Q - 1)) = 0.74 for Q = 4.
  sure = jnp.asarray(np.broadcast_to(20.0 * np.eye(4), (2, 4, 4)), jnp.float32)
  assert float(selfie_loss(sure).max()) < 1e-6



@pytest.mark.parametrize('normalise', ['printed', 'balanced'])
def test_allp_loss_matches_a_loop_over_pairs(normalise):
  """Equations 12-13 with S the rescaled cosine: 3 images x 2 copies, the
  last image padding; positives: the other copy of the same image; a copy
  is never paired with itself."""
  from ssl_jax.nn import contrastive
  rng = np.random.default_rng(10)
  z = rng.normal(size=(6, 4)).astype(np.float32)
  weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  sim = (unit @ unit.T + 1) / 2
  pos = neg = n_pos = n_neg = 0.0
  for i in range(6):
    for j in range(6):
      if i == j or not (weights[i] and weights[j]):
        continue
      if i // 2 == j // 2:
        pos, n_pos = pos - np.log(sim[i, j]), n_pos + 1
      else:
        neg, n_neg = neg - np.log(1 - sim[i, j]), n_neg + 1
  want = (pos + neg) / (n_pos + n_neg) if normalise == 'printed' else pos / n_pos + neg / n_neg
  source = jnp.arange(6) // 2
  w = jnp.asarray(weights)[:, None] * jnp.asarray(weights)[None, :] * ~jnp.eye(6, dtype=bool)
  got, _ = contrastive.pair_loss(contrastive.rescaled_cosine(jnp.asarray(z), jnp.asarray(z)),
                                 contrastive.same_source(source, source), w, normalise)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_masked_patches_are_candidates_only():
  """With exchange layers, changing the pixels of the masked patches changes
  the candidates' logits column, never u (the context)."""
  from configs import selfie
  from ssl_jax.methods.selfie.model import SelfieNet
  c = selfie.get_config('tiny')
  # One exchange layer; one residual stage and one transformer layer are
  # enough for the property and compile faster than tiny's.
  c.selfie.model.update(dict(exchange_layers=1, stage_sizes=(1,), num_layers=1))
  net = SelfieNet(c.selfie.model, (4, 4))
  rng = np.random.default_rng(8)
  patches = jnp.asarray(rng.uniform(-1, 1, size=(2, 16, 8, 8, 3)), jnp.float32)
  masked = jnp.array([[2, 4, 9, 11], [0, 1, 14, 15]])
  visible = jnp.array([sorted(set(range(16)) - set(map(int, r))) for r in masked])
  params = unoptimised_jit(net.init)(jax.random.key(0), patches, jnp.zeros((2, 32, 32, 3)))
  apply = unoptimised_jit(lambda p: net.apply(params, p, visible, masked, train=False,
                                              method=SelfieNet.selfie_logits))
  logits, u = apply(patches)
  noise = jnp.asarray(rng.uniform(-1, 1, size=(2, 4, 8, 8, 3)), jnp.float32)
  moved_logits, moved_u = apply(patches.at[jnp.arange(2)[:, None], masked].set(noise))
  np.testing.assert_array_equal(moved_u, u)
  assert not np.allclose(moved_logits, logits)
  # A visible patch does reach u (through the exchange layers and h).
  _, touched_u = apply(patches.at[jnp.arange(2)[:, None], visible[:, :1]].set(noise[:, :1]))
  assert not np.allclose(touched_u, u)


@pytest.mark.parametrize('key, value, message', [
    ('selfie.num_masked', 1, 'distractor'),
    ('selfie.grid', 5, 'selfie.grid'),
    ('selfie.objective', 'jigsaw', 'selfie.objective'),
    ('selfie.augment.min_area', 0.0, 'selfie.augment'),
    ('online_probe.representation', 'image_res2', 'online_probe'),
])
def test_bad_selfie_keys_are_refused_by_name(key, value, message):
  from configs import selfie
  from ssl_jax.core import validation
  c = _override(selfie.get_config('tiny'), {key: value})
  with pytest.raises(ConfigError, match=message):
    validation.validate(c, 1)


def test_allp_needs_two_copies_and_a_batch_of_whole_images():
  from configs import selfie
  from ssl_jax.core import validation
  c = selfie.get_config('allp_tiny')
  validation.validate(c, 8)
  c.selfie.views = 1
  with pytest.raises(ConfigError, match='selfie.views=1'):
    validation.validate(c, 8)
  c.selfie.views, c.batch_size = 2, 24  # 12 images: not divisible by 8 devices
  with pytest.raises(ConfigError, match='its 12 images per step must be divisible'):
    validation.validate(c, 8)


@pytest.mark.slow
@pytest.mark.parametrize('variant', [pytest.param('tiny', marks=pytest.mark.e2e), 'allp_tiny'])
def test_selfie_and_allp_train_end_to_end(variant, data_dir, tmp_path):
  from ssl_jax.core import train
  config = small_method_config('selfie', variant, data_dir, batch_size=16)
  result = train.run(config, str(tmp_path))
  assert result.last_step == 4
  assert 0 <= result.evaluation['knn/top1'] <= 1


@pytest.mark.parametrize('module', ['dv2', 'selfie'])
def test_pictures_show_the_masked_patches_and_the_retrievals(module):
  """Panels image | masked (grey cells) | filled | (DV2) vocabulary mosaic,
  uint8, the masked cells grey in the second panel."""
  import importlib

  from ssl_jax.methods import registry
  c = importlib.import_module(f'configs.{module}').get_config('tiny')
  c[module].model.num_layers = 1  # the panels do not depend on the depth
  method = registry.get(module)(c)
  images = jnp.asarray(np.random.default_rng(7).uniform(size=(3, 32, 32, 3)), jnp.float32)
  # Compiled as the evaluator does (op by op, the ResNet's init alone takes 20 s).
  params = unoptimised_jit(method.init)(jax.random.key(0), {'image': images[:, None]})
  state = method.init_state(jax.random.key(0), {'image': images[:, None]}, params)
  panels = np.asarray(unoptimised_jit(method.pictures)(params, images, jax.random.key(1),
                                                        state=state))
  n = 4 if module == 'dv2' else 3
  assert panels.dtype == np.uint8 and panels.shape == (3, 128, n * 128 + (n - 1) * 2, 3)
  masked = panels[:, :, 130:258]
  grey = (np.abs(masked.astype(int) - 128) <= 1).all(-1)
  # 4 of 16 cells (32x32 each at this scale) are grey: a quarter of the panel.
  np.testing.assert_allclose(grey.mean(axis=(1, 2)), 0.25, atol=0.02)
