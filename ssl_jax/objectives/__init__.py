"""Objectives: one per paper. Each has the same interface, seen from the loop:

  init(rng, batch) -> params
  loss(params, batch, rng, *, train) -> (scalar loss, {name: scalar metric})
  represent(params, batch) -> {name: [batch, features]}

The loop knows nothing about any paper; an objective knows nothing about
meshes, optimizers or checkpoints.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ssl_jax.objectives.patchformer import PatchFormer

REGISTRY = {'patchformer': PatchFormer}


def build(config: ml_collections.ConfigDict, dtype: Any) -> Any:
  """The objective named by `config.objective`."""
  return REGISTRY[config.objective](config, dtype)
