"""k-nearest-neighbour classification of frozen features, in bounded memory.

Cosine similarity, the k most similar training examples vote with weights
exp(similarity / temperature) (Wu et al. 2018; DINO's monitor). Queries and
the training bank are both processed in chunks, keeping a running top-k, so
memory is O(query_chunk x bank_chunk) whatever the dataset size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _normalise(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('k',))
def _merge_topk(best_sim, best_lab, queries, bank, bank_labels, bank_valid, *, k):
  sim = jnp.where(bank_valid[None, :], queries @ bank.T, -jnp.inf)
  sims = jnp.concatenate([best_sim, sim], axis=1)
  labs = jnp.concatenate([best_lab, jnp.broadcast_to(bank_labels, sim.shape)], axis=1)
  top, idx = jax.lax.top_k(sims, k)
  return top, jnp.take_along_axis(labs, idx, axis=1)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                num_classes: int, k: int = 20, temperature: float = 0.07,
                query_chunk: int = 256, bank_chunk: int = 4096) -> np.ndarray:
  """Predicted labels [n_test] for `test_x` from the labelled `train_x`."""
  if not 0 < k <= len(train_x):
    raise ValueError(f'k={k} must be in [1, {len(train_x)}] (the number of training examples)')
  bank_chunk = min(bank_chunk, len(train_x))
  preds = []
  for q0 in range(0, len(test_x), query_chunk):
    queries = _normalise(jnp.asarray(test_x[q0:q0 + query_chunk]))
    best_sim = jnp.full((queries.shape[0], k), -jnp.inf)
    best_lab = jnp.zeros((queries.shape[0], k), jnp.int32)
    for b0 in range(0, len(train_x), bank_chunk):
      bank = np.asarray(train_x[b0:b0 + bank_chunk])
      labels = np.asarray(train_y[b0:b0 + bank_chunk], np.int32)
      valid = np.ones(len(bank), bool)
      if len(bank) < bank_chunk:  # pad the last chunk: one compiled shape
        pad = bank_chunk - len(bank)
        bank = np.concatenate([bank, np.zeros((pad,) + bank.shape[1:], bank.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, np.int32)])
        valid = np.concatenate([valid, np.zeros(pad, bool)])
      best_sim, best_lab = _merge_topk(best_sim, best_lab, queries, _normalise(jnp.asarray(bank)),
                                       jnp.asarray(labels), jnp.asarray(valid), k=k)
    votes = jnp.sum(jax.nn.one_hot(best_lab, num_classes)
                    * jnp.exp(best_sim / temperature)[..., None], axis=1)
    preds.append(np.asarray(jnp.argmax(votes, axis=-1)))
  return np.concatenate(preds)
