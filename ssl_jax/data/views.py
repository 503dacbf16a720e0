"""Multi-view training examples: per-view settings and photometric ops.

``make_dataset(..., views=[ViewSpec(...), ...])`` gives every training
example ``V = len(views)`` views: ``batch['image']`` is float32 ``[b, V, S,
S, 3]`` in [0, 1] (``b`` counts images, not views). View ``v`` of the example
at global index ``g`` is

1. *geometry* (:mod:`ssl_jax.data.pipeline`): an Inception random resized
   crop of the decoded image (area in ``[min_area, 1]``, aspect ratio in
   ``aspect``), resized to ``S x S`` (bilinear, anti-aliased when shrinking),
   then a horizontal flip with probability 1/2 if ``flip``. View 0 uses the
   very keys of the single-view pipeline (``views=None``), so view 0 without
   photometric ops is byte for byte the single-view image; view ``v > 0``
   uses keys folded from ``(g, v)`` on a stream of its own.
   ``share_geometry=True``: every view is view 0's crop and flip (the pixel
   at ``(i, j)`` shows the same place of the scene in every view), and views
   differ only photometrically;
2. *photometric ops* (this module, :func:`photometric`), on float images in
   [0, 1], in SimCLR's order: colour jitter with probability
   ``jitter_prob`` -- brightness (a factor in ``[max(0, 1 - brightness), 1 +
   brightness]``, SimCLR v2 / torchvision), contrast and saturation (factors
   in ``[max(0, 1 - s), 1 + s]``), hue (a shift in ``[-hue, hue]`` of a
   turn), in a random order as SimCLR does, clipped to [0, 1] after each;
   then grayscale with probability ``grayscale_prob`` (BT.601 luma copied to
   R, G and B); then a Gaussian blur with probability ``blur_prob``, sigma
   uniform in ``blur_sigma`` (pixels), a separable kernel of ``2r + 1`` taps
   with ``r = max(1, (S // 10) // 2)`` (SimCLR's kernel of 10% of the side;
   at least 3 taps so that small images are blurred at all), with reflected
   borders (SimCLR pads with zeros, which darkens the border).

SimCLR's augmentation of strength ``s`` is :meth:`ViewSpec.simclr`:
``jitter_prob=0.8``, ``brightness = contrast = saturation = 0.8 s``,
``hue = 0.2 s``, ``grayscale_prob=0.2``, ``blur_prob=0.5``, ``blur_sigma =
(0.1, 2.0)``. Every photometric setting defaults to off.

Where each op runs, and why
---------------------------
Everything runs in tf.data, on the host CPUs, per example, in the parallel
``map`` of :func:`ssl_jax.data.pipeline.make_dataset`:

* geometry needs the decoded full-resolution image (and, for JPEGs, decodes
  only each view's crop window), which only the host has: the accelerator
  receives ``S x S`` views;
* photometric ops are cheap per example (a few element-wise passes over an
  ``S x S`` image, two short 1-D convolutions for the blur) and keep the
  accelerator's step for the model;
* every op is stateless: its randomness is a pure function of ``(seed, g,
  v)`` (``tf.random.stateless_*`` draws from keys folded from the global
  example index and the view), so resuming at any step is exact and the
  global batch does not depend on the number of hosts.

Each random decision of a view (whether to jitter, the jitter order, each
jitter factor, whether to grayscale, whether to blur, the blur sigma) has a
key of its own, split from the view's photometric key: turning one op on or
off does not change the draws of the others, nor the view's geometry.

Single-view only: RandAugment and ``crop='pad'`` (``make_dataset`` rejects
them with ``views``). Evaluation (``train=False``) ignores ``views``: one
centre crop per example, ``[b, S, S, 3]``.
"""

from __future__ import annotations

import functools

import tensorflow as tf

# ViewSpec lives in ssl_jax.data.options, without TF: validating a config
# loads no TF.
from ssl_jax.data.options import ViewSpec

# Blur kernel: 2r + 1 taps, r = max(1, (S // _BLUR_KERNEL_DIVISOR) // 2).
_BLUR_KERNEL_DIVISOR = 10

# Subkeys of a view's photometric key, one per random decision.
(_JITTER_APPLY, _JITTER_ORDER, _BRIGHTNESS, _CONTRAST, _SATURATION, _HUE,
 _GRAYSCALE_APPLY, _BLUR_APPLY, _BLUR_SIGMA, _NUM_KEYS) = range(10)


# ----------------------------------------------------------------------------
# Photometric ops (TF, per example, float images in [0, 1]).
# ----------------------------------------------------------------------------


