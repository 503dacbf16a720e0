"""Tests of RandAugment (ssl_jax.data.randaugment) and its pipeline option."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ssl_jax.data import pipeline
from ssl_jax.data import randaugment as ra

# Ops that are the identity at magnitude 0 (as timm's): the others have no
# magnitude (AutoContrast, Equalize, Invert) or keep 4 bits (Posterize).
IDENTITY_AT_ZERO = ('Rotate', 'SolarizeIncreasing', 'SolarizeAdd',
                    'ColorIncreasing', 'ContrastIncreasing',
                    'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX',
                    'ShearY', 'TranslateXRel', 'TranslateYRel')
FILL = (128, 128, 128)


def random_image(h=16, w=24, seed=0):
  """uint8 [h, w, 3] noise: asymmetric, every op changes it."""
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def smooth_image(h=16, w=24):
  """uint8 [h, w, 3] ramps: bilinear warps of it are well defined."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x * 10, y * 15, (x + y) * 5], -1).clip(0, 255).astype(
      np.uint8)


def as_tf(image):
  return tf.constant(image, tf.float32)


def key(i):
  return tf.constant([i, 0], tf.int64)


# ----------------------------------------------------------------------------
# The ops.
# ----------------------------------------------------------------------------


def test_op_set_is_timms_increasing_set():
  assert ra.OP_NAMES == (
      'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
      'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
      'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
      'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


@pytest.mark.parametrize('name', ra.OP_NAMES)
def test_op_keeps_shape_dtype_and_range(name):
  image = as_tf(random_image())
  for magnitude in (0.0, 4.5, 9.0, 10.0):
    for negate in (False, True):
      out = ra.apply_op(image, name, magnitude, negate)
      assert out.shape == image.shape and out.dtype == tf.float32
      out = out.numpy()
      assert out.min() >= 0.0 and out.max() <= 255.0, (magnitude, negate)
  changed = ra.apply_op(image, name, 9.0).numpy()
  assert not np.array_equal(changed, image.numpy())
  if name in IDENTITY_AT_ZERO:
    for negate in (False, True):
      np.testing.assert_array_equal(
          ra.apply_op(image, name, 0.0, negate).numpy(), image.numpy())


def test_hand_computed_colour_ops():
  values = np.array([0, 25, 26, 100, 127, 128, 200, 255], np.float32)
  image = as_tf(np.tile(values[:, None, None], [1, 3, 3]))
  out = lambda op, *args: op(image, *args).numpy()[:, 0, 0]  # noqa: E731
  np.testing.assert_array_equal(out(ra.invert), 255 - values)
  np.testing.assert_array_equal(
      out(ra.solarize, 26), [0, 25, 229, 155, 128, 127, 55, 0])
  np.testing.assert_array_equal(out(ra.solarize, 256), values)
  np.testing.assert_array_equal(
      out(ra.solarize_add, 99), [99, 124, 125, 199, 226, 128, 200, 255])
  for bits in range(0, 9):
    mask = (0xff << (8 - bits)) & 0xff
    np.testing.assert_array_equal(out(ra.posterize, bits),
                                  values.astype(np.uint8) & mask)
  np.testing.assert_array_equal(out(ra.brightness, 0.5), values / 2)
  np.testing.assert_array_equal(out(ra.brightness, 1.9),
                                np.minimum(values * 1.9, 255))


def test_magnitude_to_argument_mapping():
  image = as_tf(random_image())
  same = lambda a, b: np.testing.assert_allclose(  # noqa: E731
      a.numpy(), b.numpy(), atol=1e-3)
  # timm: posterize keeps 4 - int(4 m/10) bits, solarize threshold is
  # 256 - int(256 m/10), solarize_add adds min(128, int(110 m/10)).
  same(ra.apply_op(image, 'PosterizeIncreasing', 9.0), ra.posterize(image, 1))
  same(ra.apply_op(image, 'PosterizeIncreasing', 4.9), ra.posterize(image, 3))
  same(ra.apply_op(image, 'PosterizeIncreasing', 10.0), tf.zeros_like(image))
  same(ra.apply_op(image, 'SolarizeIncreasing', 9.0), ra.solarize(image, 26))
  same(ra.apply_op(image, 'SolarizeAdd', 9.0), ra.solarize_add(image, 99))
  same(ra.apply_op(image, 'Rotate', 9.0, True), ra.rotate(image, -27.0))
  same(ra.apply_op(image, 'ShearX', 10.0), ra.shear_x(image, 0.3))
  same(ra.apply_op(image, 'ShearY', 5.0, True), ra.shear_y(image, -0.15))
  same(ra.apply_op(image, 'TranslateXRel', 10.0),
       ra.translate_x_rel(image, 0.45))
  same(ra.apply_op(image, 'ColorIncreasing', 9.0, True),
       ra.color(image, 1.0 - 0.81))
  same(ra.apply_op(image, 'BrightnessIncreasing', 10.0),
       ra.brightness(image, 1.9))


def test_hand_computed_geometric_ops():
  square = random_image(16, 16)
  for k, degrees in ((1, 90.0), (2, 180.0), (-1, -90.0)):
    np.testing.assert_allclose(ra.rotate(as_tf(square), degrees).numpy(),
                               np.rot90(square, k), atol=1e-2)
  image = random_image(16, 24)
  # 0.25 of the width (6 pixels): the content moves left, grey comes in.
  moved = ra.translate_x_rel(as_tf(image), 0.25).numpy()
  np.testing.assert_array_equal(moved[:, :18], image[:, 6:])
  np.testing.assert_array_equal(moved[:, 18:], 128)
  moved = ra.translate_y_rel(as_tf(image), -0.25).numpy()
  np.testing.assert_array_equal(moved[4:], image[:12])
  np.testing.assert_array_equal(moved[:4], 128)
  # Shear by 1 about the top-left corner, PIL's pixel-centre convention:
  # pixel x of row y samples x + y + 1/2 (the mean of two pixels), or grey
  # past the right edge.
  sheared = ra.shear_x(as_tf(image), 1.0).numpy()
  pixels = image.astype(np.float32)
  for y in (0, 5, 15):
    np.testing.assert_allclose(sheared[y, :23 - y],
                               (pixels[y, y:-1] + pixels[y, y + 1:]) / 2,
                               atol=1e-3)
    np.testing.assert_array_equal(sheared[y, 23 - y:], 128)


def _pil_affine(matrix):
  return lambda im: im.transform(im.size, Image.AFFINE, matrix,
                                 resample=Image.BILINEAR, fillcolor=FILL)


# (our op and argument, timm's PIL op): timm's auto_augment.py functions.
PIL_REFERENCES = {
    'auto_contrast': (ra.auto_contrast, (), ImageOps.autocontrast),
    'equalize': (ra.equalize, (), ImageOps.equalize),
    'posterize': (ra.posterize, (2,), lambda im: ImageOps.posterize(im, 2)),
    'color': (ra.color, (0.3,), lambda im: ImageEnhance.Color(im).enhance(0.3)),
    'contrast': (ra.contrast, (1.7,),
                 lambda im: ImageEnhance.Contrast(im).enhance(1.7)),
    'sharpness': (ra.sharpness, (0.2,),
                  lambda im: ImageEnhance.Sharpness(im).enhance(0.2)),
    'sharpness_up': (ra.sharpness, (1.9,),
                     lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
    'rotate': (ra.rotate, (27.0,),
               lambda im: im.rotate(27.0, resample=Image.BILINEAR,
                                    fillcolor=FILL)),
    'shear_x': (ra.shear_x, (-0.27,), _pil_affine((1, -0.27, 0, 0, 1, 0))),
    'shear_y': (ra.shear_y, (0.3,), _pil_affine((1, 0, 0, 0.3, 1, 0))),
    'translate_x': (ra.translate_x_rel, (0.405,),
                    _pil_affine((1, 0, 0.405 * 24, 0, 1, 0))),
    'translate_y': (ra.translate_y_rel, (-0.2,),
                    _pil_affine((1, 0, 0, 0, 1, -0.2 * 16))),
}


@pytest.mark.parametrize('name', sorted(PIL_REFERENCES))
def test_matches_timms_pil_ops(name):
  op, args, pil_op = PIL_REFERENCES[name]
  image = smooth_image() if op in (ra.rotate, ra.shear_x, ra.shear_y,
                                   ra.translate_x_rel,
                                   ra.translate_y_rel) else random_image()
  ours = op(as_tf(image), *args).numpy()
  expected = np.asarray(pil_op(Image.fromarray(image)), np.float32)
  # PIL rounds or truncates to uint8; the ops do not quantise.
  np.testing.assert_allclose(ours, expected, atol=1.5)


# ----------------------------------------------------------------------------
# The policy.
# ----------------------------------------------------------------------------


def test_randaugment_is_deterministic_and_varies_with_the_key():
  image = as_tf(random_image(16, 16))
  outputs = [ra.randaugment(image, key(i)).numpy() for i in range(10)]
  for i in (0, 3):
    np.testing.assert_array_equal(outputs[i],
                                  ra.randaugment(image, key(i)).numpy())
    assert outputs[i].shape == (16, 16, 3) and outputs[i].dtype == np.float32
    assert outputs[i].min() >= 0.0 and outputs[i].max() <= 255.0
  assert len({o.tobytes() for o in outputs}) >= 6
  assert any(not np.array_equal(o, image.numpy()) for o in outputs)
  np.testing.assert_array_equal(
      ra.randaugment(image, key(1), prob=0.0).numpy(), image.numpy())
  # magnitude_std=inf: magnitudes uniform in [0, magnitude], as timm.
  uniform = [ra.randaugment(image, key(5), magnitude_std=math.inf).numpy()
             for _ in range(2)]
  np.testing.assert_array_equal(*uniform)


def test_randaugment_draws_one_op_from_the_table():
  # One op, always applied, fixed magnitude: each output is one op's output.
  image = as_tf(smooth_image(16, 16))
  candidates = {(name, negate): ra.apply_op(image, name, 9.0, negate).numpy()
                for name in ra.OP_NAMES for negate in (False, True)}
  seen = set()
  for i in range(30):
    out = ra.randaugment(image, key(i), num_ops=1, magnitude=9.0,
                         magnitude_std=0.0, prob=1.0).numpy()
    matches = {name for (name, _), c in candidates.items()
               if np.allclose(out, c, atol=1e-4)}
    assert matches, i
    seen |= matches
  assert len(seen) >= 10


def test_randaugment_rejects_bad_arguments():
  image = as_tf(random_image())
  for kwargs in (dict(num_ops=0), dict(num_ops=1.5), dict(magnitude=10.5),
                 dict(magnitude=-1.0), dict(magnitude_std=-0.1),
                 dict(magnitude_std=math.nan), dict(prob=1.5)):
    with pytest.raises(ValueError):
      ra.randaugment(image, key(0), **kwargs)


# ----------------------------------------------------------------------------
# The pipeline option.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_source(data_dir):
  return pipeline.make_source('ssl_jax_shapes/small', data_dir=data_dir,
                              split='train[:40]')


def first_batch(source, **kwargs):
  args = dict(seed=4, global_batch_size=8, start_step=0, image_size=16,
              train=True)
  args.update(kwargs)
  return next(pipeline.iterate_numpy(pipeline.make_dataset(source, **args)))


def test_pipeline_randaugment(tiny_source):
  plain = first_batch(tiny_source)
  off = first_batch(tiny_source, randaugment=None)
  for k in plain:
    np.testing.assert_array_equal(plain[k], off[k])
  on = first_batch(tiny_source, randaugment=(2, 9, 0.5))
  np.testing.assert_array_equal(on['label'], plain['label'])
  assert on['image'].min() >= 0.0 and on['image'].max() <= 1.0
  assert not np.array_equal(on['image'], plain['image'])
  # Reproducible: the same crops and flips as without RandAugment, then
  # RandAugment keyed by (seed, global index) alone.
  for j, g in enumerate(on['index']):
    expected = ra.randaugment(
        plain['image'][j] * 255.0,
        pipeline._randaugment_key(tf.constant(g), 4)).numpy() / 255.0
    np.testing.assert_allclose(on['image'][j], expected, atol=1e-5)
  # Evaluation ignores it.
  evaluation = [first_batch(tiny_source, train=False, randaugment=r)['image']
                for r in (None, (2, 9.0, 0.5))]
  np.testing.assert_array_equal(*evaluation)


@pytest.mark.parametrize('value, problem', [
    ((0, 9.0, 0.5), 'num_ops'), ((2.0, 9.0, 0.5), 'num_ops'),
    ((True, 9.0, 0.5), 'num_ops'), ((2, 10.5, 0.5), 'magnitude'),
    ((2, -1.0, 0.5), 'magnitude'), ((2, 9.0, -0.5), 'magnitude_std'),
    ((2, 9.0, math.nan), 'magnitude_std'), ((2, 9.0), None),
    ('rand-m9-mstd0.5', None)])
def test_pipeline_rejects_bad_randaugment(tiny_source, value, problem):
  with pytest.raises(pipeline.DataError) as error:
    first_batch(tiny_source, randaugment=value)
  message = str(error.value)
  assert message.startswith('randaugment must be None or (num_ops, magnitude, '
                            'magnitude_std) with num_ops an integer >= 1')
  assert message.endswith(f'bad {problem}.' if problem else f'got {value!r}.')
