"""What a run trains: pretraining or classification, seen from the loop.

The loop (ssl_jax.train) and the step (ssl_jax.step) are the same for both;
a task differs only in its loss and in which parameters are trainable. A task
has:

  init(rng, batch) -> params
  loss(params, batch, rng, *, train) -> (scalar, {metric: scalar})
  param_labels(params) -> the same tree with 'train' | 'probe' | 'frozen'
      leaves (ssl_jax.optim gives each group its optimizer; 'frozen'
      parameters get no update and carry no optimizer state)
  represent(params, batch) -> {name: [batch, features]}   (evaluation)
  predict(params, batch) -> logits                         (classification)

* `Pretraining`: a self-supervised objective, plus an online linear probe on
  stop-gradient features of the training view when the data has labels. The
  probe has its own optimizer group, so neither its gradients nor its
  gradient norm touch the self-supervised update.
* `Classification`: a linear probe (backbone frozen) or a fine-tune (all
  trained) of a backbone's named representation, initialised from a
  pretraining checkpoint (see `check_backbone_checkpoint`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_jax import mixing, objectives, optim
from ssl_jax.models.heads import ClassifierHead

MODES = ('linear', 'finetune')
HEADS = ('linear', 'residual')


def _weights(batch: dict[str, jax.Array], n: int) -> jax.Array:
  valid = batch.get('valid')
  return jnp.ones((n,), jnp.float32) if valid is None else valid.astype(jnp.float32)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """[batch] 1.0 where the label is among the k highest logits."""
  k = min(k, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


def classification_loss(logits: jax.Array, batch: dict[str, jax.Array],
                        label_smoothing: float, targets: jax.Array | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy against smoothed one-hot labels ("soft
  labels"), or against `targets` [batch, classes] when given (Mixup /
  CutMix), over the valid examples, and the batch's top-1 accuracy against
  its labels."""
  labels = batch['label']
  if targets is None:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  xent = optax.softmax_cross_entropy(logits, targets)
  w = _weights(batch, logits.shape[0])
  denom = jnp.maximum(w.sum(), 1.0)
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return (xent * w).sum() / denom, {'top1': (top1 * w).sum() / denom}


def _label(tree: Any, label: str) -> Any:
  return jax.tree.map(lambda _: label, tree)


def _label_model(objective: Any, params: Any, label: str) -> Any:
  """`label` for every parameter but the objective's frozen constants."""
  frozen = getattr(objective, 'frozen_params', ())
  return {k: _label(v, 'frozen' if k in frozen else label) for k, v in params.items()}


WHITEN_EPS = 1e-3


def whitening(features: np.ndarray, eps: float = WHITEN_EPS) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], matrix [D, D]) such that (x - mean) @ matrix is white.

  Each feature is standardised, then PCA-whitened: eigenvectors of the
  correlation matrix scaled by 1 / sqrt(eigenvalue + eps). The correlation
  matrix's eigenvalues average 1, so `eps` is relative: directions holding
  less than about eps of an average feature's variance are not amplified
  beyond 1 / sqrt(eps). Computed in float64 with numpy, so every host gets the
  same result from the same features.

  Why: self-supervised features are often extremely ill-conditioned (on the
  built-in dataset, five directions of PatchFormer tiny's 128 hold 99% of the
  variance, condition number ~1e7), and a linear classifier trained by
  gradient descent then learns only the dominant directions within its
  budget, while the classes are told apart by the small ones.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f'whitening needs features [n >= 2, D], got shape {x.shape}')
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  z = (x - mean) / std
  eigenvalues, eigenvectors = np.linalg.eigh(z.T @ z / len(z))
  matrix = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
  return mean.astype(np.float32), (matrix / std[:, None]).astype(np.float32)


