"""The dynamic vocabulary (DV2 3.5): non-gradient state of S unit vectors
with a mass each, fed with target representations, and the loss that
pushes predictions away from its entries.

Update (equations 17-19), for target vectors u_j (128-d, unit norm, no
gradient) with weights w_j (0 for padding):
  c_j = argmax_i cos(m_i v_i + u_j, u_j)
      = argmax_i (m_i v_i . u_j + 1) / |m_i v_i + u_j|
which "favors entry with smaller mass value": a light entry turns towards
any target, a heavy one only towards targets already near it. Then every
entry with assigned targets becomes v_i = norm(m_i v_i + sum_{c_j = i} w_j
u_j), and every mass m_i = (m_i + sum_{c_j = i} w_j) * lambda: an entry no
target chooses keeps its direction while its mass decays, "until the mass
fall small enough, then they will be reassigned". Ties go to the lowest
index, so the assignment is a deterministic function of the
vectors, the masses and the targets: the same on any number of devices
(the jitted step sees the global batch), up to the order of the float sums
of targets that share an entry.

Loss (equation 20), for predictions û_j and their targets u_j:
  L = sum_ij (|v_i, u_j| - 1) log(1 - |v_i, û_j|)
with |.,.| the rescaled cosine: each entry pushes the prediction away with
the weight 1 - |v_i, u_j|, so an entry that matches the target pushes
nothing. The loss reads the vocabulary as the previous steps left it (the
entries are negatives from earlier batches, as a memory bank's are); the
step's update comes after. normalise: 'predictions' (the text: "scaling it
according to number of prediction vectors": the sum over entries, the mean
over predictions) or 'pairs' (the mean over entries too).

Health (`stats`): entries chosen this step, the masses' minimum, median
and maximum, and stale re-assignments: entries chosen this step that no
target had chosen for `stale_after` steps (their old direction carries
little mass, so the new targets replace it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssl_jax.nn.contrastive import EPS, rescaled_cosine, unit

NORMALISE = ('predictions', 'pairs')


class Vocabulary(NamedTuple):
  vectors: jax.Array  # [S, d], unit norm
  mass: jax.Array     # [S]
  age: jax.Array      # [S] int32: steps since an entry was last chosen


def init(rng: jax.Array, size: int, dim: int) -> dict[str, jax.Array]:
  """Random unit vectors, masses 1, ages 0 (as a dict: checkpointed state)."""
  return {'vectors': unit(jax.random.normal(rng, (size, dim))),
          'mass': jnp.ones((size,), jnp.float32), 'age': jnp.zeros((size,), jnp.int32)}


def assign(vectors: jax.Array, mass: jax.Array, targets: jax.Array) -> jax.Array:
  """c_j [n] (equation 17) for unit targets [n, d].

  The cosine (m d + 1) / r, with d = v_i . u_j and r = |m v_i + u_j|, is
  1 - m^2 (1 - d^2) / (r (r + 1 + m d)) where 1 + m d >= 0: c_j minimises
  that gap, computed in this form because for a light entry (small m) the
  cosine itself rounds to 1.0 in float32 whatever its direction (at m <=
  2e-4, an entry unchosen for 850 steps at lambda 0.99), and argmax would
  then give every target to the lowest-index light entry. Where 1 + m d < 0
  the cosine is negative and 1 - cosine is computed directly."""
  dots = targets @ vectors.T                       # v_i . u_j, [n, S]
  m = mass[None, :]
  along = 1.0 + m * dots
  r = jnp.sqrt(jnp.maximum(m * m + 2.0 * m * dots + 1.0, 1e-30))
  close = (m * m) * jnp.maximum(1.0 - dots * dots, 0.0) / (r * jnp.maximum(r + along, 1e-30))
  gap = jnp.where(along >= 0, close, 1.0 - along / r)
  return jnp.argmin(gap, axis=-1)


def update(vocab: dict[str, jax.Array], targets: jax.Array, weights: jax.Array, decay: float,
           stale_after: int) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(new vocabulary, health metrics) after feeding unit targets [n, d] with
  weights [n] (equations 17-19). No gradient flows through it."""
  vectors, mass, age = (jax.lax.stop_gradient(vocab[k]) for k in ('vectors', 'mass', 'age'))
  targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
  choice = assign(vectors, mass, targets)
  counts = jnp.zeros_like(mass).at[choice].add(weights)
  sums = jnp.zeros_like(vectors).at[choice].add(weights[:, None] * targets)
  chosen = counts > 0
  new_vectors = jnp.where(chosen[:, None], unit(mass[:, None] * vectors + sums), vectors)
  new_mass = (mass + counts) * decay
  stale = chosen & (age >= stale_after)
  new_age = jnp.where(chosen, 0, age + 1).astype(jnp.int32)
  stats = {'entries_used': chosen.sum().astype(jnp.float32),
           'stale_reassigned': stale.sum().astype(jnp.float32),
           'mass_min': new_mass.min(), 'mass_median': jnp.median(new_mass),
           'mass_max': new_mass.max()}
  return {'vectors': new_vectors, 'mass': new_mass, 'age': new_age}, stats


def loss(vectors: jax.Array, predictions: jax.Array, targets: jax.Array, weights: jax.Array,
         normalise: str) -> jax.Array:
  """Equation 20: predictions, targets [n, d] (targets unit, no gradient),
  weights [n]; the vocabulary's vectors [S, d] carry no gradient."""
  vectors = jax.lax.stop_gradient(vectors)
  push = 1.0 - rescaled_cosine(jax.lax.stop_gradient(targets), vectors)   # [n, S]
  close = jnp.clip(rescaled_cosine(predictions, vectors), EPS, 1.0 - EPS)
  per_prediction = (push * -jnp.log1p(-close)).sum(-1)
  if normalise == 'pairs':
    per_prediction = per_prediction / vectors.shape[0]
  elif normalise != 'predictions':
    raise ValueError(f'normalise={normalise!r}: allowed {NORMALISE}')
  return (per_prediction * weights).sum() / jnp.maximum(weights.sum(), 1.0)
