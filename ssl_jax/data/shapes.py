"""`ssl_jax_shapes`: a built-in, offline, procedurally generated image dataset.

Every example is a 64x64 RGB image of one of ten shapes (the label) drawn on a
smoothly shaded background. The class is a matter of *shape* only: the
position, scale, rotation and foreground colour of the shape and the
background shading (a linear or radial gradient between two nearby colours,
or a blend of two) are all random per image, so a linear classifier on raw
pixels does poorly (closed-form ridge regression on 2000 images: about 16%
test accuracy, 10% is chance; `tests/test_data.py` prints it). The shape
stands out in grayscale as well as in colour (its luma differs from every
background luma by at least 0.35), because PatchFormer decodes grayscale and
the other methods' colorization and palette targets read luma too.

Version 2.0.0 is calibrated for self-supervised pretraining on a laptop CPU:
in 1.0.0 the shapes were smaller (radius 12-26 px), the backgrounds also had
stripes and value noise with twice the colour spread, and only the RGB
contrast was bounded. There, 1000 steps of PatchFormer `tiny` learned to
continue the background and nothing about the shapes (its features were no
better than random ones under any linear probe); here they are (see
benchmarks/evaluation.py). The dataset is a cheap but meaningful smoke test
for pretraining + linear probing, with no network access and no manual
download.

Determinism: example ``i`` of split ``s`` is rendered from
``np.random.default_rng([FIXED_SEED, SPLIT_IDS[s], i])`` and its label is
``i % NUM_CLASSES`` (balanced classes), so the dataset is identical on every
machine and every build.

Rendering is vectorised numpy: every shape is a signed distance field (SDF,
in pixels, negative inside) evaluated on the pixel grid; coverage
``clip(0.5 - sdf, 0, 1)`` gives a one-pixel anti-aliased edge.

Use :func:`prepare` to build it (ArrayRecord format, needed for random
access by :mod:`ssl_jax.data.pipeline`). Configs: ``default`` (tfds name
``ssl_jax_shapes``; 20000 train / 4000 test, ~45 s on two CPU cores, 176 MB)
and ``small`` (``ssl_jax_shapes/small``; 2000 / 500, ~4 s), whose examples
are the first ones of ``default``.

Rotation prediction cannot be learned from these images: shape angles and
shading directions are uniform, so every rotation of an image is as likely
as the image itself. The ``upright`` configurations (``ssl_jax_shapes/
upright``, 20000 / 4000, and ``upright_small``, 2000 / 500, its prefix) draw
the same classes with the shape in its canonical orientation (within 15
degrees), the background lit from above (the lighter of its two colours at
the top, the gradient within 15 degrees of vertical) and the shape's shadow
cast below it: which way is up is in the image. Same labels (``i %
NUM_CLASSES``), same generator per example, different images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ssl_jax import locking

FIXED_SEED = 20240917
IMAGE_SIZE = 64
SPLIT_IDS = {'train': 0, 'test': 1}

CLASS_NAMES = (
    'circle',
    'ring',
    'square',
    'square_frame',
    'triangle',
    'plus',
    'star',
    'crescent',
    'arrow',
    'l_shape',
)
NUM_CLASSES = len(CLASS_NAMES)

# Shape size: distance (pixels, at size 64) from the shape centre to its
# farthest point. All shapes are defined with circumradius <= 1.
_MIN_RADIUS_FRAC = 18.0 / 64.0
_MAX_RADIUS_FRAC = 28.0 / 64.0
# Minimum RGB distance (colours in [0, 1]) between the foreground colour and
# every colour the background can take, and the minimum luma difference.
_MIN_CONTRAST = 0.5
_MIN_LUMA_CONTRAST = 0.35
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as augment.grayscale
# Range of the RGB distance between the two background colours.
_BACKGROUND_SPREAD = (0.075, 0.3)
_PIXEL_NOISE_STD = 0.015
# The upright configurations: the shape's and the light's tilt from the
# canonical orientation (radians), the shadow's drop below the shape (a
# fraction of its radius) and how much it darkens the background.
_UPRIGHT_TILT = np.deg2rad(15.0)
_SHADOW_OFFSET = 0.15
_SHADOW_DARKNESS = 0.45


# ----------------------------------------------------------------------------
# Signed distance fields. Points are given as two float arrays ``x, y`` (same
# shape) in the shape's local frame (circumradius <= 1); results are in the
# same units, negative inside.
# ----------------------------------------------------------------------------


def _sdf_circle(x: np.ndarray, y: np.ndarray, radius: float,
                cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
  return np.hypot(x - cx, y - cy) - radius


def _sdf_polygon(x: np.ndarray, y: np.ndarray,
                 vertices: np.ndarray) -> np.ndarray:
  """Exact signed distance to a simple polygon (vertices [E, 2], any order).

  Loops over edges with whole-grid operations (E is small), which is much
  faster in numpy than broadcasting to [..., E, 2] and reducing.
  """
  dist2 = np.full(x.shape, np.inf)
  inside = np.zeros(x.shape, dtype=bool)
  for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0)):
    ex, ey = bx - ax, by - ay
    wx, wy = x - ax, y - ay
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dx, dy = wx - ex * t, wy - ey * t
    np.minimum(dist2, dx * dx + dy * dy, out=dist2)
    if ey != 0.0:  # Even-odd rule, ray towards +x.
      straddles = (ay > y) != (by > y)
      inside ^= straddles & (x < ax + ex * (y - ay) / ey)
  dist = np.sqrt(dist2)
  return np.where(inside, -dist, dist)


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
  angles = phase + 2.0 * np.pi * np.arange(n) / n
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _star_polygon(points: int, outer: float, inner: float) -> np.ndarray:
  angles = np.pi / 2 + np.pi * np.arange(2 * points) / points
  radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
  return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


_SQUARE = _regular_polygon(4, 0.96, np.pi / 4)  # half side 0.68
_SQUARE_HOLE = _regular_polygon(4, 0.54, np.pi / 4)  # half side 0.38
_TRIANGLE = _regular_polygon(3, 1.0, np.pi / 2)
_PLUS = np.array([
    [0.3, 0.3], [0.3, 0.95], [-0.3, 0.95], [-0.3, 0.3], [-0.95, 0.3],
    [-0.95, -0.3], [-0.3, -0.3], [-0.3, -0.95], [0.3, -0.95], [0.3, -0.3],
    [0.95, -0.3], [0.95, 0.3],
])
_STAR = _star_polygon(5, 1.0, 0.42)
_ARROW = np.array([
    [-0.95, -0.2], [0.2, -0.2], [0.2, -0.62], [0.95, 0.0], [0.2, 0.62],
    [0.2, 0.2], [-0.95, 0.2],
])
_L_SHAPE = np.array([
    [-0.55, -0.8], [-0.13, -0.8], [-0.13, 0.38], [0.6, 0.38], [0.6, 0.8],
    [-0.55, 0.8],
])


def _sdf_ring(x, y):
  return np.abs(_sdf_circle(x, y, 0.7)) - 0.22


def _sdf_square_frame(x, y):
  return np.maximum(_sdf_polygon(x, y, _SQUARE),
                    -_sdf_polygon(x, y, _SQUARE_HOLE))


def _sdf_crescent(x, y):
  bite = _sdf_circle(x, y, 0.72, cx=0.45)
  return np.maximum(_sdf_circle(x, y, 0.9), -bite)


def _polygon_sdf(vertices: np.ndarray) -> Callable[..., np.ndarray]:
  return lambda x, y: _sdf_polygon(x, y, vertices)


_SDFS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'circle': lambda x, y: _sdf_circle(x, y, 0.9),
    'ring': _sdf_ring,
    'square': _polygon_sdf(_SQUARE),
    'square_frame': _sdf_square_frame,
    'triangle': _polygon_sdf(_TRIANGLE),
    'plus': _polygon_sdf(_PLUS),
    'star': _polygon_sdf(_STAR),
    'crescent': _sdf_crescent,
    'arrow': _polygon_sdf(_ARROW),
    'l_shape': _polygon_sdf(_L_SHAPE),
}
assert tuple(_SDFS) == CLASS_NAMES


# ----------------------------------------------------------------------------
# Backgrounds: a shading field t in [0, 1] mixes two random colours.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _unit_grid(size: int) -> np.ndarray:
  """Pixel centres, float64 [size, size, 2] as (x, y) in [0, 1]; read-only."""
  coords = (np.arange(size, dtype=np.float64) + 0.5) / size
  xs, ys = np.meshgrid(coords, coords, indexing='xy')
  grid = np.stack([xs, ys], axis=-1)
  grid.flags.writeable = False
  return grid


def _unit_direction(rng: np.random.Generator) -> np.ndarray:
  angle = rng.uniform(0.0, 2.0 * np.pi)
  return np.array([np.cos(angle), np.sin(angle)])


def _texture_gradient(rng, uv):
  proj = (uv - 0.5) @ _unit_direction(rng)
  return np.clip(proj / np.sqrt(0.5) + 0.5, 0.0, 1.0)


def _texture_radial(rng, uv):
  centre = rng.uniform(0.0, 1.0, size=2)
  dist = np.linalg.norm(uv - centre, axis=-1)
  return np.clip(dist / rng.uniform(0.5, 1.2), 0.0, 1.0)


_TEXTURES = (_texture_gradient, _texture_radial)


def _background_field(rng: np.random.Generator, uv: np.ndarray) -> np.ndarray:
  """A texture field in [0, 1]: one texture, or a blend of two."""
  first = _TEXTURES[rng.integers(len(_TEXTURES))](rng, uv)
  if rng.uniform() < 0.35:
    second = _TEXTURES[rng.integers(len(_TEXTURES))](rng, uv)
    mix = rng.uniform(0.3, 0.7)
    first = mix * first + (1.0 - mix) * second
  return first


def _distance_to_segment(point, a, b) -> float:
  ab = b - a
  denom = float(ab @ ab)
  t = 0.0 if denom == 0.0 else float(np.clip((point - a) @ ab / denom, 0, 1))
  return float(np.linalg.norm(point - (a + t * ab)))


def _contrasting_colour(rng, bg_a, bg_b) -> np.ndarray:
  """A random colour far from every background colour: RGB distance >=
  _MIN_CONTRAST and luma difference >= _MIN_LUMA_CONTRAST.

  Background colours lie on the RGB segment [bg_a, bg_b] (their lumas on
  [min, max] of the two ends'); rejection-sample, falling back to black or
  white, whichever is farther in luma (the background's luma range is at
  most 0.2 wide, so that one is >= 0.4 away in luma and >= 0.6 in RGB).
  """
  luma_lo, luma_hi = sorted((float(bg_a @ _LUMA), float(bg_b @ _LUMA)))
  for _ in range(256):
    colour = rng.uniform(0.0, 1.0, size=3)
    luma = float(colour @ _LUMA)
    if (max(luma_lo - luma, luma - luma_hi) >= _MIN_LUMA_CONTRAST
        and _distance_to_segment(colour, bg_a, bg_b) >= _MIN_CONTRAST):
      return colour
  return np.ones(3) if luma_lo + luma_hi < 1.0 else np.zeros(3)


def _background_colours(rng) -> tuple[np.ndarray, np.ndarray]:
  """Two colours for the background; their spread is bounded for contrast."""
  bg_a = rng.uniform(0.0, 1.0, size=3)
  offset = rng.normal(size=3)
  offset *= rng.uniform(*_BACKGROUND_SPREAD) / np.linalg.norm(offset)
  return bg_a, np.clip(bg_a + offset, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Public rendering API.
# ----------------------------------------------------------------------------


def _shape_pose(rng, size: int, upright: bool) -> tuple[float, float, float, float]:
  """(radius, cx, cy, angle) of the shape, in pixels and radians.

  Default: any angle. Upright: the canonical orientation (angle pi: the
  triangle and the star point up) within +-_UPRIGHT_TILT, and room below
  the shape for its shadow."""
  radius = rng.uniform(_MIN_RADIUS_FRAC, _MAX_RADIUS_FRAC) * size
  margin = radius + 1.0
  if not upright:
    cx, cy = rng.uniform(margin, size - margin, size=2)
    return radius, cx, cy, rng.uniform(0.0, 2.0 * np.pi)
  drop = _SHADOW_OFFSET * radius
  cx = rng.uniform(margin, size - margin - drop)
  cy = rng.uniform(margin, size - margin - drop)
  return radius, cx, cy, np.pi + rng.uniform(-_UPRIGHT_TILT, _UPRIGHT_TILT)


def _coverage(label: int, size: int, radius: float, cx: float, cy: float,
              angle: float) -> np.ndarray:
  """Anti-aliased coverage in [0, 1], [size, size], of the shape at that
  pose (it lies at least one pixel inside the image); the SDF is only
  evaluated on its bounding square."""
  margin = radius + 1.0
  x0, x1 = max(int(np.floor(cx - margin)), 0), min(int(np.ceil(cx + margin)), size)
  y0, y1 = max(int(np.floor(cy - margin)), 0), min(int(np.ceil(cy + margin)), size)
  dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
  dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
  # Rotate pixel offsets by -angle into the shape's local frame.
  cos, sin = np.cos(angle), np.sin(angle)
  local_x = (cos * dx + sin * dy) / radius
  local_y = (cos * dy - sin * dx) / radius
  sdf_pixels = _SDFS[CLASS_NAMES[label]](local_x, local_y) * radius
  coverage = np.zeros((size, size))
  coverage[y0:y1, x0:x1] = np.clip(0.5 - sdf_pixels, 0.0, 1.0)
  return coverage


def _upright_field(rng, uv: np.ndarray) -> np.ndarray:
  """Light from above: 0 at the top, 1 at the bottom, the direction within
  +-_UPRIGHT_TILT of vertical."""
  angle = np.pi / 2 + rng.uniform(-_UPRIGHT_TILT, _UPRIGHT_TILT)
  proj = (uv - 0.5) @ np.array([np.cos(angle), np.sin(angle)])
  return np.clip(proj / np.sqrt(0.5) + 0.5, 0.0, 1.0)


def render(rng: np.random.Generator, label: int,
           size: int = IMAGE_SIZE, upright: bool = False) -> np.ndarray:
  """Renders one image of class ``label``; uint8 [size, size, 3].

  All randomness (placement, colours, texture, noise) is drawn from ``rng``,
  so rendering is a pure function of the generator state and the label.
  ``upright``: the shape in its canonical orientation (within a small
  tilt), the background lit from above (its lighter colour at the top) and
  the shape's shadow cast below it, so that which way is up can be read
  from the image (rotation prediction); otherwise every orientation and
  shading direction is equally likely.
  """
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f'label must be in [0, {NUM_CLASSES}), got {label}')
  pose = _shape_pose(rng, size, upright)
  coverage = _coverage(int(label), size, *pose)[..., None]
  bg_a, bg_b = _background_colours(rng)
  if upright:
    if bg_a @ _LUMA < bg_b @ _LUMA:  # the lighter colour on top
      bg_a, bg_b = bg_b, bg_a
    field = _upright_field(rng, _unit_grid(size))[..., None]
  else:
    field = _background_field(rng, _unit_grid(size))[..., None]
  foreground = _contrasting_colour(rng, bg_a, bg_b)
  image = bg_a + (bg_b - bg_a) * field  # Background.
  if upright:
    radius, cx, cy, angle = pose
    shadow = _coverage(int(label), size, radius, cx, cy + _SHADOW_OFFSET * radius, angle)
    image *= 1.0 - _SHADOW_DARKNESS * shadow[..., None]
  image += (foreground - image) * coverage
  noise = rng.standard_normal(size=image.shape, dtype=np.float32)
  image += _PIXEL_NOISE_STD * noise
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def example_rng(split: str, index: int) -> np.random.Generator:
  """The generator that example ``index`` of ``split`` is rendered from."""
  return np.random.default_rng([FIXED_SEED, SPLIT_IDS[split], index])


def label_of(index: int) -> int:
  return index % NUM_CLASSES


def render_example(split: str, index: int, size: int = IMAGE_SIZE,
                   upright: bool = False) -> tuple[np.ndarray, int]:
  """Example ``index`` of ``split`` exactly as stored in the dataset (an
  upright configuration's with ``upright``)."""
  label = label_of(index)
  return render(example_rng(split, index), label, size, upright), label


# ----------------------------------------------------------------------------
# TFDS builder.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """A size of the dataset; the examples of a smaller config are a prefix."""

  train_size: int = 20_000
  test_size: int = 4_000
  upright: bool = False

  def split_sizes(self) -> dict[str, int]:
    return {'train': self.train_size, 'test': self.test_size}


class SslJaxShapes(tfds.core.GeneratorBasedBuilder):
  """Ten procedurally rendered shapes on randomly shaded backgrounds."""

  name = 'ssl_jax_shapes'
  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '2.0.0': 'Larger shapes, shaded backgrounds without stripes or noise, '
               'shapes contrasting in luma: learnable by self-supervision on a CPU.',
  }
  BUILDER_CONFIGS = [
      ShapesConfig(
          name='default', train_size=20_000, test_size=4_000,
          description='20000 train / 4000 test images (about 50 s to build '
          'on 2 CPU cores, 176 MB).'),
      ShapesConfig(
          name='small', train_size=2_000, test_size=500,
          description='2000 train / 500 test images, for tests and quick '
          'experiments (a few seconds to build).'),
      ShapesConfig(
          name='upright', train_size=20_000, test_size=4_000, upright=True,
          description='default\'s sizes, every shape upright, lit from above, '
          'its shadow below: rotation is learnable.'),
      ShapesConfig(
          name='upright_small', train_size=2_000, test_size=500, upright=True,
          description='upright at small\'s sizes.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  # tfds 4.9.x resolves the default `code_path` of a builder defined in a
  # package through `importlib_resources`, which it only declares as a
  # dependency for Python < 3.9 (ModuleNotFoundError on 3.11). The path is
  # only used to look for a (non-existent) checksums file, so set it directly.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=('image', 'label'),
        # Keep record k == example k (the rendering index), so that the
        # stored data can be checked against `render_example`.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated locally; nothing to download.
    return {
        split: self._generate_examples(split, num)
        for split, num in self.builder_config.split_sizes().items()
    }

  def _generate_examples(self, split: str,
                         num_examples: int) -> Iterator[tuple[int, dict]]:
    for index in range(num_examples):
      image, label = render_example(split, index, upright=self.builder_config.upright)
      yield index, {'image': image, 'label': label}


def builder(data_dir: str | os.PathLike,
            config: str = 'default') -> SslJaxShapes:
  """The (possibly not yet prepared) ArrayRecord builder in ``data_dir``."""
  return SslJaxShapes(data_dir=os.fspath(data_dir), config=config,
                      file_format='array_record')


def prepare(data_dir: str | os.PathLike,
            config: str = 'default') -> tfds.core.DatasetBuilder:
  """Builds the dataset into ``data_dir`` (ArrayRecord) unless already there.

  Safe to call from several processes at once: the build holds a lease in
  ``data_dir/.lock/`` (:mod:`ssl_jax.locking`) and the others wait for it.

  Cached: when the dataset is already prepared in ``data_dir`` this only
  reads its metadata. Nothing is ever downloaded. ``config`` is ``'default'``
  (20000 train / 4000 test), ``'small'`` (2000 / 500), ``'upright'`` or
  ``'upright_small'`` (the same sizes, upright images).

  Raises:
    ValueError: if ``data_dir`` holds this dataset in another file format
      (TFRecord has no random access).
  """
  # Probe without forcing a format: tfds refuses to open a prepared dataset
  # with a file_format different from the one it was written in.
  existing = _prepared(data_dir, config)
  if existing is not None:
    return existing
  # Concurrent first runs on one data_dir: one builds, the others wait for it
  # (then find it prepared) instead of racing to rename tfds's temporary dir.
  with locking.Lease(os.fspath(data_dir), f'{SslJaxShapes.name}-{config}', what='data_dir',
                     wait=True):
    existing = _prepared(data_dir, config)
    if existing is not None:
      return existing
    shapes_builder = builder(data_dir, config)
    shapes_builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        )
    )
  return shapes_builder


def _prepared(data_dir: str | os.PathLike, config: str) -> tfds.core.DatasetBuilder | None:
  """The builder if the dataset is already prepared in data_dir, else None."""
  existing = SslJaxShapes(data_dir=os.fspath(data_dir), config=config)
  if not existing.is_prepared():
    return None
  if existing.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
        f'{existing.info.full_name} in {existing.data_dir} is stored as '
        f'{existing.info.file_format.value}, which has no random access; '
        'delete that directory so that it is rebuilt in ArrayRecord format.')
  return existing
