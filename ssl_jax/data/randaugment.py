"""RandAugment as stateless TF ops, for tf.data ``map``.

The policy of timm's ``rand_augment_transform`` with the "increasing" op set
(``_RAND_INCREASING_TRANSFORMS``), as in the DeiT / MAE fine-tuning recipe
``rand-m9-mstd0.5-inc1``: ``num_ops`` ops drawn uniformly *with replacement*
(timm's ``np.random.choice(..., replace=True)``), each applied with
probability ``prob`` and its own magnitude ``m ~ N(magnitude,
magnitude_std)`` clipped to [0, 10] (``magnitude_std=inf``: ``m ~ U(0,
magnitude)``, as timm). Every random choice comes from one stateless key.

Images are float32 ``[H, W, 3]`` in [0, 255] (uint8 range, not quantised);
every op returns that range. Op arguments at magnitude ``m`` (``+-``: random
sign, as timm's ``_randomly_negate``):

======================  ===================================  ======  =======
op                      argument at magnitude m              m = 9   m = 10
======================  ===================================  ======  =======
AutoContrast            none (per-channel min, max -> 0, 255)
Equalize                none (per-channel histogram, PIL's)
Invert                  none (255 - x)
Rotate                  +-30 m/10 degrees                    +-27    +-30
PosterizeIncreasing     keep 4 - int(4 m/10) bits            1       0
SolarizeIncreasing      invert x >= 256 - int(256 m/10)      26      0
SolarizeAdd             x < 128: + min(128, int(110 m/10))   99      110
ColorIncreasing,        factor 1 +- 0.9 m/10                 1+-.81  1+-.9
ContrastIncreasing,
BrightnessIncreasing,
SharpnessIncreasing
ShearX, ShearY          +-0.3 m/10                           +-.27   +-.3
TranslateXRel, YRel     +-0.45 m/10 of the width / height    +-.405  +-.45
======================  ===================================  ======  =======

At ``m = 0`` every op is the identity except AutoContrast, Equalize, Invert
(no magnitude) and Posterize (4 bits).

Choices, following timm on PIL images: Solarize inverts the pixels ``>=``
the threshold; Posterize keeps the top bits of the rounded pixels (0 bits:
black, as older Pillow and TF's AutoAugment; recent Pillow rejects 0);
Equalize works on rounded pixels; Color blends with the BT.601 grey,
Contrast with the rounded mean grey, Brightness with black, Sharpness with
the 3x3 ``SMOOTH`` filter (weights 1, centre 5, over 13; border pixels kept).
Enhance factors extrapolate beyond 1; results are clipped to [0, 255].
Geometric ops are PIL's affine maps (rotation about the image centre,
shear about the top-left corner, PIL's pixel-centre convention and edge
handling), warped by ``ImageProjectiveTransformV3`` with bilinear
interpolation (timm uses bilinear or bicubic; this op has no bicubic) and
filled with grey (``FILL`` = 128, timm's default ``_FILL``). Every op is
within about one grey level of timm's PIL op on uint8 images.
"""

from __future__ import annotations

import math

import tensorflow as tf

LEVEL_MAX = 10.0  # timm's _LEVEL_DENOM: magnitudes live in [0, 10].
FILL = 128.0  # Grey fill of geometric ops (timm's _FILL = (128, 128, 128)).
_INTERPOLATION = 'BILINEAR'
_TRANSLATE_PCT = 0.45
_SHEAR_MAX = 0.3
_ROTATE_MAX = 30.0
_ENHANCE_MAX = 0.9
# PIL's "L" conversion (ITU-R BT.601 luma).
_LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------
# Colour ops.
# ----------------------------------------------------------------------------


