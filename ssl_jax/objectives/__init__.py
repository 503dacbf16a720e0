"""Objectives: one per paper, plus raw pixels as a baseline backbone.

Each has the same interface, seen from ssl_jax.tasks:

  init(rng, batch, *, decoder=True) -> params
  loss(params, batch, rng, *, train) -> (scalar loss, (metrics, features))
      (self-supervised objectives only; `features` are the training view's
      representations by name, for the online probe)
  representations() -> the names `represent` returns
  represent(params, batch, *, rng=None, train=False, mask_ratio=0.0)
      -> {name: [batch, features]}
  architecture_keys: config keys that fix the parameters (checked when a
      checkpoint initialises a probe or fine-tune)
  frozen_params (optional): top-level keys of the parameters that never
      train (constants carried by checkpoints, e.g. iGPT's palette)
  finetune_features (optional): (params, batch, rng) -> (features, loss):
      the features and the self-supervised loss of one forward pass, for
      fine-tunes that keep optimising that loss (classifier.generative_weight)

An objective knows nothing about meshes, optimizers, checkpoints or labels.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ssl_jax.objectives.igpt import IGPT
from ssl_jax.objectives.patchformer import PatchFormer
from ssl_jax.objectives.pixels import Pixels
from ssl_jax.objectives.randsac import RandSAC

REGISTRY = {'igpt': IGPT, 'patchformer': PatchFormer, 'pixels': Pixels, 'randsac': RandSAC}
SELF_SUPERVISED = tuple(sorted(k for k, v in REGISTRY.items() if v.self_supervised))


def build(config: ml_collections.ConfigDict, dtype: Any) -> Any:
  """The objective named by `config.objective`."""
  return REGISTRY[config.objective](config, dtype)
