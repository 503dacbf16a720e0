"""Mixup and CutMix on the device, from a PRNG key, with static shapes.

The DeiT / masked-autoencoder (He et al.) fine-tune recipe, as timm's `Mixup` in batch mode
(`Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
mode='batch', label_smoothing=0.1)`): one lambda and one choice of mixup or
cutmix for the whole batch, each example mixed with its partner in the batch
flipped (example i with example B - 1 - i, timm's `x.flip(0)`; with an odd
batch the middle example is mixed with itself). Everything is pure jnp of a
key, so `mix` runs inside the jitted train step; the cutmix box is a mask
built from iotas, never a dynamic slice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax.nn.losses import smooth_one_hot


def cutmix_box(key: jax.Array, height: int, width: int,
               lam: jax.Array) -> tuple[jax.Array, jax.Array]:
  """timm's `rand_bbox` with `correct_lam=True`, as a mask.

  The cut has sides int(H * sqrt(1 - lam)) and int(W * sqrt(1 - lam)), its
  centre is uniform over the pixels, and the box spans centre -/+ half a side
  (integer halves, as timm), clipped at the borders. Returns the bool [H, W]
  mask of the box (pixels taken from the partner) and the corrected lambda,
  1 - box area / (H * W), the fraction of pixels kept from the image.
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows = jax.lax.iota(jnp.int32, height)[:, None]
  cols = jax.lax.iota(jnp.int32, width)[None, :]
  box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  corrected = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / (height * width)
  return box, corrected


def mix(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, *,
        mixup_alpha: float, cutmix_alpha: float, switch_prob: float = 0.5,
        prob: float = 1.0, label_smoothing: float = 0.0,
        weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Mixup or CutMix of a batch: (images [B, H, W, C], soft targets [B, classes]).

  With probability `prob` the batch is mixed, else returned as is (lambda 1).
  Mixup draws lambda ~ Beta(mixup_alpha, mixup_alpha) and returns
  lam * x + (1 - lam) * x_flipped; cutmix draws lambda ~ Beta(cutmix_alpha,
  cutmix_alpha), pastes the partner's pixels in the box of `cutmix_box` and
  corrects lambda to the fraction of pixels kept. With both alphas > 0,
  cutmix is chosen with probability `switch_prob`; an alpha of 0 disables
  that kind (both 0: no mixing). The targets are
  lam * smooth(y) + (1 - lam) * smooth(y_flipped), smoothed as
  `ssl_jax.nn.losses.smooth_one_hot`, so every row sums to 1. The alphas and probabilities are
  static Python floats; images keep their dtype, targets are float32.

  Mixing assumes every example is valid. With `weights` [B] (1 for real
  examples, 0 for padding), an example whose partner is padding is left
  unmixed (its own image, lambda 1), so no padding pixels or labels leak into
  real examples; padding rows themselves may be mixed and are expected to be
  weighted out of the loss.
  """
  targets = smooth_one_hot(labels, num_classes, label_smoothing)
  if prob <= 0.0 or (mixup_alpha <= 0.0 and cutmix_alpha <= 0.0):
    return images, targets
  key_apply, key_switch, key_lam, key_box = jax.random.split(key, 4)
  if mixup_alpha > 0.0 and cutmix_alpha > 0.0:
    use_cutmix = jax.random.uniform(key_switch) < switch_prob
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0.0)
    alpha = jnp.asarray(max(mixup_alpha, cutmix_alpha), jnp.float32)
  lam = jax.random.beta(key_lam, alpha, alpha).astype(jnp.float32)
  _, height, width, _ = images.shape
  box, box_lam = cutmix_box(key_box, height, width, lam)
  lam = jnp.where(use_cutmix, box_lam, lam)
  if prob < 1.0:
    lam = jnp.where(jax.random.uniform(key_apply) < prob, lam, 1.0)
  # One lambda per example, so that `weights` can turn mixing off per row.
  lam = jnp.broadcast_to(lam, labels.shape)
  if weights is not None:
    lam = jnp.where(jnp.flip(weights, 0) > 0, lam, 1.0)

  flipped = jnp.flip(images, 0)
  x = images.astype(jnp.float32)
  blended = (lam[:, None, None, None] * x
             + (1.0 - lam[:, None, None, None]) * flipped.astype(jnp.float32))
  cut = jnp.where(box[None, :, :, None] & (lam < 1.0)[:, None, None, None],
                  flipped, images)
  mixed = jnp.where(use_cutmix, cut, blended.astype(images.dtype))
  mixed = jnp.where((lam < 1.0)[:, None, None, None], mixed, images)
  targets = lam[:, None] * targets + (1.0 - lam[:, None]) * jnp.flip(targets, 0)
  return mixed, targets
