"""Contrastive losses on rescaled cosine similarities (DV2 3.2-3.4).

DV2 writes |x, y| for "the cosine similarity between two vectors x, y after
projecting to a 128D space, the cosine value is rescaled from [-1, 1] to
[0, 1]" (`rescaled_cosine`), and builds every pair loss from it as a binary
classification of pairs: -log |p, t| for a positive pair, -log(1 - |p, t|)
for a negative one (`pair_loss`): equation 15 (L_mp, predicted patch vs
every patch), 16 (L_mi, patch view vs image view) and 12-13 (Allp, between
transformed copies).

Normalisation (`normalise`):
  'printed'   the equations' normaliser: the sum of every pair's term over
              the number of pairs (N^2 M Q for L_mp: N Q predictions x N M
              targets; N^2 for L_mi). One positive per prediction against N M
              - 1 negatives gives the positive term a weight of about 1 / (N M).
  'balanced'  the mean over positive pairs plus the mean over negative
              pairs: each side weighs the same whatever the batch.
Similarities are clipped to [EPS, 1 - EPS] so that both logarithms stay
finite (a prediction equal to a negative would otherwise give log 0).

`nt_xent` is the other family: SimCLR's InfoNCE over cosine similarities
divided by a temperature, each view's positive against every other view of
the (global) batch (the multi-task ViT's contrastive token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALISE = ('printed', 'balanced')
EPS = 1e-6


def unit(x: jax.Array) -> jax.Array:
  """x / |x| along the last axis (float32; 0 stays 0)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum((x * x).sum(-1, keepdims=True), 1e-12))


def rescaled_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """|a_i, b_j| = (cos(a_i, b_j) + 1) / 2 in [0, 1]: a [n, d], b [m, d] -> [n, m]."""
  return (unit(a) @ unit(b).T + 1.0) / 2.0


def pair_weights(row_weights: jax.Array, col_weights: jax.Array) -> jax.Array:
  """[n, m]: a pair counts when both its sides do (1 real, 0 padding)."""
  return row_weights[:, None] * col_weights[None, :]


def pair_loss(similarity: jax.Array, positive: jax.Array, weights: jax.Array,
              normalise: str) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The binary pair loss of equations 12-16.

  similarity [n, m] in [0, 1]; positive [n, m] bool (every other pair is a
  negative); weights [n, m]: 1 for pairs that count, 0 for pairs left out
  (padding, a copy paired with itself). Returns (loss, {'positive': mean
  -log s over positives, 'negative': mean -log(1 - s) over negatives}).
  """
  s = jnp.clip(similarity.astype(jnp.float32), EPS, 1.0 - EPS)
  w = weights.astype(jnp.float32)
  pos_w = w * positive
  neg_w = w * (1.0 - positive)
  pos_terms = -jnp.log(s) * pos_w
  neg_terms = -jnp.log1p(-s) * neg_w
  pos_mean = pos_terms.sum() / jnp.maximum(pos_w.sum(), 1.0)
  neg_mean = neg_terms.sum() / jnp.maximum(neg_w.sum(), 1.0)
  if normalise == 'printed':
    loss = (pos_terms.sum() + neg_terms.sum()) / jnp.maximum(w.sum(), 1.0)
  elif normalise == 'balanced':
    loss = pos_mean + neg_mean
  else:
    raise ValueError(f'normalise={normalise!r}: allowed {NORMALISE}')
  return loss, {'positive': pos_mean, 'negative': neg_mean}


def same_source(row_source: jax.Array, col_source: jax.Array) -> jax.Array:
  """[n, m] bool: pairs whose ids (e.g. (image, location) codes) agree."""
  return row_source[:, None] == col_source[None, :]


def nt_xent(z: jax.Array, views: int, temperature: float, weights: jax.Array
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimCLR's NT-Xent. z [n, d] holds the `views` views of each image
  consecutively (n = images * views); every view is an anchor, its
  positives are the other views of its image, and the candidates are all
  n - 1 other views of the batch: -log(exp(s_pos / t) / sum_{k != i}
  exp(s_ik / t)), s the cosine, averaged over positives and anchors
  (weights [n]: padded views neither anchor nor count as candidates).
  Under jit over a sharded global batch the similarity matrix spans every
  device's examples, so negatives come from the whole global batch.

  Returns (loss, {'top1': how often an anchor's nearest candidate is one
  of its positives})."""
  n = z.shape[0]
  u = unit(z.astype(jnp.float32))
  logits = (u @ u.T) / temperature
  valid = weights > 0
  candidate = valid[None, :] & ~jnp.eye(n, dtype=bool)
  logits = jnp.where(candidate, logits, -1e9)  # finite: no NaN in an empty row
  log_p = jax.nn.log_softmax(logits, axis=-1)
  source = jnp.arange(n) // views
  positive = same_source(source, source) & candidate
  per_anchor = -jnp.sum(jnp.where(positive, log_p, 0.0), -1) / jnp.maximum(
      positive.sum(-1), 1)
  w = weights * (positive.sum(-1) > 0)
  loss = jnp.sum(per_anchor * w) / jnp.maximum(w.sum(), 1e-9)
  hit = positive[jnp.arange(n), jnp.argmax(logits, -1)]
  top1 = jnp.sum(hit * w) / jnp.maximum(w.sum(), 1e-9)
  return loss, {'top1': top1}
