"""What the input pipeline accepts, checked without TensorFlow.

:class:`ViewSpec` (one view's settings, see :mod:`ssl_jax.data.views`) and
the checks of :func:`ssl_jax.data.pipeline.make_dataset`'s options live
here, apart from the TF code that uses them, so that config validation
(:mod:`ssl_jax.core.validation`) and the methods' modules import no
TensorFlow: a bad config is refused in the seconds it takes to load JAX,
not after TensorFlow has loaded too. ``pipeline`` and ``views`` re-export
every name, so ``pipeline.check_views`` and ``views.ViewSpec`` stay as they
were.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import numbers

import numpy as np

from ssl_jax.data.errors import DataError

# SimCLR's augmentation (Chen et al. 2020, appendix A) at strength 1.
SIMCLR_JITTER_PROB = 0.8
SIMCLR_GRAYSCALE_PROB = 0.2
SIMCLR_BLUR_PROB = 0.5
SIMCLR_BLUR_SIGMA = (0.1, 2.0)
_INCEPTION_ASPECT = (3.0 / 4.0, 4.0 / 3.0)


def _error(message: str) -> Exception:
  return DataError(message)


def _is_real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _real(name, value, allowed: str, ok) -> float:
  """``float(value)`` if a finite real with ``ok(value)``, else DataError."""
  if not (_is_real(value) and math.isfinite(value) and ok(float(value))):
    raise _error(f'ViewSpec.{name} must be {allowed}, got {value!r}.')
  return float(value)


def _range(name, value, allowed: str, ok) -> tuple[float, float]:
  """A (low, high) pair of finite reals with ok(low) and low <= high."""
  message = f'ViewSpec.{name} must be a pair (low, high) with {allowed}, ' \
            f'got {value!r}.'
  try:
    low, high = value
  except (TypeError, ValueError):
    raise _error(message) from None
  if not (_is_real(low) and _is_real(high) and math.isfinite(low)
          and math.isfinite(high) and ok(float(low)) and low <= high):
    raise _error(message)
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """How to draw one view of a training example (see the module docstring).

  Attributes:
    min_area: in (0, 1]; the random resized crop's area lower bound
      (fraction of the image).
    aspect: (low, high), 0 < low <= high; the crop's aspect ratio range.
    flip: random horizontal flip (probability 1/2).
    jitter_prob: in [0, 1]; probability of colour jitter.
    brightness, contrast, saturation: >= 0; jitter strengths (factor in
      ``[max(0, 1 - x), 1 + x]``; 0: that op is skipped).
    hue: in [0, 0.5]; hue shift in ``[-hue, hue]`` turns (0: skipped).
    grayscale_prob: in [0, 1]; probability of grayscale.
    blur_prob: in [0, 1]; probability of Gaussian blur.
    blur_sigma: (low, high), 0 < low <= high; blur sigma range in pixels.
  """

  min_area: float = 0.08
  aspect: tuple[float, float] = _INCEPTION_ASPECT
  flip: bool = True
  jitter_prob: float = 0.0
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  hue: float = 0.0
  grayscale_prob: float = 0.0
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = SIMCLR_BLUR_SIGMA

  def __post_init__(self):
    probability = 'a probability in [0, 1]'
    checked = {
        'min_area': _real('min_area', self.min_area, 'in (0, 1]',
                          lambda x: 0.0 < x <= 1.0),
        'aspect': _range('aspect', self.aspect, '0 < low <= high',
                         lambda x: x > 0.0),
        'jitter_prob': _real('jitter_prob', self.jitter_prob, probability,
                             lambda x: 0.0 <= x <= 1.0),
        'grayscale_prob': _real('grayscale_prob', self.grayscale_prob,
                                probability, lambda x: 0.0 <= x <= 1.0),
        'blur_prob': _real('blur_prob', self.blur_prob, probability,
                           lambda x: 0.0 <= x <= 1.0),
        'hue': _real('hue', self.hue, 'in [0, 0.5] (a fraction of a turn)',
                     lambda x: 0.0 <= x <= 0.5),
        'blur_sigma': _range('blur_sigma', self.blur_sigma,
                             '0 < low <= high (pixels)', lambda x: x > 0.0),
    }
    for name in ('brightness', 'contrast', 'saturation'):
      checked[name] = _real(name, getattr(self, name),
                            'a finite real >= 0 (0: off)', lambda x: x >= 0.0)
    if not isinstance(self.flip, bool):
      raise _error(f'ViewSpec.flip must be True or False, got {self.flip!r}.')
    for name, value in checked.items():  # Canonical floats and tuples.
      object.__setattr__(self, name, value)

  @classmethod
  def simclr(cls, strength: float = 1.0, **overrides) -> ViewSpec:
    """SimCLR's augmentation at colour strength ``strength``.

    Jitter (p=0.8) with brightness, contrast, saturation ``0.8 * strength``
    and hue ``0.2 * strength``, grayscale (p=0.2), blur (p=0.5, sigma in
    [0.1, 2.0]), Inception crop of area >= 0.08 and flip; ``overrides``
    replace any field (e.g. ``blur_prob=1.0`` for BYOL's first view).
    """
    if not _is_real(strength):
      raise _error(f'ViewSpec.simclr strength must be a real >= 0, got '
                   f'{strength!r}.')
    fields = dict(jitter_prob=SIMCLR_JITTER_PROB, brightness=0.8 * strength,
                  contrast=0.8 * strength, saturation=0.8 * strength,
                  hue=0.2 * strength, grayscale_prob=SIMCLR_GRAYSCALE_PROB,
                  blur_prob=SIMCLR_BLUR_PROB, blur_sigma=SIMCLR_BLUR_SIGMA)
    fields.update(overrides)
    return cls(**fields)

  @classmethod
  def amdim(cls, **overrides) -> ViewSpec:
    """AMDIM's training augmentation (Bachman et al. 2019, its public code
    for STL-10 and ImageNet as we read it), which DV2 4.1 uses: a random
    resized crop of area 0.3-1 and aspect ratio 0.7-1.4, a flip, colour
    jitter (p=0.8) with brightness, contrast, saturation 0.4 and hue 0.125,
    grayscale (p=0.25), no blur; ``overrides`` replace any field."""
    fields = dict(min_area=0.3, aspect=(0.7, 1.4), flip=True, jitter_prob=0.8,
                  brightness=0.4, contrast=0.4, saturation=0.4, hue=0.125,
                  grayscale_prob=0.25)
    fields.update(overrides)
    return cls(**fields)

  @property
  def has_photometric(self) -> bool:
    """Whether any photometric op can change the view."""
    jitter = self.jitter_prob > 0 and any(
        (self.brightness, self.contrast, self.saturation, self.hue))
    return jitter or self.grayscale_prob > 0 or self.blur_prob > 0

  def geometry(self) -> tuple[float, tuple[float, float], bool]:
    """The settings that fix the view's crop and flip."""
    return self.min_area, self.aspect, self.flip

