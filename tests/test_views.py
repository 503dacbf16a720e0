"""Tests of multi-view training batches (ssl_jax.data.views, make_dataset's
``views`` and ``share_geometry``)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from ssl_jax.data import pipeline
from ssl_jax.data import views as views_lib
from ssl_jax.data.views import ViewSpec

PLAIN = ViewSpec()  # Inception crop (area >= 0.08) and flip; no photometric op.
BRIGHTNESS = ViewSpec(jitter_prob=1.0, brightness=0.8)


@pytest.fixture(scope='module')
def tiny_source(data_dir):
  """40 examples: a few batches of 16 cover more than one epoch."""
  return pipeline.make_source('ssl_jax_shapes/small', data_dir=data_dir,
                              split='train[:40]')


def take(source, n=1, **kwargs):
  args = dict(seed=0, global_batch_size=8, start_step=0, image_size=16,
              train=True)
  args.update(kwargs)
  ds = pipeline.make_dataset(source, **args)
  return [b for _, b in zip(range(n), pipeline.iterate_numpy(ds))]


def assert_batches_identical(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      assert x[key].dtype == y[key].dtype, key
      assert x[key].shape == y[key].shape, key
      assert x[key].tobytes() == y[key].tobytes(), key


def differs(a, b, atol=1e-3):
  """Per image of [b, ...] arrays: whether the two differ."""
  return np.abs(a - b).reshape(len(a), -1).max(axis=1) > atol


# ----------------------------------------------------------------------------
# Single-view behaviour and view 0.
# ----------------------------------------------------------------------------


def test_views_none_is_unchanged(tiny_source):
  kwargs = dict(seed=2, min_area=0.3, image_size=32)
  old = pipeline.make_dataset(tiny_source, global_batch_size=8, start_step=0,
                              train=True, **kwargs)
  new = pipeline.make_dataset(tiny_source, global_batch_size=8, start_step=0,
                              train=True, views=None, share_geometry=False,
                              **kwargs)
  assert old.element_spec == new.element_spec
  assert new.element_spec['image'].shape == (8, 32, 32, 3)
  take_2 = lambda ds: [b for _, b in zip(range(2), ds.as_numpy_iterator())]
  assert_batches_identical(take_2(old), take_2(new))


@pytest.mark.parametrize('min_area, flip', [(0.08, True), (0.5, False)])
def test_view_0_is_the_single_view_image(tiny_source, min_area, flip):
  single = take(tiny_source, 2, min_area=min_area, flip=flip)
  spec = ViewSpec(min_area=min_area, flip=flip)
  multi = take(tiny_source, 2, views=[spec, spec])
  for one, two in zip(single, multi):
    assert two['image'].shape == (8, 2, 16, 16, 3)
    assert two['image'].dtype == np.float32
    assert two['image'][:, 0].tobytes() == one['image'].tobytes()
    for key in ('label', 'index', 'valid'):
      assert two[key].tobytes() == one[key].tobytes()
    # View 1 has keys of its own: another crop (or flip) of every image.
    assert differs(two['image'][:, 1], two['image'][:, 0]).all()


def test_a_view_depends_only_on_its_own_spec(tiny_source):
  # The randomness of view v is a function of (seed, g, v): changing view 1's
  # settings leaves view 0 and view 2 unchanged.
  jitter = ViewSpec.simclr()
  a = take(tiny_source, views=[jitter, PLAIN, jitter])[0]['image']
  b = take(tiny_source, views=[jitter, ViewSpec.simclr(blur_prob=1.0),
                               jitter])[0]['image']
  assert a[:, 0].tobytes() == b[:, 0].tobytes()
  assert a[:, 2].tobytes() == b[:, 2].tobytes()
  assert differs(a[:, 1], b[:, 1]).any()
  # Equal settings, different views: different randomness.
  assert differs(a[:, 0], a[:, 2]).all()


# ----------------------------------------------------------------------------
# Shared and independent geometry.
# ----------------------------------------------------------------------------


def test_shared_geometry_without_photometric_ops_gives_identical_views(
    tiny_source):
  single = take(tiny_source)[0]['image']
  shared = take(tiny_source, views=[PLAIN] * 3, share_geometry=True)[0]
  for v in range(3):
    assert shared['image'][:, v].tobytes() == single.tobytes()


def _constant_brightness_ratio(view_a, view_b):
  """Per image: whether view_b = c * view_a on every pixel that neither
  view clipped (multiplicative brightness of the same pixels), and c."""
  same, ratios = [], []
  for a, b in zip(view_a, view_b):
    unclipped = (a > 1e-3) & (b > 1e-3) & (a < 1.0) & (b < 1.0)
    assert unclipped.sum() >= 30
    ratio = b[unclipped] / a[unclipped]
    same.append(np.ptp(ratio) <= 1e-5 * np.median(ratio))
    ratios.append(np.median(ratio))
  return np.array(same), np.array(ratios)


def test_shared_geometry_brightness_differs_by_a_factor(tiny_source):
  shared = take(tiny_source, image_size=32, views=[BRIGHTNESS] * 2,
                share_geometry=True)[0]['image']
  same, ratios = _constant_brightness_ratio(shared[:, 0], shared[:, 1])
  assert same.all()
  assert (np.abs(ratios - 1.0) > 1e-3).all()  # The views do differ.
  # The check fails when geometry is drawn per view.
  independent = take(tiny_source, image_size=32,
                     views=[BRIGHTNESS] * 2)[0]['image']
  same, _ = _constant_brightness_ratio(independent[:, 0], independent[:, 1])
  assert not same.any()


def test_shared_geometry_full_jitter(tiny_source):
  spec = ViewSpec(jitter_prob=1.0, brightness=0.8, contrast=0.8,
                  saturation=0.8, hue=0.2)
  shared = take(tiny_source, image_size=32, views=[PLAIN, spec, spec],
                share_geometry=True)[0]['image']
  assert shared.min() >= 0.0 and shared.max() <= 1.0
  assert differs(shared[:, 1], shared[:, 0]).all()
  assert differs(shared[:, 2], shared[:, 1]).all()
  # Same geometry: the views' (centred) luminance images stay strongly
  # correlated with the plain view's, unlike another image's.
  luma = shared @ np.array([0.299, 0.587, 0.114], np.float32)
  luma = luma.reshape(8, 3, -1)
  luma -= luma.mean(-1, keepdims=True)
  luma /= np.linalg.norm(luma, axis=-1, keepdims=True) + 1e-6
  for v in (1, 2):
    correlation = np.sum(luma[:, 0] * luma[:, v], -1)
    assert np.median(correlation) > 0.7, correlation


def test_jitter_probability(tiny_source):
  half = ViewSpec(jitter_prob=0.5, brightness=0.8)
  shared = take(tiny_source, global_batch_size=16,
                views=[PLAIN, half], share_geometry=True)[0]['image']
  jittered = differs(shared[:, 1], shared[:, 0], atol=0.0)
  assert 0 < jittered.sum() < 16


def test_independent_geometry_views_differ(tiny_source):
  batch = take(tiny_source, views=[PLAIN, PLAIN,
                                   ViewSpec(min_area=0.5, flip=False)])[0]
  images = batch['image']
  assert images.shape == (8, 3, 16, 16, 3)
  for v, w in ((0, 1), (0, 2), (1, 2)):
    assert differs(images[:, v], images[:, w]).all()


# ----------------------------------------------------------------------------
# Determinism, resume and multi-host.
# ----------------------------------------------------------------------------


def test_resume_and_process_split_are_exact(tiny_source):
  kwargs = dict(seed=5, global_batch_size=16,
                views=[ViewSpec.simclr(), ViewSpec.simclr(blur_prob=1.0)])
  full = take(tiny_source, 3, **kwargs)  # 48 examples: over an epoch.
  assert_batches_identical(full[2:], take(tiny_source, 1, start_step=2,
                                          **kwargs))
  parts = [take(tiny_source, 3, process_index=i, process_count=2, **kwargs)
           for i in range(2)]
  for step in range(3):
    assert parts[0][step]['image'].shape == (8, 2, 16, 16, 3)
    joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]])
              for k in full[step]}
    assert_batches_identical([full[step]], [joined])


def test_eval_ignores_views(tiny_source):
  kwargs = dict(train=False, global_batch_size=16)
  plain = take(tiny_source, 3, **kwargs)
  with_views = take(tiny_source, 3, views=[ViewSpec.simclr()] * 2,
                    share_geometry=True, **kwargs)
  assert with_views[0]['image'].shape == (16, 16, 16, 3)
  assert_batches_identical(plain, with_views)


# ----------------------------------------------------------------------------
# Photometric ops.
# ----------------------------------------------------------------------------


def test_grayscale_gives_equal_channels(tiny_source):
  images = take(tiny_source, views=[PLAIN, ViewSpec(grayscale_prob=1.0)],
                share_geometry=True)[0]['image']
  gray = images[:, 1]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  np.testing.assert_array_equal(gray[..., 1], gray[..., 2])
  expected = images[:, 0] @ np.array([0.2989, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(gray[..., 0], expected, atol=2e-3)


def _high_frequency_energy(images):
  """Per image: mean squared difference of neighbouring pixels."""
  dy = np.diff(images, axis=-3)
  dx = np.diff(images, axis=-2)
  return (dy**2).mean(axis=(-3, -2, -1)) + (dx**2).mean(axis=(-3, -2, -1))


def test_blur_removes_high_frequencies(tiny_source):
  blur = ViewSpec(blur_prob=1.0, blur_sigma=(1.0, 2.0))
  images = take(tiny_source, image_size=32, views=[PLAIN, blur],
                share_geometry=True)[0]['image']
  assert views_lib.blur_radius(32) == 1
  sharp, blurred = (_high_frequency_energy(images[:, v]) for v in (0, 1))
  assert (blurred < 0.8 * sharp).all(), (blurred, sharp)
  # A blur averages: the mean brightness is kept (reflected borders).
  np.testing.assert_allclose(images[:, 1].mean(axis=(1, 2)),
                             images[:, 0].mean(axis=(1, 2)), atol=0.02)


def test_gaussian_blur_kernel():
  ramp = tf.tile(tf.linspace(0.0, 1.0, 12)[None, :, None], [12, 1, 3])
  # A linear ramp is kept inside (the kernel is symmetric and sums to 1)...
  out = views_lib.gaussian_blur(ramp, tf.constant(1.5), 2).numpy()
  np.testing.assert_allclose(out[:, 2:-2], ramp.numpy()[:, 2:-2], atol=1e-6)
  # ... and a single bright pixel spreads as an outer product of the weights.
  dot = np.zeros((9, 9, 3), np.float32)
  dot[4, 4] = 1.0
  out = views_lib.gaussian_blur(tf.constant(dot), tf.constant(1.0), 2).numpy()
  w = np.exp(-np.arange(-2, 3)**2 / 2.0)
  w /= w.sum()
  np.testing.assert_allclose(out[2:7, 2:7, 1], np.outer(w, w), atol=1e-6)
  np.testing.assert_allclose(out.sum(axis=(0, 1)), 1.0, atol=1e-5)


def test_simclr_spec():
  spec = ViewSpec.simclr()
  assert (spec.jitter_prob, spec.brightness, spec.contrast, spec.saturation,
          spec.hue) == (0.8, 0.8, 0.8, 0.8, 0.2)
  assert (spec.grayscale_prob, spec.blur_prob, spec.blur_sigma) == (
      0.2, 0.5, (0.1, 2.0))
  assert ViewSpec.simclr(0.5, blur_prob=1.0).brightness == 0.4
  assert not ViewSpec().has_photometric and spec.has_photometric
  assert ViewSpec(aspect=[0.5, 2]).aspect == (0.5, 2.0)


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('field, value', [
    ('min_area', 0.0), ('min_area', 1.5), ('min_area', float('nan')),
    ('min_area', '0.5'), ('aspect', (2.0, 1.0)), ('aspect', (0.0, 1.0)),
    ('aspect', 1.0), ('flip', 1), ('jitter_prob', 1.2),
    ('jitter_prob', True), ('brightness', -0.1),
    ('contrast', float('inf')), ('saturation', None), ('hue', 0.6),
    ('grayscale_prob', -0.5), ('blur_prob', 2.0), ('blur_sigma', (0.0, 1.0)),
    ('blur_sigma', (2.0, 1.0)), ('blur_sigma', (1.0,)),
])
def test_invalid_view_spec_field_raises(field, value):
  with pytest.raises(pipeline.DataError,
                     match=re.escape(f'ViewSpec.{field}') + '.*' +
                     re.escape(repr(value))):
    ViewSpec(**{field: value})


def test_bad_views_arguments_raise(tiny_source):
  def build(**kwargs):
    args = dict(seed=0, global_batch_size=8, start_step=0, image_size=16,
                train=True)
    return pipeline.make_dataset(tiny_source, **{**args, **kwargs})

  with pytest.raises(pipeline.DataError, match='randaugment.*single-view'):
    build(views=[PLAIN], randaugment=(2, 9.0, 0.5))
  with pytest.raises(pipeline.DataError, match="crop='pad' is single-view"):
    build(views=[PLAIN], crop='pad')
  with pytest.raises(pipeline.DataError, match=r'views\[1\] has \(0.5'):
    build(views=[PLAIN, ViewSpec(min_area=0.5)], share_geometry=True)
  with pytest.raises(pipeline.DataError, match='share_geometry=True needs'):
    build(share_geometry=True)
  with pytest.raises(pipeline.DataError, match='at least one ViewSpec'):
    build(views=[])
  with pytest.raises(pipeline.DataError, match='sequence of ViewSpec'):
    build(views=PLAIN)
  with pytest.raises(pipeline.DataError, match=r'views\[1\] must be'):
    build(views=[PLAIN, {'min_area': 0.5}])
  with pytest.raises(pipeline.DataError, match='share_geometry must be'):
    build(views=[PLAIN], share_geometry='yes')
  # Independent geometry: per-view crop settings are allowed.
  assert build(views=[PLAIN, ViewSpec(min_area=0.5, flip=False)]
               ).element_spec['image'].shape == (8, 2, 16, 16, 3)