def _uniform(key: tf.Tensor, low: float, high: float) -> tf.Tensor:
  return tf.random.stateless_uniform([], key, minval=low, maxval=high)


def _random_apply(fn, image: tf.Tensor, prob: float,
                  key: tf.Tensor) -> tf.Tensor:
  """``fn(image)`` with probability ``prob`` (no op built when prob is 0)."""
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  return tf.cond(_uniform(key, 0.0, 1.0) < prob, lambda: fn(image),
                 lambda: image)


def color_jitter(image: tf.Tensor, spec: ViewSpec,
                 keys: tf.Tensor) -> tf.Tensor:
  """SimCLR's colour jitter (``color_jitter_rand``): the ops with a nonzero
  strength, in a random order, each clipped to [0, 1]. ``keys``: [_NUM_KEYS,
  2] subkeys of the view."""

  def factor(index, strength):
    return _uniform(keys[index], max(0.0, 1.0 - strength), 1.0 + strength)

  ops = []
  if spec.brightness:
    ops.append(lambda x: x * factor(_BRIGHTNESS, spec.brightness))
  if spec.contrast:
    ops.append(lambda x: tf.image.adjust_contrast(
        x, factor(_CONTRAST, spec.contrast)))
  if spec.saturation:
    ops.append(lambda x: tf.image.adjust_saturation(
        x, factor(_SATURATION, spec.saturation)))
  if spec.hue:
    ops.append(lambda x: tf.image.adjust_hue(
        x, _uniform(keys[_HUE], -spec.hue, spec.hue)))
  if len(ops) == 1:
    return tf.clip_by_value(ops[0](image), 0.0, 1.0)
  # A uniformly random order: the ranks of i.i.d. uniform draws.
  order = tf.argsort(tf.random.stateless_uniform([len(ops)],
                                                 keys[_JITTER_ORDER]))
  for i in range(len(ops)):
    branches = [functools.partial(op, image) for op in ops]
    image = tf.clip_by_value(tf.switch_case(order[i], branches), 0.0, 1.0)
  return image


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """BT.601 luma in all three channels (R = G = B)."""
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def blur_radius(image_size: int) -> int:
  """The blur kernel's radius r (2r + 1 taps) at image side ``image_size``."""
  return max(1, (image_size // _BLUR_KERNEL_DIVISOR) // 2)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor,
                  radius: int) -> tf.Tensor:
  """Separable Gaussian blur of float [h, w, c] with reflected borders."""
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-tf.square(taps) / (2.0 * tf.square(sigma)))
  weights /= tf.reduce_sum(weights)
  channels = tf.shape(image)[-1]
  x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
             mode='REFLECT')
  vertical = tf.tile(weights[:, None, None, None], [1, 1, channels, 1])
  horizontal = tf.tile(weights[None, :, None, None], [1, 1, channels, 1])
  x = tf.nn.depthwise_conv2d(x, vertical, [1, 1, 1, 1], 'VALID')
  x = tf.nn.depthwise_conv2d(x, horizontal, [1, 1, 1, 1], 'VALID')
  return x[0]


def photometric(image: tf.Tensor, key: tf.Tensor, spec: ViewSpec,
                image_size: int) -> tf.Tensor:
  """One view's photometric ops (jitter, grayscale, blur, each with its
  probability) on a float32 [S, S, 3] image in [0, 1]; ``key``: the view's
  [2] photometric key. The identity, with no op built, when all are off."""
  if not spec.has_photometric:
    return image
  image = tf.ensure_shape(image, [image_size, image_size, 3])
  keys = tf.random.experimental.stateless_split(key, _NUM_KEYS)
  if spec.jitter_prob > 0 and any(
      (spec.brightness, spec.contrast, spec.saturation, spec.hue)):
    image = _random_apply(lambda x: color_jitter(x, spec, keys), image,
                          spec.jitter_prob, keys[_JITTER_APPLY])
  image = _random_apply(to_grayscale, image, spec.grayscale_prob,
                        keys[_GRAYSCALE_APPLY])
  radius = blur_radius(image_size)
  low, high = spec.blur_sigma

  def blur(x):
    sigma = (_uniform(keys[_BLUR_SIGMA], low, high) if high > low
             else tf.constant(low, tf.float32))
    return gaussian_blur(x, sigma, radius)

  image = _random_apply(blur, image, spec.blur_prob, keys[_BLUR_APPLY])
  return tf.clip_by_value(image, 0.0, 1.0)
