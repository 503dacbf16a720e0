"""Pretraining: a method's self-supervised loss and its online linear probe.

The probe reads stop-gradient features of the training view and has its own
optimizer group, so neither its gradients nor its gradient norm touch the
self-supervised update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.methods import registry
from ssl_jax.nn.heads import ClassifierHead
from ssl_jax.tasks.classification import classification_loss, label_params


class Pretraining:
  """A self-supervised method and its online linear probe."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int | None,
               dtype: Any = jnp.float32):
    self.method = registry.get(config.objective)(config, dtype)
    representation = config.online_probe.representation
    self.probe_representation = representation if representation and num_classes else None
    self.probe = ClassifierHead(num_classes) if self.probe_representation else None

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    params = {'model': self.method.init(rng, batch)}
    if self.probe is not None:  # the probe's shape, from features (which may read the state)
      state = self.method.init_state(rng, batch, params['model'])
      image = batch['image']
      one_view = {'image': image[:, 0] if image.ndim == 5 else image}  # represent's input
      feats = self.method.represent(params['model'], one_view,
                                    state=state)[self.probe_representation]
      params['online_probe'] = self.probe.init(rng, feats, train=False)['params']
    return params

  def init_state(self, rng: jax.Array, batch: dict[str, jax.Array], params: Any) -> Any:
    return self.method.init_state(rng, batch, params['model'])

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    loss, aux = self.method.loss(params['model'], batch, rng, train=train, state=state)
    if self.probe is None:
      return loss, (aux.metrics, aux.state)
    # The probe reads features of this very forward pass (the masked,
    # augmented view), so it costs one small matmul; stop_gradient keeps its
    # loss out of the self-supervised gradients.
    logits = self.probe.apply({'params': params['online_probe']},
                              jax.lax.stop_gradient(aux.features[self.probe_representation]),
                              train=False)
    probe_loss, probe_metrics = classification_loss(logits, batch, 0.0)
    metrics = dict(aux.metrics, loss=loss, **{'online_probe/loss': probe_loss,
                                              'online_probe/top1': probe_metrics['top1']})
    return loss + probe_loss, (metrics, aux.state)

  def param_labels(self, params: Any) -> Any:
    labels = {'model': label_params(self.method, params['model'], 'train')}
    if 'online_probe' in params:
      labels['online_probe'] = jax.tree.map(lambda _: 'probe', params['online_probe'])
    return labels

  def representations(self) -> tuple[str, ...]:
    return self.method.representations()

  def represent(self, params: Any, batch: dict[str, jax.Array],
                state: Any = None, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    return self.method.represent(params['model'], batch, state=state, rng=rng)
