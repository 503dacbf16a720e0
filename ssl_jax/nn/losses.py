"""Loss pieces every method and task shares: example weights, the weighted
mean over valid examples, smoothed one-hot targets, top-k hits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def example_weights(batch: dict[str, jax.Array], n: int) -> jax.Array:
  """float32 [n]: 1 for a real example, 0 for padding (batch['valid'])."""
  valid = batch.get('valid')
  return jnp.ones((n,), jnp.float32) if valid is None else valid.astype(jnp.float32)


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(values * weights) / max(sum(weights), 1): the mean over what counts
  (valid examples, predicted tokens), 0 when nothing does."""
  return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """float32 [..., num_classes]: (1 - smoothing) * one_hot + smoothing / K
  ("soft labels"; timm's and optax's label smoothing)."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)


def soft_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Per-element softmax cross-entropy (float32) against smoothed one-hot labels."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                     smooth_one_hot(labels, logits.shape[-1], smoothing))


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """[batch] 1.0 where the label is among the k highest logits."""
  k = min(k, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
