"""Classification: a linear probe or fine-tune of a backbone's named
representation, initialised from a pretraining checkpoint (see
ssl_jax.core.assembly.open_init_checkpoint)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_jax.methods import registry
from ssl_jax.methods.base import Method
from ssl_jax.nn.heads import ClassifierHead
from ssl_jax.nn.losses import example_weights, smooth_one_hot, weighted_mean
from ssl_jax.tasks import mixing
from ssl_jax.tasks import whitening as whitening_lib


def classification_loss(logits: jax.Array, batch: dict[str, jax.Array],
                        label_smoothing: float, targets: jax.Array | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy against smoothed one-hot labels ("soft
  labels"), or against `targets` [batch, classes] when given (Mixup /
  CutMix), over the valid examples, and the batch's top-1 accuracy against
  its labels."""
  labels = batch['label']
  if targets is None:
    targets = smooth_one_hot(labels, logits.shape[-1], label_smoothing)
  xent = optax.softmax_cross_entropy(logits, targets)
  w = example_weights(batch, logits.shape[0])
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return weighted_mean(xent, w), {'top1': weighted_mean(top1, w)}


def label_params(method: Method, params: Any, label: str) -> Any:
  """`label` for every parameter but the method's frozen constants."""
  return {k: jax.tree.map(lambda _, lab='frozen' if k in method.frozen_params else label: lab, v)
          for k, v in params.items()}