def _clip(image: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(image, 0.0, 255.0)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's ``Image.blend(degenerate, image, factor)``; exact at factor 1."""
  factor = tf.cast(factor, tf.float32)
  return _clip(image * factor + degenerate * (1.0 - factor))


def _grey(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] -> [H, W, 1] luma."""
  return tf.reduce_sum(image * tf.constant(_LUMA), -1, keepdims=True)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel's [min, max] to [0, 255] (unchanged if flat)."""
  lo = tf.reduce_min(image, [0, 1], keepdims=True)
  hi = tf.reduce_max(image, [0, 1], keepdims=True)
  scale = 255.0 / tf.maximum(hi - lo, 1e-6)
  return tf.where(hi > lo, _clip((image - lo) * scale), image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  """PIL's ``ImageOps.equalize`` of one int32 [H, W] channel in [0, 255]."""
  histogram = tf.math.bincount(channel, minlength=256, maxlength=256)
  last = tf.gather(histogram, tf.reduce_max(channel))  # The last nonempty bin.
  step = (tf.reduce_sum(histogram) - last) // 256
  safe_step = tf.maximum(step, 1)
  below = tf.cumsum(histogram, exclusive=True)
  lut = tf.minimum((step // 2 + below) // safe_step, 255)
  return tf.where(step > 0, tf.gather(lut, channel), channel)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalisation per channel, of the rounded pixels (PIL's)."""
  pixels = tf.cast(tf.round(_clip(image)), tf.int32)
  channels = [_equalize_channel(pixels[..., c]) for c in range(3)]
  return tf.cast(tf.stack(channels, -1), tf.float32)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255.0 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """Keeps the ``bits`` high bits of each rounded pixel; 8 or more: as is."""
  bits = tf.cast(bits, tf.float32)
  step = tf.pow(2.0, 8.0 - tf.minimum(bits, 8.0))
  kept = tf.floor(tf.round(_clip(image)) / step) * step
  return tf.where(bits >= 8.0, image, kept)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts the pixels ``>= threshold`` (256: identity)."""
  threshold = tf.cast(threshold, tf.float32)
  return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image: tf.Tensor, add, threshold=128.0) -> tf.Tensor:
  """Adds ``add`` to the pixels ``< threshold``, clipped to 255."""
  add = tf.cast(add, tf.float32)
  threshold = tf.cast(threshold, tf.float32)
  return tf.where(image < threshold, tf.minimum(image + add, 255.0), image)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """Saturation: blend with the grey image (0: grey, 1: identity)."""
  return _blend(_grey(image), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """Blend with the rounded mean grey level (0: flat, 1: identity)."""
  mean = tf.floor(tf.reduce_mean(_grey(image)) + 0.5)
  return _blend(mean, image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """Blend with black (0: black, 1: identity)."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """Blend with PIL's SMOOTH-filtered image (0: smooth, 1: identity)."""
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
  kernel = tf.tile((kernel / 13.0)[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1],
                                  padding='VALID')[0]
  # PIL leaves the one-pixel border unfiltered.
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  shape = tf.shape(image)
  interior = tf.pad(tf.ones(shape[:2] - 2, tf.bool), [[1, 1], [1, 1]])
  smooth = tf.where(interior[..., None], smooth, image)
  return _blend(smooth, image, factor)


# ----------------------------------------------------------------------------
# Geometric ops.
# ----------------------------------------------------------------------------


def _affine(image: tf.Tensor, a, b, c, d, e, f) -> tf.Tensor:
  """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))``.

  Output point (x, y) samples the input at (a x + b y + c, d x + e y + f), in
  PIL's continuous coordinates (pixel centres at +0.5). As PIL: a point
  outside the input is ``FILL``, a point inside interpolates between
  edge-clamped neighbours (no grey bleeding into the border pixels).
  """
  a, b, c, d, e, f = (tf.cast(v, tf.float32) for v in (a, b, c, d, e, f))
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  y, x = tf.meshgrid(tf.range(height) + 0.5, tf.range(width) + 0.5,
                     indexing='ij')
  x_in, y_in = a * x + b * y + c, d * x + e * y + f
  inside = (x_in >= 0.0) & (x_in < width) & (y_in >= 0.0) & (y_in < height)
  # Pixel index coordinates of ImageProjectiveTransformV3:
  # in_idx = M (out_idx + 0.5) + t - 0.5.
  transform = tf.stack([a, b, c + 0.5 * (a + b) - 0.5,
                        d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0])[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=shape[:2],
      fill_value=FILL, interpolation=_INTERPOLATION, fill_mode='NEAREST')[0]
  out = tf.where(inside[..., None], out, FILL)
  return tf.ensure_shape(out, image.shape)


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
  """Counter-clockwise rotation about the centre (PIL's ``Image.rotate``)."""
  angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  cx, cy = size[1] / 2.0, size[0] / 2.0
  return _affine(image, cos, sin, cx - cos * cx - sin * cy,
                 -sin, cos, cy + sin * cx - cos * cy)


def shear_x(image: tf.Tensor, factor) -> tf.Tensor:
  return _affine(image, 1.0, factor, 0.0, 0.0, 1.0, 0.0)


def shear_y(image: tf.Tensor, factor) -> tf.Tensor:
  return _affine(image, 1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_x_rel(image: tf.Tensor, fraction) -> tf.Tensor:
  """Samples ``fraction * width`` to the right (content moves left)."""
  width = tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, 1.0, 0.0, fraction * width, 0.0, 1.0, 0.0)


def translate_y_rel(image: tf.Tensor, fraction) -> tf.Tensor:
  height = tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, fraction * height)


# ----------------------------------------------------------------------------
# Magnitude -> op arguments (timm's *_level_to_arg), and the op table.
# ----------------------------------------------------------------------------


def _signed(value, negate):
  return tf.where(negate, -value, value)


def _no_arg(level, negate):
  del level, negate
  return ()


def _rotate_arg(level, negate):
  return (_signed(level / LEVEL_MAX * _ROTATE_MAX, negate),)


def _posterize_increasing_arg(level, negate):
  del negate
  return (4.0 - tf.floor(level / LEVEL_MAX * 4.0),)


def _solarize_increasing_arg(level, negate):
  del negate
  return (256.0 - tf.minimum(256.0, tf.floor(level / LEVEL_MAX * 256.0)),)


def _solarize_add_arg(level, negate):
  del negate
  return (tf.minimum(128.0, tf.floor(level / LEVEL_MAX * 110.0)),)


def _enhance_increasing_arg(level, negate):
  return (1.0 + _signed(level / LEVEL_MAX * _ENHANCE_MAX, negate),)


def _shear_arg(level, negate):
  return (_signed(level / LEVEL_MAX * _SHEAR_MAX, negate),)


def _translate_rel_arg(level, negate):
  return (_signed(level / LEVEL_MAX * _TRANSLATE_PCT, negate),)


# name -> (op, magnitude -> arguments), in timm's order.
OPS = {
    'AutoContrast': (auto_contrast, _no_arg),
    'Equalize': (equalize, _no_arg),
    'Invert': (invert, _no_arg),
    'Rotate': (rotate, _rotate_arg),
    'PosterizeIncreasing': (posterize, _posterize_increasing_arg),
    'SolarizeIncreasing': (solarize, _solarize_increasing_arg),
    'SolarizeAdd': (solarize_add, _solarize_add_arg),
    'ColorIncreasing': (color, _enhance_increasing_arg),
    'ContrastIncreasing': (contrast, _enhance_increasing_arg),
    'BrightnessIncreasing': (brightness, _enhance_increasing_arg),
    'SharpnessIncreasing': (sharpness, _enhance_increasing_arg),
    'ShearX': (shear_x, _shear_arg),
    'ShearY': (shear_y, _shear_arg),
    'TranslateXRel': (translate_x_rel, _translate_rel_arg),
    'TranslateYRel': (translate_y_rel, _translate_rel_arg),
}
OP_NAMES = tuple(OPS)


def apply_op(image: tf.Tensor, name: str, magnitude,
             negate=False) -> tf.Tensor:
  """Op ``name`` at ``magnitude`` in [0, 10]; ``negate`` flips the sign."""
  op, level_to_arg = OPS[name]
  magnitude = tf.cast(magnitude, tf.float32)
  args = level_to_arg(magnitude, tf.convert_to_tensor(negate, tf.bool))
  return _clip(op(image, *args))


@tf.function(autograph=False)
def _random_op(image: tf.Tensor, branch: tf.Tensor, level: tf.Tensor,
               negate: tf.Tensor) -> tf.Tensor:
  """Op ``OP_NAMES[branch]`` (``len(OPS)``: none); traced once, shared."""

  def make_branch(name):
    if name is None:
      return lambda: image
    return lambda: apply_op(image, name, level, negate)

  branches = [make_branch(name) for name in OP_NAMES + (None,)]
  return tf.ensure_shape(tf.switch_case(branch, branches), image.shape)


@tf.autograph.experimental.do_not_convert
def randaugment(image: tf.Tensor, key: tf.Tensor, *, num_ops: int = 2,
                magnitude: float = 9.0, magnitude_std: float = 0.5,
                prob: float = 0.5) -> tf.Tensor:
  """RandAugment of one float32 [H, W, 3] image in [0, 255]; same range.

  Args:
    image: float32 [H, W, 3], values in [0, 255].
    key: [2] int64 stateless key; the output is a pure function of (image,
      key, arguments).
    num_ops: ops per image, drawn uniformly with replacement from ``OPS``.
    magnitude: mean magnitude in [0, 10].
    magnitude_std: per-op magnitude noise (normal, then clipped to [0, 10]);
      0: fixed; ``inf``: uniform in [0, magnitude].
    prob: probability of applying each drawn op.
  """
  if isinstance(num_ops, bool) or int(num_ops) != num_ops or num_ops < 1:
    raise ValueError(f'num_ops must be an integer >= 1, got {num_ops!r}.')
  if not 0.0 <= magnitude <= LEVEL_MAX:
    raise ValueError(f'magnitude must be in [0, 10], got {magnitude!r}.')
  if not magnitude_std >= 0.0:
    raise ValueError(f'magnitude_std must be >= 0, got {magnitude_std!r}.')
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f'prob must be in [0, 1], got {prob!r}.')
  num_ops = int(num_ops)
  image = tf.convert_to_tensor(image, tf.float32)
  op_key, uniform_key, normal_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 3))
  op_index = tf.random.stateless_uniform([num_ops], op_key, minval=0,
                                         maxval=len(OPS), dtype=tf.int32)
  # Per op: applied?, sign, uniform magnitude (magnitude_std=inf).
  uniform = tf.random.stateless_uniform([num_ops, 3], uniform_key)
  noise = tf.random.stateless_normal([num_ops], normal_key)
  if math.isinf(magnitude_std):
    levels = uniform[:, 2] * magnitude
  else:
    levels = magnitude + magnitude_std * noise
  levels = tf.clip_by_value(levels, 0.0, LEVEL_MAX)
  # Branch len(OPS): the op is skipped.
  branches = tf.where(uniform[:, 0] < prob, op_index, len(OPS))
  negate = uniform[:, 1] < 0.5
  shape = image.shape
  for i in range(num_ops):
    image = _random_op(image, branches[i], levels[i], negate[i])
  return tf.ensure_shape(image, shape)
