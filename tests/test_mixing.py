import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.nn import losses
from ssl_jax.tasks import mixing

B, H, W, C, CLASSES = 8, 12, 10, 3, 10
RECIPE = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0,
              label_smoothing=0.1)


def batch(dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), (B, H, W, C)).astype(dtype)
  y = jnp.arange(B) % CLASSES  # y[i] != y[B - 1 - i]
  return x, y


def many(num_keys, x, y, **kw):
  """`mix` over `num_keys` keys, vmapped and jitted."""
  fn = jax.jit(jax.vmap(lambda k: mixing.mix(k, x, y, CLASSES, **kw)))
  out, t = fn(jax.random.split(jax.random.key(1), num_keys))
  return np.asarray(out, np.float32), np.asarray(t)


def lam_from_targets(t, y, smoothing=0.0):
  """The mixing weight of each example's own label ([..., B])."""
  off = smoothing / CLASSES
  own = t[..., np.arange(B), np.asarray(y)]
  return (own - off) / (1.0 - smoothing)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(dtype):
  x, y = batch(dtype)
  out, t = jax.jit(functools.partial(mixing.mix, num_classes=CLASSES, **RECIPE))(
      jax.random.key(2), x, y)
  assert out.shape == x.shape and out.dtype == dtype
  assert t.shape == (B, CLASSES) and t.dtype == jnp.float32


@pytest.mark.parametrize('kw', [dict(mixup_alpha=0.0, cutmix_alpha=0.0),
                                dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0)])
def test_no_mixing_returns_inputs_and_smoothed_one_hot(kw):
  x, y = batch()
  out, t = mixing.mix(jax.random.key(3), x, y, CLASSES, label_smoothing=0.1, **kw)
  np.testing.assert_array_equal(out, x)
  expected = np.full((B, CLASSES), 0.01, np.float32)
  expected[np.arange(B), np.asarray(y)] = 0.91
  np.testing.assert_allclose(t, expected, rtol=1e-6)


def test_cutmix_pixels_come_from_image_or_partner_and_targets_match_area():
  x, y = batch()
  out, t = many(64, x, y, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
  xs, flipped = np.asarray(x), np.asarray(x)[::-1]
  own, other = out == xs, out == flipped
  assert np.all(own | other)
  # One box for the whole batch, across channels, a rectangle.
  from_partner = ~own
  assert np.all(from_partner == from_partner[:, :1, :, :, :1])
  for box in from_partner[:, 0, :, :, 0]:
    rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
    if len(rows):
      assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and box.sum() == (
          len(rows) * len(cols))
  kept = own[..., 0].mean(axis=(2, 3))  # [keys, B]
  np.testing.assert_allclose(lam_from_targets(t, y, 0.1), kept, atol=1e-6)
  smooth = np.asarray(losses.smooth_one_hot(y, CLASSES, 0.1))
  np.testing.assert_allclose(
      t, kept[..., None] * smooth + (1 - kept[..., None]) * smooth[::-1], atol=1e-6)
  assert 0.2 < kept.mean() < 0.8 and (kept < 1).mean() > 0.8


def test_mixup_is_convex_combination_with_partner():
  x, y = batch()
  out, t = many(32, x, y, mixup_alpha=0.8, cutmix_alpha=0.0)
  lam = lam_from_targets(t, y)
  assert np.all(lam == lam[:, :1])  # one lambda per batch
  assert 0 < lam.min() and lam.max() < 1 and lam.std() > 0.1
  xs = np.asarray(x)
  expected = lam[..., None, None, None] * xs + (1 - lam[..., None, None, None]) * xs[::-1]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  onehot = np.eye(CLASSES)[np.asarray(y)]
  np.testing.assert_allclose(
      t, lam[..., None] * onehot + (1 - lam[..., None]) * onehot[::-1], atol=1e-6)


@pytest.mark.parametrize('switch_prob', [0.0, 1.0])
def test_switch_prob_chooses_cutmix(switch_prob):
  x, y = batch()
  out, t = many(200, x, y, **dict(RECIPE, switch_prob=switch_prob))
  xs = np.asarray(x)
  is_cutmix = np.all((out == xs) | (out == xs[::-1]), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
  assert np.all(t >= 0)
  if switch_prob in (0.0, 1.0):
    assert np.all(is_cutmix == bool(switch_prob))
  else:
    assert 0.35 < is_cutmix.mean() < 0.65


def test_prob_skips_mixing():
  x, y = batch()
  out, t = many(200, x, y, **dict(RECIPE, prob=0.5))
  unmixed = np.all(out == np.asarray(x), axis=(1, 2, 3, 4))
  assert 0.35 < unmixed.mean() < 0.65
  smooth = np.asarray(losses.smooth_one_hot(y, CLASSES, 0.1))
  np.testing.assert_allclose(t[unmixed], np.broadcast_to(smooth, t[unmixed].shape))


def test_jit_and_deterministic_per_key():
  x, y = batch()
  fn = functools.partial(mixing.mix, num_classes=CLASSES, **RECIPE)
  key = jax.random.key(4)
  eager = fn(key, x, y)
  jitted = jax.jit(fn)(key, x, y)
  again = jax.jit(fn)(key, x, y)
  for a, b, c in zip(eager, jitted, again):
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(b, c)
  other = jax.jit(fn)(jax.random.key(5), x, y)
  assert not np.array_equal(other[1], jitted[1])


def test_padding_partners_leave_examples_unmixed():
  x, y = batch()
  weights = jnp.array([1.0] * (B - 2) + [0.0] * 2)
  out, t = many(16, x, y, **RECIPE, weights=weights)
  xs = np.asarray(x)
  smooth = np.asarray(losses.smooth_one_hot(y, CLASSES, 0.1))
  # Examples 0 and 1 are partnered with the padding rows B-1 and B-2.
  np.testing.assert_array_equal(out[:, :2], np.broadcast_to(xs[:2], out[:, :2].shape))
  np.testing.assert_allclose(t[:, :2], np.broadcast_to(smooth[:2], t[:, :2].shape))
  assert not np.all(out[:, 2:B - 2] == xs[2:B - 2])


@pytest.mark.parametrize('lam', [0.0, 0.3, 0.75, 0.99, 1.0])
def test_cutmix_box_follows_rand_bbox(lam):
  cut_h, cut_w = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
  for k in jax.random.split(jax.random.key(6), 32):
    box, corrected = mixing.cutmix_box(k, H, W, jnp.float32(lam))
    box = np.asarray(box)
    rows, cols = box.any(1).sum(), box.any(0).sum()
    assert box.sum() == rows * cols
    assert rows <= 2 * (cut_h // 2) and cols <= 2 * (cut_w // 2)
    np.testing.assert_allclose(corrected, 1 - box.sum() / (H * W), rtol=1e-6)
  if lam == 1.0:
    assert box.sum() == 0 and corrected == 1.0