class Pretraining:
  """A self-supervised objective and its online linear probe."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int | None,
               dtype: Any = jnp.float32):
    self.objective = objectives.build(config, dtype)
    representation = config.online_probe.representation
    self.probe_representation = representation if representation and num_classes else None
    self.probe = ClassifierHead(num_classes) if self.probe_representation else None

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    params = {'model': self.objective.init(rng, batch)}
    if self.probe is not None:
      feats = self.objective.represent(params['model'], batch)[self.probe_representation]
      params['online_probe'] = self.probe.init(rng, feats, train=False)['params']
    return params

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss, (metrics, feats) = self.objective.loss(params['model'], batch, rng, train=train)
    if self.probe is None:
      return loss, metrics
    # The probe reads features of this very forward pass (the masked,
    # augmented view), so it costs one small matmul; stop_gradient keeps its
    # loss out of the self-supervised gradients.
    logits = self.probe.apply({'params': params['online_probe']},
                              jax.lax.stop_gradient(feats[self.probe_representation]),
                              train=False)
    probe_loss, probe_metrics = classification_loss(logits, batch, 0.0)
    metrics = dict(metrics, loss=loss, **{'online_probe/loss': probe_loss,
                                          'online_probe/top1': probe_metrics['top1']})
    return loss + probe_loss, metrics

  def param_labels(self, params: Any) -> Any:
    labels = {'model': _label_model(self.objective, params['model'], 'train')}
    if 'online_probe' in params:
      labels['online_probe'] = _label(params['online_probe'], 'probe')
    return labels

  def representations(self) -> tuple[str, ...]:
    return self.objective.representations()

  def represent(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return self.objective.represent(params['model'], batch)


class Classification:
  """A linear probe or fine-tune of a backbone's named representation."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
               dtype: Any = jnp.float32):
    c = config.classifier
    self.backbone = objectives.build(config.backbone, dtype)
    self.mode = c.mode
    self.representation = c.representation
    self.label_smoothing = c.label_smoothing
    self.mask_ratio = c.mask_ratio
    self.whiten = c.whiten
    self.num_classes = num_classes
    self.mixup, self.cutmix = c.mixup, c.cutmix
    self.layer_decay = c.layer_decay
    self.generative_weight = c.get('generative_weight', 0.0) if self.mode == 'finetune' else 0.0
    self.head = ClassifierHead(num_classes, residual=c.head == 'residual',
                               dropout=c.dropout, whiten=c.whiten, dtype=dtype)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    k_backbone, k_head = jax.random.split(rng)
    backbone = self.backbone.init(k_backbone, batch, decoder=False)
    feats = self.backbone.represent(backbone, batch)[self.representation]
    return {'backbone': backbone,
            'head': self.head.init(k_head, feats, train=False)['params']}

  def _features_and_loss(self, params, batch, rng, train: bool):
    """(features, the backbone's self-supervised loss or None)."""
    if train and self.generative_weight:  # one forward pass gives both
      feats, loss = self.backbone.finetune_features(params['backbone'], batch, rng)
      return feats[self.representation], loss
    return self._features(params, batch, rng, train), None

  def _features(self, params, batch, rng, train: bool) -> jax.Array:
    if self.mode == 'linear':  # frozen backbone, evaluation mode
      feats = self.backbone.represent(params['backbone'], batch)
      return jax.lax.stop_gradient(feats[self.representation])
    feats = self.backbone.represent(params['backbone'], batch, rng=rng, train=train,
                                    mask_ratio=self.mask_ratio if train else 0.0)
    return feats[self.representation]

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    k_features, k_dropout, k_mix = jax.random.split(rng, 3)
    targets = None
    if train and (self.mixup or self.cutmix):  # on the device, from the step's key
      images, targets = mixing.mix(
          k_mix, batch['image'], batch['label'], self.num_classes, mixup_alpha=self.mixup,
          cutmix_alpha=self.cutmix, label_smoothing=self.label_smoothing,
          weights=batch.get('valid'))
      batch = dict(batch, image=images)
    feats, generative = self._features_and_loss(params, batch, k_features, train)
    logits = self.head.apply({'params': params['head']}, feats, train=train,
                             rngs={'dropout': k_dropout})
    loss, metrics = classification_loss(logits, batch, self.label_smoothing, targets)
    if generative is None:
      return loss, metrics
    # iGPT fine-tuning: L_CLF + weight * L_GEN on the same forward pass.
    return loss + self.generative_weight * generative, dict(
        metrics, classification_loss=loss, generative_loss=generative)

  def lr_scales(self, updates: Any) -> Any:
    """Layer-wise learning-rate decay (classifier.layer_decay < 1): block k
    of L is scaled by decay^(L + 1 - k), the patch embedding by
    decay^(L + 1), the head and final norm by 1 (BEiT, MAE)."""
    depth = self.backbone.num_blocks

    def layer_of(path: tuple[str, ...]) -> int:
      return self.backbone.layer_of(path[1:]) if path[0] == 'backbone' else depth + 1

    return optim.layer_decay_scales(updates, layer_of, depth, self.layer_decay)

  def predict(self, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    feats = self._features(params, batch, None, train=False)
    return self.head.apply({'params': params['head']}, feats, train=False)

  def param_labels(self, params: Any) -> Any:
    head = _label(params['head'], 'train')
    if self.whiten:  # set once from the frozen features (`with_whitening`)
      head.update(feature_mean='frozen', whitening='frozen')
    return {'backbone': _label_model(self.backbone, params['backbone'],
                                     'frozen' if self.mode == 'linear' else 'train'),
            'head': head}

  def with_whitening(self, params: Any, features: np.ndarray) -> Any:
    """`params` with the head's whitening fitted to `features` [n, D] of the
    frozen backbone (each leaf keeps the sharding of the one it replaces)."""
    mean, matrix = whitening(features)
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

  def represent(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return self.backbone.represent(params['backbone'], batch)


def is_classification(config: ml_collections.ConfigDict) -> bool:
  return config.objective == 'classification'


def build(config: ml_collections.ConfigDict, num_classes: int | None,
          dtype: Any = jnp.float32):
  """The task for `config.objective` ('classification' or a self-supervised
  objective's name)."""
  if is_classification(config):
    return Classification(config, num_classes, dtype)
  return Pretraining(config, num_classes, dtype)


def architecture_mismatch(saved: dict[str, Any], backbone: dict[str, Any]) -> list[str]:
  """Flattened keys that fix the backbone's parameters and differ between a
  checkpoint's config (`saved`) and `backbone`, both as flattened dicts."""
  keys = objectives.REGISTRY[backbone['objective']].architecture_keys
  relevant = [k for k in sorted(set(saved) | set(backbone))
              if any(k == p or k.startswith(p + '.') for p in keys)]
  return [k for k in relevant if saved.get(k, '<missing>') != backbone.get(k, '<missing>')]
