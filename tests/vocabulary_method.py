"""A test method with non-gradient state: a vocabulary-like table.

Each image's mean colour (in [-1, 1]) is projected by a trained linear map
to a code z [d]; each code is assigned to the table row with the highest
dot product (per-example argmax), the assigned rows get the codes added
(scatter-add, weighted by (1 - decay)) after every row decays by `decay`,
and `counts` track the assignments alike. The loss pulls each code towards
its (stop-gradient) row. The table is the method's state: updated inside
the jitted step without gradients, checkpointed, restored on resume, and
kept frozen by probes (`state_in_evaluation = 'frozen'`), whose
representation 'codes' reads it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config.checks import positive_int, require
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn.patches import to_signed


def update_table(table: jax.Array, counts: jax.Array, codes: jax.Array,
                 weights: jax.Array, decay: float):
  """(assignment [b], new table [k, d], new counts [k]): argmax assignment
  of codes [b, d] to rows, then decay every row and scatter-add the codes
  (times (1 - decay) and their weight) into their rows."""
  assign = jnp.argmax(codes @ table.T, axis=-1)
  added = jnp.zeros_like(table).at[assign].add((1.0 - decay) * weights[:, None] * codes)
  hits = jnp.zeros_like(counts).at[assign].add((1.0 - decay) * weights)
  return assign, decay * table + added, decay * counts + hits


class Vocabulary(Method):
  name = 'vocabulary'
  architecture_keys = ('vocabulary.size', 'vocabulary.width')
  state_in_evaluation = 'frozen'

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    v = config.vocabulary
    self.size, self.width, self.decay = v.size, v.width, v.decay
    self.proj = nn.Dense(self.width, use_bias=False, dtype=dtype)

  @classmethod
  def validate(cls, config):
    positive_int(config, 'vocabulary.size')
    positive_int(config, 'vocabulary.width')
    require(config, 'vocabulary.decay', lambda v: 0 <= v < 1, 'a number in [0, 1)')

  @staticmethod
  def _colour(images):
    """[b, 3]: the mean colour of each example (over its pixels, and its
    views when it has several)."""
    return to_signed(images).reshape(images.shape[0], -1, 3).mean(axis=1)

  def _codes(self, params, batch):
    return self.proj.apply({'params': params}, self._colour(batch['image'])).astype(jnp.float32)

  def init(self, rng, batch, *, decoder=True):
    return self.proj.init(rng, self._colour(batch['image']))['params']

  def init_state(self, rng, batch, params):
    return {'table': jax.random.normal(rng, (self.size, self.width)),
            'counts': jnp.zeros((self.size,))}

  def loss(self, params, batch, rng, *, train=True, state=None):
    codes = self._codes(params, batch)
    weights = example_weights(batch, codes.shape[0])
    assign, table, counts = update_table(state['table'], state['counts'],
                                         jax.lax.stop_gradient(codes), weights, self.decay)
    target = jax.lax.stop_gradient(state['table'][assign])
    loss = weighted_mean(((codes - target) ** 2).mean(-1), weights)
    used = (counts > 1e-3).sum().astype(jnp.float32)
    return loss, LossAux({'rows_used': used}, self.represent(params, batch, state=state),
                         {'table': table, 'counts': counts})

  def representations(self):
    return ('code', 'codes')

  def represent(self, params, batch, *, state=None, rng=None, train=False, mask_ratio=0.0):
    codes = self._codes(params, batch)
    return {'code': codes, 'codes': jax.nn.softmax(codes @ state['table'].T, axis=-1)}


METHOD = Vocabulary
