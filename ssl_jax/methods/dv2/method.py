"""DV2: double view network with dynamic vocabulary (DV2 sections 3.3-3.6).

The baseline (3.3) and each adaptation, switched by config keys:

baseline        the image (each of its `views` versions) is cut into a grid
                of M patches and Q of them are masked (a uniformly random
                subset per version, drawn on the device from the step's
                key). Every patch goes through the patch network (the
                first three stacks of a pre-activation ResNet) alone: the
                targets P. The visible patches' representations, the
                masked ones zeroed, plus position embeddings, go through
                the transformer h (equation 14); its output at each masked
                position is the prediction. L_mp (equation 15): rescaled
                cosine of 128-d projections, the true patch pulled, every
                other patch of every image in the batch pushed.
double_view     (3.4) the full image goes through all four stacks (the
                same weights): I; the transformer's output at a special
                [IMG] position: I^. L_mi (equation 16) pulls I^_i to I_i
                and pushes it from every other image's I.
exchange        (3.4, model.exchange_layers > 0) self-attention layers
                after res2, res3, res4 of the patch network, between the
                visible patches of one image (ssl_jax.nn.resnet_v2).
vocabulary      (3.5) two dynamic vocabularies (vocabulary.py), one fed
                with the masked patches' targets and one with the image
                view's I (with double_view); L_vp and L_vi push the
                predictions away from their entries (equation 20).
views > 1       (3.6) D versions of each image that share their geometry
                and differ photometrically: a patch of another version at
                the same location is another positive for L_mp, another
                version's I another positive for L_mi. `batch_size` counts
                the versions (the paper's N).

Loss: alpha_mp L_mp + alpha_mi L_mi + alpha_vp L_vp + alpha_vi L_vi.
See configs/dv2.py for the choices where the paper is silent.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import drawing
from ssl_jax.config.checks import (ConfigError, boolean, construct, is_int, is_number, one_of,
                                   require)
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.dv2 import vocabulary as vocab_lib
from ssl_jax.methods.dv2.model import DV2Net
from ssl_jax.data import ViewSpec
from ssl_jax.nn import contrastive, patch_context
from ssl_jax.nn import masks as masking
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn.patch_context import first_view, flat_views
from ssl_jax.nn.patches import filled_image, gather, masked_image, patchify, to_signed

REPRESENTATIONS = ('patch_view', 'image_view', 'double_view', 'patch_res2', 'patch_res3',
                   'patch_res4', 'image_res2', 'image_res3', 'image_res4', 'image_res5')


NEGATIVES = ('batch', 'image')


def patch_loss(out_predictions: jax.Array, out_targets: jax.Array, masked: jax.Array,
               views: int, weights: jax.Array, normalise: str, negatives: str = 'batch'):
  """L_mp (equation 15) without alpha: predictions [N, Q, d] at grid cells
  masked [N, Q], targets [N, M, d]; a pair is positive when both come from
  the same image (any of its `views` versions) and the same grid cell.
  weights [N]: 0 for padding. negatives: 'batch' (equation 15: every
  other patch of every image) or 'image' (only the patches of the same
  image, in all its versions: Selfie's distractors; not in the paper, a
  diagnostic). Its parts also say how often the target most
  similar to a prediction is a positive: among every patch of the batch
  ('top1') and among the patches of the prediction's own image
  ('top1_in_image', where colour alone cannot tell them apart)."""
  n, q = masked.shape
  m = out_targets.shape[1]
  image = jnp.arange(n) // views
  row_id = (image[:, None] * m + masked).reshape(-1)
  col_id = (image[:, None] * m + jnp.arange(m)[None, :]).reshape(-1)
  sim = contrastive.rescaled_cosine(out_predictions.reshape(n * q, -1),
                                    out_targets.reshape(n * m, -1))
  row_w, col_w = jnp.repeat(weights, q), jnp.repeat(weights, m)
  positive = contrastive.same_source(row_id, col_id)
  same_image = contrastive.same_source(row_id // m, col_id // m)
  pairs = contrastive.pair_weights(row_w, col_w)
  if negatives == 'image':
    pairs = pairs * same_image
  elif negatives != 'batch':
    raise ValueError(f'negatives={negatives!r}: allowed {NEGATIVES}')
  loss, parts = contrastive.pair_loss(sim, positive, pairs, normalise)
  rows = jnp.arange(n * q)
  for name, allowed in (('top1', col_w[None, :] > 0), ('top1_in_image', same_image)):
    best = jnp.argmax(jnp.where(allowed, sim, -jnp.inf), axis=-1)
    parts[name] = weighted_mean(positive[rows, best].astype(jnp.float32), row_w)
  return loss, parts


def image_loss(predicted: jax.Array, target: jax.Array, views: int, weights: jax.Array,
               normalise: str):
  """L_mi (equation 16) without alpha: I^ [N, d] against I [N, d], positive
  for the same image (any version)."""
  image = jnp.arange(predicted.shape[0]) // views
  sim = contrastive.rescaled_cosine(predicted, target)
  return contrastive.pair_loss(sim, contrastive.same_source(image, image),
                               contrastive.pair_weights(weights, weights), normalise)


AUGMENT = "the fields of ssl_jax.data.ViewSpec (AMDIM's: configs/selfie.py:amdim_augment)"


class DV2(Method):
  """The method: init / init_state / loss / represent (see ssl_jax.methods.base)."""

  name = 'dv2'
  architecture_keys = ('dv2.grid', 'dv2.model')
  state_in_evaluation = 'ignore'  # the vocabularies shape no representation
  batch_counts_views = True  # 3.6: N counts the versions, N / D images per step
  draws_pictures = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    d = config.dv2
    self.grid = (d.grid, d.grid)
    self.num_patches = d.grid * d.grid
    self.patch = config.data.image_size // d.grid
    self.num_masked = d.num_masked
    self.double_view = d.double_view
    self.normalise = d.normalise
    self.negatives = d.negatives
    self.alpha = dict(mp=d.alpha_mp, mi=d.alpha_mi, vp=d.alpha_vp, vi=d.alpha_vi)
    v = d.vocabulary
    self.vocab = dict(on=v.enabled, size=v.size, decay=v.decay, normalise=v.normalise,
                      stale_after=v.stale_after, dim=d.model.projection)
    self.net = DV2Net(d.model, self.grid, dtype)

  @classmethod
  def validate_backbone(cls, config: ml_collections.ConfigDict) -> None:
    patch_context.validate_grid(config, 'dv2')
    patch_context.validate_model(config, 'dv2.model.', min_stages=4)
    require(config, 'dv2.model.stage_sizes', lambda v: len(v) == 4,
            'four stacks (res2 ... res5): the first three see patches, all four the image')

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """DV2's keys: patches, masks, adaptations, loss weights, vocabulary, views."""
    cls.validate_backbone(config)
    n = config.dv2.grid ** 2
    require(config, 'dv2.num_masked', lambda v: is_int(v) and 1 <= v < n,
            f'an integer in [1, {n - 1}] (of the {n} patches)')
    views = require(config, 'dv2.views', lambda v: is_int(v) and v >= 1,
                    'an integer >= 1 (D: versions of each image; 1: off)')
    require(config, 'batch_size', lambda v: v % views == 0,
            f'divisible by dv2.views={views}: batch_size counts the versions (N), '
            f'N / D images per step')
    double = boolean(config, 'dv2.double_view')
    one_of(config, 'dv2.normalise', contrastive.NORMALISE)
    one_of(config, 'dv2.negatives', NEGATIVES)
    for k in ('alpha_mp', 'alpha_mi', 'alpha_vp', 'alpha_vi'):
      require(config, 'dv2.' + k, lambda v: is_number(v) and v >= 0, 'a number >= 0')
    v = 'dv2.vocabulary.'
    on = boolean(config, v + 'enabled')
    if on:
      require(config, v + 'size', lambda x: is_int(x) and x >= 1, 'a positive integer (S)')
      require(config, v + 'decay', lambda x: is_number(x) and 0 < x <= 1,
              'a number in (0, 1] (lambda)')
      one_of(config, v + 'normalise', vocab_lib.NORMALISE)
      require(config, v + 'stale_after', lambda x: is_int(x) and x >= 1,
              'a positive number of steps')
    construct(config, 'dv2.augment', ViewSpec, AUGMENT)
    probe = config.online_probe.representation
    allowed = ('', 'patch_view') + (('image_view', 'double_view') if double else ())
    if probe not in allowed:
      raise ConfigError(f'config.online_probe.representation={probe!r} is not allowed: the '
                        f'training step offers {allowed}')

  @classmethod
  def views(cls, config: ml_collections.ConfigDict):
    return (construct(config, 'dv2.augment', ViewSpec, AUGMENT),) * config.dv2.views

  @classmethod
  def share_geometry(cls, config: ml_collections.ConfigDict) -> bool:
    return True  # 3.6: the same location in another version is the same content

  # -- pieces -----------------------------------------------------------------

  def _mask(self, rng: jax.Array, n: int) -> masking.MaskIndices:
    return masking.random_split(rng, n, self.num_patches, self.num_masked)

  # -- the method interface ---------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *, decoder: bool = True) -> Any:
    images, _ = flat_views(batch['image'])
    images = to_signed(images)
    idx = self._mask(rng, images.shape[0])
    return self.net.init(rng, patchify(images, self.patch), idx.visible, idx.masked, images,
                         train=False)['params']

  def init_state(self, rng: jax.Array, batch: dict[str, jax.Array], params: Any) -> Any:
    if not self.vocab['on']:
      return {}
    k_patch, k_image = jax.random.split(rng)
    state = {'patch_vocabulary': vocab_lib.init(k_patch, self.vocab['size'], self.vocab['dim'])}
    if self.double_view:
      state['image_vocabulary'] = vocab_lib.init(k_image, self.vocab['size'], self.vocab['dim'])
    return state

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    k_mask, k_dropout = jax.random.split(rng)
    images, views = flat_views(batch['image'])
    images = to_signed(images)
    n = images.shape[0]
    weights = jnp.repeat(example_weights(batch, n // views), views)
    idx = self._mask(k_mask, n)
    out = self.net.apply({'params': params}, patchify(images, self.patch), idx.visible,
                         idx.masked, images if self.double_view else None, train=train,
                         rngs={'dropout': k_dropout})
    l_mp, parts = patch_loss(out.patch_predictions, out.patch_targets, idx.masked, views,
                             weights, self.normalise, self.negatives)
    loss = self.alpha['mp'] * l_mp
    metrics = {'l_mp': l_mp, **{f'l_mp_{k}': v for k, v in parts.items()}}
    if self.double_view:
      l_mi, parts = image_loss(out.image_predicted, out.image_target, views, weights,
                               self.normalise)
      loss = loss + self.alpha['mi'] * l_mi
      metrics.update(l_mi=l_mi, l_mi_positive=parts['positive'],
                     l_mi_negative=parts['negative'])
    new_state = state
    if self.vocab['on']:
      new_state = dict(state)
      q = self.num_masked
      targets = gather(out.patch_targets, idx.masked)
      fed = {'patch': (out.patch_predictions.reshape(n * q, -1),
                       contrastive.unit(targets.reshape(n * q, -1)), jnp.repeat(weights, q))}
      if self.double_view:
        fed['image'] = (out.image_predicted, contrastive.unit(out.image_target), weights)
      for kind, (pred, target, w) in fed.items():
        key = f'{kind}_vocabulary'
        target = jax.lax.stop_gradient(target)
        l_v = vocab_lib.loss(state[key]['vectors'], pred, target, w, self.vocab['normalise'])
        alpha = self.alpha['vp' if kind == 'patch' else 'vi']
        loss = loss + alpha * l_v
        new_state[key], stats = vocab_lib.update(state[key], target, w, self.vocab['decay'],
                                                 self.vocab['stale_after'])
        metrics[f'l_v{kind[0]}'] = l_v
        metrics.update({f'{kind}_vocabulary/{k}': v for k, v in stats.items()})
    features = {'patch_view': first_view(out.image_prediction, views).astype(jnp.float32)}
    if self.double_view:
      features['image_view'] = first_view(out.image, views).astype(jnp.float32)
      features['double_view'] = jnp.concatenate([features['image_view'],
                                                 features['patch_view']], -1)
    return loss, LossAux(metrics, features, new_state)

  def representations(self) -> tuple[str, ...]:
    return REPRESENTATIONS

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """'patch_view': I^ from every patch; 'image_view': I, the full image
    through all four stacks; 'double_view': [I, I^]; 'patch_resK',
    'image_resK': the stacks' maps, averaged (without double_view the
    image network's res5 and I are not pretrained)."""
    images = to_signed(batch['image'])
    rngs = {'dropout': jax.random.key(0) if rng is None else rng}
    (patch_view, patch_maps), (image_view, image_maps) = self.net.apply(
        {'params': params}, patchify(images, self.patch), images, train=train, rngs=rngs,
        method=DV2Net.views)
    patch_view = patch_view.astype(jnp.float32)
    image_view = image_view.astype(jnp.float32)
    return {'patch_view': patch_view, 'image_view': image_view,
            'double_view': jnp.concatenate([image_view, patch_view], -1),
            **patch_context.stage_features(patch_maps, image_maps)}

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array, *,
               state: Any = None) -> jax.Array:
    """uint8 [b, H', W', 3]: image | its masked patches (grey) | each masked
    cell filled with the patch, among all patches of the b images, whose
    target is nearest to the prediction | with a vocabulary: the image's
    first masked patch (top left) and, for its three nearest vocabulary
    entries, the patch among the b images nearest to each entry."""
    b = images.shape[0]
    signed = to_signed(images)
    pixels = patchify(images, self.patch)
    idx = self._mask(rng, b)
    out = self.net.apply({'params': params}, patchify(signed, self.patch), idx.visible,
                         idx.masked, None, train=False)
    pool = contrastive.unit(out.patch_targets.reshape(b * self.num_patches, -1))
    flat = pixels.reshape((b * self.num_patches,) + pixels.shape[2:])
    retrieved = flat[jnp.argmax(contrastive.unit(out.patch_predictions) @ pool.T, -1)]
    rows = [images, masked_image(pixels, idx.masked, self.grid),
            filled_image(pixels, idx.masked, retrieved, self.grid)]
    if self.vocab['on'] and state:
      vectors = state['patch_vocabulary']['vectors']
      query = pool.reshape(b, self.num_patches, -1)[jnp.arange(b), idx.masked[:, 0]]
      entries = vectors[jax.lax.top_k(query @ vectors.T, 3)[1]]          # [b, 3, d]
      nearest = flat[jnp.argmax(entries @ pool.T, -1)]                   # [b, 3, p, p, 3]
      first = pixels[jnp.arange(b), idx.masked[:, 0]][:, None]
      rows.append(drawing.mosaic(jnp.concatenate([first, nearest], 1), images.shape[1:3]))
    return drawing.panels(rows)