CROPS = ('resized', 'pad')  # make_dataset's crop: Inception-style, or pad-and-crop


def check_views(views, share_geometry, *, randaugment,
                crop) -> tuple[ViewSpec, ...] | None:
  """Validates ``make_dataset``'s ``views`` and ``share_geometry``."""
  if not isinstance(share_geometry, bool):
    raise DataError('share_geometry must be True or False, got '
                    f'{share_geometry!r}.')
  if views is None:
    if share_geometry:
      raise DataError('share_geometry=True needs views=[ViewSpec(...), ...] '
                      '(it shares view 0\'s crop and flip with the other '
                      'views); got views=None.')
    return None
  if isinstance(views, (ViewSpec, str)) or not isinstance(
      views, collections.abc.Sequence):
    raise DataError('views must be None or a sequence of ViewSpec (one per '
                    f'view), got {views!r}.')
  views = tuple(views)
  if not views:
    raise DataError('views must hold at least one ViewSpec, got an empty '
                    'sequence (use views=None for single-view batches).')
  for v, spec in enumerate(views):
    if not isinstance(spec, ViewSpec):
      raise DataError(f'views[{v}] must be a ViewSpec, got {spec!r}.')
  if share_geometry:
    for v, spec in enumerate(views[1:], 1):
      if spec.geometry() != views[0].geometry():
        raise DataError(
            'share_geometry=True gives every view the crop and flip of view '
            '0, so every view must have the same (min_area, aspect, flip): '
            f'views[0] has {views[0].geometry()}, views[{v}] has '
            f'{spec.geometry()}.')
  if randaugment is not None:
    raise DataError(
        f'randaugment={randaugment!r} is single-view only: it cannot be '
        'combined with views (use randaugment=None, or views=None).')
  if crop == 'pad':
    raise DataError(
        "crop='pad' is single-view only: it cannot be combined with views "
        "(use crop='resized' and ViewSpec.min_area/aspect, or views=None).")
  return views


def check_crop(crop: str) -> None:
  """Validates ``make_dataset``'s ``crop`` (and the config's data.crop)."""
  if crop not in CROPS:
    raise DataError(f'crop must be one of {CROPS}, got {crop!r}.')


def check_pad(pad: int, image_size: int) -> None:
  """Validates ``make_dataset``'s ``pad`` (and the config's data.pad)."""
  if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < image_size:
    raise DataError(f'pad must be an integer in [0, image_size={image_size}) (reflection '
                    f'padding of crop=\'pad\'), got {pad!r}.')


def check_randaugment(randaugment) -> tuple[int, float, float] | None:
  """Validates ``make_dataset``'s ``randaugment`` argument."""
  if randaugment is None:
    return None
  usage = ('randaugment must be None or (num_ops, magnitude, magnitude_std) '
           'with num_ops an integer >= 1, 0 <= magnitude <= 10 and '
           f'magnitude_std >= 0 (e.g. (2, 9.0, 0.5)); got {randaugment!r}')
  try:
    num_ops, magnitude, magnitude_std = randaugment
  except (TypeError, ValueError):
    raise DataError(usage + '.') from None
  integer, real = (int, np.integer), (int, float, np.integer, np.floating)
  if isinstance(num_ops, bool) or not isinstance(num_ops, integer) or (
      num_ops < 1):
    raise DataError(f'{usage}: bad num_ops.')
  if isinstance(magnitude, bool) or not isinstance(magnitude, real) or not (
      0.0 <= magnitude <= 10.0):
    raise DataError(f'{usage}: bad magnitude.')
  if isinstance(magnitude_std, bool) or not isinstance(
      magnitude_std, real) or not magnitude_std >= 0.0:  # Also rejects NaN.
    raise DataError(f'{usage}: bad magnitude_std.')
  return int(num_ops), float(magnitude), float(magnitude_std)
