"""Per-patch augmentations, on the device, from a PRNG key.

PatchFormer (Figure 1) augments each visible patch independently: random crops
for spatial jitter, Inception colour noise (brightness, hue, saturation,
contrast), a flip 20% of the time, a random low bit depth from 2 to 8, and
random grayscale blending 20% of the time; pixels are then scaled to [-1, 1].
These functions take patches in [0, 1] with any leading shape [..., h, w, 3]
and draw every random parameter per patch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.nn.patches import to_signed

# ITU-R BT.601 luma, as tf.image.rgb_to_grayscale.
# numpy, not jnp: importing this module must not initialise a JAX backend
# (jax.distributed.initialize has to come first).
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)
# RGB <-> YIQ; a hue shift is a rotation of the (I, Q) plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PatchAugment:
  """The parameters of the per-patch augmentations (see configs/patchformer.py)."""
  brightness: float = 32.0 / 255.0   # max |delta|, Inception preprocessing
  saturation: tuple[float, float] = (0.5, 1.5)
  hue: float = 0.2                   # max |delta| as a fraction of a full turn
  contrast: tuple[float, float] = (0.5, 1.5)
  flip_prob: float = 0.2
  min_bits: int = 2
  max_bits: int = 8
  gray_prob: float = 0.2


def grayscale(x: jax.Array) -> jax.Array:
  """[..., 3] -> [..., 1] luma."""
  return jnp.einsum('...c,c->...', x, jnp.asarray(_LUMA, x.dtype))[..., None]


def _per_patch(key, shape, lo, hi):
  """Uniform [lo, hi) draws shaped to broadcast against [*shape, h, w, 3]."""
  return jax.random.uniform(key, shape + (1, 1, 1), minval=lo, maxval=hi)


def colour_noise(key: jax.Array, x: jax.Array, aug: PatchAugment) -> jax.Array:
  """Inception colour noise: brightness, saturation, hue, contrast; clipped."""
  lead = x.shape[:-3]
  kb, ks, kh, kc = jax.random.split(key, 4)
  x = x + _per_patch(kb, lead, -aug.brightness, aug.brightness)
  gray = grayscale(x)
  x = gray + _per_patch(ks, lead, *aug.saturation) * (x - gray)
  angle = _per_patch(kh, lead, -aug.hue, aug.hue)[..., 0] * 2 * jnp.pi
  yiq = x @ _RGB_TO_YIQ.T
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  i = cos * yiq[..., 1] - sin * yiq[..., 2]
  q = sin * yiq[..., 1] + cos * yiq[..., 2]
  x = jnp.stack([yiq[..., 0], i, q], axis=-1) @ _YIQ_TO_RGB.T
  mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
  x = mean + _per_patch(kc, lead, *aug.contrast) * (x - mean)
  return jnp.clip(x, 0.0, 1.0)


def random_flip(key: jax.Array, x: jax.Array, prob: float) -> jax.Array:
  """Flips each patch left-right with probability `prob`."""
  flip = jax.random.bernoulli(key, prob, x.shape[:-3] + (1, 1, 1))
  return jnp.where(flip, jnp.flip(x, axis=-2), x)


def quantize(x: jax.Array, bits: jax.Array | int) -> jax.Array:
  """Rounds [0, 1] values to 2**bits evenly spaced levels in [0, 1]."""
  levels = jnp.asarray(2.0, x.dtype) ** bits - 1
  return jnp.round(x * levels) / levels


def random_bit_depth(key: jax.Array, x: jax.Array, lo: int, hi: int) -> jax.Array:
  """Quantizes each patch to a bit depth drawn uniformly from {lo, ..., hi}."""
  bits = jax.random.randint(key, x.shape[:-3] + (1, 1, 1), lo, hi + 1)
  return quantize(x, bits.astype(x.dtype))


def random_gray_blend(key: jax.Array, x: jax.Array, prob: float) -> jax.Array:
  """With probability `prob` a patch is blended with its grayscale version
  by a uniform random weight."""
  kp, kw = jax.random.split(key)
  lead = x.shape[:-3]
  weight = _per_patch(kw, lead, 0.0, 1.0) * jax.random.bernoulli(
      kp, prob, lead + (1, 1, 1))
  return x + weight * (grayscale(x) - x)


def augment_patches(key: jax.Array, x: jax.Array, aug: PatchAugment) -> jax.Array:
  """Figure 1's chain on patches in [0, 1]; returns values in [-1, 1]."""
  kc, kf, kb, kg = jax.random.split(key, 4)
  x = colour_noise(kc, x, aug)
  x = random_flip(kf, x, aug.flip_prob)
  x = random_bit_depth(kb, x, aug.min_bits, aug.max_bits)
  x = random_gray_blend(kg, x, aug.gray_prob)
  return to_signed(x)


def random_crops(key: jax.Array, patches: jax.Array, crop: int) -> jax.Array:
  """A random crop x crop window inside each patch [..., p, p, C] (spatial
  jitter, Figure 1). Windows stay inside their own patch so that no pixel of
  a neighbouring (possibly masked) patch leaks in."""
  lead, (p, c) = patches.shape[:-3], patches.shape[-2:]
  flat = patches.reshape((-1, p, p, c))
  offsets = jax.random.randint(key, (flat.shape[0], 2), 0, p - crop + 1)
  crops = jax.vmap(lambda img, o: jax.lax.dynamic_slice(
      img, (o[0], o[1], 0), (crop, crop, c)))(flat, offsets)
  return crops.reshape(lead + (crop, crop, c))


def centre_crops(patches: jax.Array, crop: int) -> jax.Array:
  """The deterministic centre crop x crop window of each patch (evaluation)."""
  p = patches.shape[-2]
  start = (p - crop) // 2
  return patches[..., start:start + crop, start:start + crop, :]
