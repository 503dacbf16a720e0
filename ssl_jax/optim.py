"""The optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to 0 (or constant)."""
  o = config.optimizer
  if o.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)),
         optax.constant_schedule(o.lr)], [o.warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      0.0, o.lr, o.warmup_steps, config.total_steps, end_value=0.0)


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices and kernels only: not on biases or norm
  scales (BERT's AdamWeightDecay excludes LayerNorm and bias)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   param_labels: Callable[[Any], Any] | None = None
                   ) -> optax.GradientTransformation:
  """AdamW (with optional clipping) from `config.optimizer`.

  With `param_labels` (params -> tree of 'train' | 'probe' | 'frozen'), each
  group gets its own transformation: 'train' the configured optimizer (its
  clipping sees only these gradients), 'probe' a constant-rate Adam for the
  online probe (`config.online_probe.lr`), 'frozen' no update and no state.
  """
  o = config.optimizer
  parts = []
  if o.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  main = optax.chain(*parts)
  if param_labels is None:
    return main
  probe_lr = config.online_probe.lr if 'online_probe' in config else 0.0
  return optax.multi_transform(
      {'train': main, 'probe': optax.adam(probe_lr), 'frozen': optax.set_to_zero()},
      param_labels)
