"""CIE Lab colours and the quantised ab space of colorful image colorization.

dm-pix (the project's on-device image library) converts between RGB, HSV
and HSL and has no Lab, so the conversion is written here: sRGB (IEC
61966-2-1 companding) -> linear RGB -> XYZ (D65) -> CIE L*a*b*, and back.
L lies in [0, 100]; a and b within about [-87, 99] and [-108, 95] for sRGB
colours.

Zhang, Isola and Efros ("Colorful image colorization", 2016) predict a
distribution over ab quantised on a grid of size 10 and keep the bins that
in-gamut colours reach (313 in their count), training against soft targets:
each true ab encoded on its 5 nearest bins with a Gaussian of sigma 5.
`ab_bins` computes the in-gamut cells of the grid from the sRGB cube
(every 8-bit level of each channel, subsampled 2x: 128^3 colours), and
`soft_encode` makes the soft targets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# sRGB (linear) -> XYZ, D65 white; and the white point itself.
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], np.float64)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(axis=1)  # XYZ of RGB (1, 1, 1): (0.95047, 1.0, 1.08883)
_EPS = (6.0 / 29.0) ** 3
_KAPPA = (29.0 / 6.0) ** 2 / 3.0  # the slope of f below _EPS


def _linear(rgb):
  return jnp.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _companded(linear):
  linear = jnp.clip(linear, 0.0, 1.0)
  return jnp.where(linear <= 0.0031308, 12.92 * linear,
                   1.055 * jnp.power(jnp.maximum(linear, 0.0031308), 1 / 2.4) - 0.055)


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """sRGB in [0, 1] [..., 3] -> CIE Lab [..., 3] (L in [0, 100])."""
  rgb = jnp.asarray(rgb, jnp.float32)
  xyz = _linear(jnp.clip(rgb, 0.0, 1.0)) @ jnp.asarray(_RGB_TO_XYZ.T / _WHITE[None], rgb.dtype)
  f = jnp.where(xyz > _EPS, jnp.cbrt(jnp.maximum(xyz, _EPS)), _KAPPA * xyz + 4.0 / 29.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
  """CIE Lab [..., 3] -> sRGB in [0, 1] (colours outside the gamut clipped)."""
  lab = jnp.asarray(lab, jnp.float32)
  fy = (lab[..., 0] + 16.0) / 116.0
  f = jnp.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
  xyz = jnp.where(f > 6.0 / 29.0, f ** 3, (f - 4.0 / 29.0) / _KAPPA)
  linear = (xyz * jnp.asarray(_WHITE, lab.dtype)) @ jnp.asarray(_XYZ_TO_RGB.T, lab.dtype)
  return _companded(linear)


@functools.lru_cache(maxsize=4)
def ab_bins(grid: float = 10.0) -> np.ndarray:
  """[Q, 2] centres (multiples of `grid`) of the ab cells that sRGB colours
  reach, in a fixed order (a, then b). Computed once, in numpy."""
  levels = np.arange(0, 256, 2, dtype=np.float64) / 255.0
  r, g, b = np.meshgrid(levels, levels, levels, indexing='ij')
  rgb = np.stack([r, g, b], -1).reshape(-1, 3)
  linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  xyz = linear @ (_RGB_TO_XYZ.T / _WHITE[None])
  f = np.where(xyz > _EPS, np.cbrt(np.maximum(xyz, _EPS)), _KAPPA * xyz + 4.0 / 29.0)
  ab = np.stack([500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], -1)
  cells = np.unique(np.round(ab / grid).astype(np.int64), axis=0)
  out = (cells * grid).astype(np.float32)
  out.flags.writeable = False
  return out


def soft_encode(ab: jax.Array, bins: jax.Array, neighbours: int = 5,
                sigma: float = 5.0) -> jax.Array:
  """ab [..., 2] -> [..., Q] soft targets: a Gaussian (sigma) of the distance
  to each of the `neighbours` nearest bins, normalised to sum 1; 0 elsewhere."""
  d2 = jnp.sum(jnp.square(ab[..., None, :] - bins), axis=-1)  # [..., Q]
  near, idx = jax.lax.top_k(-d2, neighbours)
  w = jax.nn.softmax(near / (2.0 * sigma ** 2), axis=-1)  # exp(-d^2 / 2 sigma^2), normalised
  q = bins.shape[0]
  return jnp.sum(jax.nn.one_hot(idx, q, dtype=w.dtype) * w[..., None], axis=-2)
