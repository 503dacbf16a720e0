"""What a run trains: pretraining or classification, seen from the loop.

The loop (ssl_jax.core.train) and the step (ssl_jax.core.step) are the same
for both; a task differs only in its loss and in which parameters are
trainable. A task has:

  init(rng, batch) -> params
  init_state(rng, batch, params) -> the non-gradient state (the method's)
  loss(params, batch, rng, *, train, state) -> (scalar, ({metric: scalar}, new state))
  param_labels(params) -> the same tree with 'train' | 'probe' | 'frozen'
      leaves (ssl_jax.core.optim gives each group its optimizer; 'frozen'
      parameters get no update and carry no optimizer state)
  representations() -> names;  represent(params, batch, state) -> {name: [batch, features]}
  predict(params, batch, state) -> logits                  (classification)
  method: the Method (the pretraining objective, or the classifier's backbone)

* `Pretraining` (tasks/pretraining.py): a method's self-supervised loss,
  plus an online linear probe on stop-gradient features of the training view
  when the data has labels.
* `Classification` (tasks/classification.py): a linear probe (backbone
  frozen) or a fine-tune (all trained) of a backbone's named representation.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

MODES = ('linear', 'finetune')
HEADS = ('linear', 'residual')
HEAD_INITS = ('zeros', 'normal')
CLASSIFICATION = 'classification'


def is_classification(config: ml_collections.ConfigDict) -> bool:
  return config.objective == CLASSIFICATION


def build(config: ml_collections.ConfigDict, num_classes: int | None,
          dtype: Any = jnp.float32):
  """The task for `config.objective` ('classification' or a method's name)."""
  if is_classification(config):
    from ssl_jax.tasks.classification import Classification
    return Classification(config, num_classes, dtype)
  from ssl_jax.tasks.pretraining import Pretraining
  return Pretraining(config, num_classes, dtype)


def added_keys(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The method's `added_keys`, under `backbone.` for a probe or fine-tune."""
  from ssl_jax.methods import registry
  classify = is_classification(config)
  method = registry.get(config.backbone.objective if classify else config.objective)
  prefix = 'backbone.' if classify else ''
  return {prefix + k: v for k, v in method.added_keys.items()}


def fill_added_keys(saved: dict[str, Any]) -> dict[str, Any]:
  """A checkpoint's saved config (a dict) with every key added since it was
  written (checks.ADDED_KEYS and its method's `added_keys`) holding the
  value that reproduces what it ran with."""
  from ssl_jax.config.checks import with_added_keys
  return with_added_keys(saved, added_keys(ml_collections.ConfigDict(saved)))


def architecture_mismatch(saved: dict[str, Any], backbone: dict[str, Any]) -> list[str]:
  """Flattened keys that fix the backbone's parameters and differ between a
  checkpoint's config (`saved`) and `backbone`, both as flattened dicts."""
  from ssl_jax.methods import registry
  method = registry.get(backbone['objective'])
  keys, added = method.architecture_keys, method.added_keys
  relevant = [k for k in sorted(set(saved) | set(backbone))
              if any(k == p or k.startswith(p + '.') for p in keys)]
  value = lambda d, k: d.get(k, added.get(k, '<missing>'))
  return [k for k in relevant if value(saved, k) != value(backbone, k)]