class Classification:
  """A linear probe or fine-tune of a backbone's named representation."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
               dtype: Any = jnp.float32):
    c = config.classifier
    self.backbone = self.method = registry.get(config.backbone.objective)(config.backbone, dtype)
    self.keeps_state = self.backbone.state_in_evaluation == 'frozen'
    self.mode = c.mode
    self.representation = c.representation
    self.label_smoothing = c.label_smoothing
    self.mask_ratio = c.mask_ratio
    self.whiten = c.whiten
    self.whiten_kind = c.whiten_kind
    self.num_classes = num_classes
    self.mixup, self.cutmix = c.mixup, c.cutmix
    self.layer_decay = c.layer_decay
    self.generative_weight = c.generative_weight if self.mode == 'finetune' else 0.0
    self.head = ClassifierHead(num_classes, residual=c.head == 'residual',
                               dropout=c.dropout, whiten=c.whiten,
                               zero_init=c.head_init == 'zeros', dtype=dtype)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    k_backbone, k_head = jax.random.split(rng)
    backbone = self.backbone.init(k_backbone, batch, decoder=False)
    state = self.backbone.init_state(k_backbone, batch, backbone) if self.keeps_state else None
    feats = self.backbone.represent(backbone, batch, state=state)[self.representation]
    return {'backbone': backbone,
            'head': self.head.init(k_head, feats, train=False)['params']}

  def init_state(self, rng: jax.Array, batch: dict[str, jax.Array], params: Any) -> Any:
    """The backbone's non-gradient state when it is kept for evaluation
    ('frozen': restored from the checkpoint, never updated), else none."""
    if not self.keeps_state:
      return {}
    return self.backbone.init_state(rng, batch, params['backbone'])

  def _features_and_loss(self, params, batch, rng, train: bool, state):
    """(features, the backbone's self-supervised loss or None)."""
    if train and self.generative_weight:  # one forward pass gives both
      feats, loss = self.backbone.finetune_features(
          params['backbone'], batch, rng, state=state if self.keeps_state else None)
      return feats[self.representation], loss
    return self._features(params, batch, rng, train, state), None

  def _features(self, params, batch, rng, train: bool, state) -> jax.Array:
    state = state if self.keeps_state else None
    if self.mode == 'linear':  # frozen backbone, evaluation mode
      # One draw per step from the step's key (a BERT backbone: one fresh
      # mask), the features `predict` applies the head to, draw by draw.
      feats = self.backbone.represent_draws(params['backbone'], batch,
                                            jax.random.key(0) if rng is None else rng,
                                            state=state)[0]
      return jax.lax.stop_gradient(feats[self.representation])
    feats = self.backbone.represent(params['backbone'], batch, state=state, rng=rng,
                                    train=train, mask_ratio=self.mask_ratio if train else 0.0)
    return feats[self.representation]

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    k_features, k_dropout, k_mix = jax.random.split(rng, 3)
    targets = None
    if train and (self.mixup or self.cutmix):  # on the device, from the step's key
      images, targets = mixing.mix(
          k_mix, batch['image'], batch['label'], self.num_classes, mixup_alpha=self.mixup,
          cutmix_alpha=self.cutmix, label_smoothing=self.label_smoothing,
          weights=batch.get('valid'))
      batch = dict(batch, image=images)
    feats, generative = self._features_and_loss(params, batch, k_features, train, state)
    logits = self.head.apply({'params': params['head']}, feats, train=train,
                             rngs={'dropout': k_dropout})
    loss, metrics = classification_loss(logits, batch, self.label_smoothing, targets)
    if generative is None:
      return loss, (metrics, state)
    # Generative fine-tuning: L_CLF + weight * L_GEN on the same forward pass.
    return loss + self.generative_weight * generative, (dict(
        metrics, classification_loss=loss, generative_loss=generative), state)

  @property
  def depth(self) -> int:
    """Blocks of the backbone, for layer-wise lr decay (classifier.layer_decay < 1)."""
    return self.backbone.num_blocks

  def layer_of(self, path: tuple[str, ...]) -> int:
    """The layer of a parameter for layer-wise lr decay (BEiT, He et al.): the
    backbone's own numbering (0 patch embedding, k block k), depth + 1 for
    the head and what follows the blocks."""
    return self.backbone.layer_of(path[1:]) if path[0] == 'backbone' else self.depth + 1

  def predict(self, params: Any, batch: dict[str, jax.Array], state: Any = None,
              rng: jax.Array | None = None) -> jax.Array:
    """Logits [b, classes] in evaluation mode. A backbone whose evaluation
    ensembles random draws (`represent_draws`, e.g. BERT masks) gives the
    log of the predicted probabilities averaged over its draws."""
    rng = jax.random.key(0) if rng is None else rng
    state = state if self.keeps_state else None
    draws = self.backbone.represent_draws(params['backbone'], batch, rng, state=state)
    logits = [self.head.apply({'params': params['head']}, d[self.representation], train=False)
              for d in draws]
    if len(logits) == 1:
      return logits[0]
    # log of the mean probability, computed stably (never -inf).
    logp = jnp.stack([jax.nn.log_softmax(l.astype(jnp.float32)) for l in logits])
    return jax.nn.logsumexp(logp, axis=0) - jnp.log(len(logits))

  def param_labels(self, params: Any) -> Any:
    head = jax.tree.map(lambda _: 'train', params['head'])
    if self.whiten:  # set once from the starting features (`with_whitening`)
      head.update(feature_mean='frozen', whitening='frozen')
    return {'backbone': label_params(self.backbone, params['backbone'],
                                     'frozen' if self.mode == 'linear' else 'train'),
            'head': head}

  def with_whitening(self, params: Any, features: np.ndarray) -> Any:
    """`params` with the head's whitening fitted to `features` [n, D] of the
    starting backbone (each leaf keeps the sharding of the one it replaces)."""
    mean, matrix = whitening_lib.fit(features, self.whiten_kind)
    head = dict(params['head'])
    for name, value in (('feature_mean', mean), ('whitening', matrix)):
      old = head[name]
      if old.shape != value.shape:
        raise ValueError(f'whitening {name}: features give {value.shape}, the head has '
                         f'{old.shape}')
      head[name] = jax.device_put(value, old.sharding)
    return dict(params, head=head)

  def representations(self) -> tuple[str, ...]:
    return self.backbone.representations()

  def represent(self, params: Any, batch: dict[str, jax.Array],
                state: Any = None, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    return self.backbone.represent(params['backbone'], batch,
                                   state=state if self.keeps_state else None, rng=rng)
