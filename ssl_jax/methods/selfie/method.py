"""Selfie and Allp (DV2 sections 3.1 and 3.2): patch prediction by a
query-key correspondence, and an image vector made from patches alone.

Per example, on the device: the image (each of its `views` transformed
copies) is cut into a grid x grid patches; Selfie masks `num_masked` of them
(a uniformly random subset drawn from the step's key) and Allp keeps all.

selfie  every patch goes through the patch network P (the first stacks of a
        pre-activation ResNet); u_0 and the visible patches (plus their
        position embeddings) go through the transformer h; its output u at
        u_0, plus the position embedding E^k of masked location k, is the
        query v_k = u + E^k (equation 8). The loss (equation 9) is the
        softmax cross-entropy of the dot products of v_k with the
        representations of the image's masked patches: the true patch
        against the other masked patches of the same image as distractors.
allp    every patch through P (optionally with exchange layers after each
        stack), attention-pooled by h into u, projected to 128-d; the loss of
        equations 12-13 pulls the `views` transformed copies of an image
        together and pushes every other image of the batch away, with S the
        rescaled cosine (ssl_jax.nn.contrastive).

See configs/selfie.py for the choices where the paper is silent.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax import drawing
from ssl_jax.config.checks import construct, is_int, one_of, require
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.selfie.model import SelfieNet
from ssl_jax.data import ViewSpec
from ssl_jax.nn import contrastive, patch_context
from ssl_jax.nn import masks as masking
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn.patch_context import first_view, flat_views
from ssl_jax.nn.patches import filled_image, gather, masked_image, patchify, to_signed

OBJECTIVES = ('selfie', 'allp')


def selfie_loss(logits: jax.Array) -> jax.Array:
  """Equation 9 per example: logits [b, Q, Q] (query k against candidate i)
  -> [b], the mean over queries of -log softmax_i(logits)[k]. The softmax is
  taken once, inside the cross-entropy, over the raw dot products."""
  q = logits.shape[-1]
  labels = jnp.broadcast_to(jnp.arange(q), logits.shape[:-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(-1)


AUGMENT = "the fields of ssl_jax.data.ViewSpec (AMDIM's: configs/selfie.py:amdim_augment)"


class Selfie(Method):
  """The method: init / loss / represent (see ssl_jax.methods.base)."""

  name = 'selfie'
  architecture_keys = ('selfie.grid', 'selfie.model')
  batch_counts_views = True  # Allp's copies count, as DV2's versions do
  draws_pictures = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    s = config.selfie
    self.objective = s.objective
    self.grid = (s.grid, s.grid)
    self.num_patches = s.grid * s.grid
    self.patch = config.data.image_size // s.grid
    self.num_masked = s.num_masked
    self.normalise = s.normalise
    self.net = SelfieNet(s.model, self.grid, dtype)
    self._stages = len(s.model.stage_sizes)

  @classmethod
  def validate_backbone(cls, config: ml_collections.ConfigDict) -> None:
    patch_context.validate_grid(config, 'selfie')
    patch_context.validate_model(config, 'selfie.model.', min_stages=1)

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """Selfie's keys: objective, patches, mask count, views, model."""
    cls.validate_backbone(config)
    objective = one_of(config, 'selfie.objective', OBJECTIVES)
    n = config.selfie.grid ** 2
    require(config, 'selfie.num_masked', lambda v: is_int(v) and 1 <= v < n,
            f'an integer in [1, {n - 1}] (of the {n} patches)')
    if objective == 'selfie':
      require(config, 'selfie.num_masked', lambda v: v >= 2,
              'at least 2: the true patch needs a distractor among the masked patches')
    low = 2 if objective == 'allp' else 1
    views = require(config, 'selfie.views', lambda v: is_int(v) and v >= low,
                    f'an integer >= {low} (transformed copies of each image'
                    + ('; Allp pulls copies together' if low == 2 else '') + ')')
    require(config, 'batch_size', lambda v: v % views == 0,
            f'divisible by selfie.views={views}: batch_size counts the copies')
    one_of(config, 'selfie.normalise', contrastive.NORMALISE)
    construct(config, 'selfie.augment', ViewSpec, AUGMENT)
    require(config, 'online_probe.representation', lambda v: v in ('', 'patch_view'),
            "'patch_view' or '' (the training step offers u only)")

  @classmethod
  def views(cls, config: ml_collections.ConfigDict):
    return (construct(config, 'selfie.augment', ViewSpec, AUGMENT),) * config.selfie.views

  # -- pieces -----------------------------------------------------------------

  def _patches(self, images: jax.Array) -> jax.Array:
    return patchify(to_signed(images), self.patch)

  def _stage_names(self, stages: int, prefix: str) -> tuple[str, ...]:
    return tuple(f'{prefix}_res{k + 2}' for k in range(stages))

  # -- the method interface ---------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *, decoder: bool = True) -> Any:
    images, _ = flat_views(batch['image'])
    images = to_signed(images)
    return self.net.init(rng, patchify(images, self.patch), images)['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    k_mask, k_dropout = jax.random.split(rng)
    images, views = flat_views(batch['image'])
    patches = self._patches(images)
    n = patches.shape[0]
    weights = jnp.repeat(example_weights(batch, n // views), views)
    rngs = {'dropout': k_dropout}
    if self.objective == 'selfie':
      idx = masking.random_split(k_mask, n, self.num_patches, self.num_masked)
      logits, u = self.net.apply({'params': params}, patches, idx.visible, idx.masked,
                                 train=train, rngs=rngs, method=SelfieNet.selfie_logits)
      loss = weighted_mean(selfie_loss(logits), weights)
      hits = (jnp.argmax(logits, -1) == jnp.arange(self.num_masked)).mean(-1)
      metrics = {'patch_accuracy': weighted_mean(hits.astype(jnp.float32), weights)}
    else:
      z, u = self.net.apply({'params': params}, patches, train=train, rngs=rngs,
                            method=SelfieNet.allp_projection)
      source = jnp.arange(n) // views
      different = ~jnp.eye(n, dtype=bool)  # a copy is not its own positive
      pair_w = contrastive.pair_weights(weights, weights) * different
      loss, parts = contrastive.pair_loss(
          contrastive.rescaled_cosine(z, z), contrastive.same_source(source, source),
          pair_w, self.normalise)
      metrics = {'positive': parts['positive'], 'negative': parts['negative']}
    return loss, LossAux(metrics, {'patch_view': first_view(u, views).astype(jnp.float32)},
                         state)

  def representations(self) -> tuple[str, ...]:
    return (('patch_view',) + self._stage_names(self._stages, 'patch')
            + self._stage_names(self._stages, 'image'))

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """'patch_view': u from every patch of the image; 'patch_resK' and
    'image_resK': the stacks' maps for the patches and for the whole image
    (the same weights), averaged (ssl_jax.nn.patch_context.stage_features)."""
    images = to_signed(batch['image'])
    rngs = {'dropout': jax.random.key(0) if rng is None else rng}
    u, patch_maps = self.net.apply({'params': params}, patchify(images, self.patch),
                                   train=train, rngs=rngs, method=SelfieNet.image_vector)
    _, image_maps = self.net.apply({'params': params}, images, train=train, rngs=rngs,
                                   method=SelfieNet.image)
    return {'patch_view': u.astype(jnp.float32),
            **patch_context.stage_features(patch_maps, image_maps)}

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array, *,
               state: Any = None) -> jax.Array:
    """uint8 [b, H', W', 3]: image | its masked patches (grey) | each masked
    cell filled with the candidate Selfie's query there picks among the
    image's masked patches (all in place: the jigsaw solved)."""
    b = images.shape[0]
    pixels = patchify(images, self.patch)
    idx = masking.random_split(rng, b, self.num_patches, self.num_masked)
    logits, _ = self.net.apply({'params': params}, self._patches(images), idx.visible,
                               idx.masked, train=False, method=SelfieNet.selfie_logits)
    picked = gather(gather(pixels, idx.masked), jnp.argmax(logits, -1))
    return drawing.panels([images, masked_image(pixels, idx.masked, self.grid),
                           filled_image(pixels, idx.masked, picked, self.grid)])
