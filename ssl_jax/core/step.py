"""The train step: one pure function of (state, batch), jit-compiled over a
Mesh with explicit shardings and a donated state.

The step's PRNG key is fold_in(key(seed), state.step), so every random
choice (masks, crops, augmentations, dropout) is a function of the seed and
the step number alone: a resumed run draws exactly what an uninterrupted
run would have.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # number of updates applied so far (int32 scalar)
  params: Any
  opt_state: Any
  # The method's non-gradient state (e.g. a dynamic vocabulary, batch
  # statistics), updated inside the step by the loss, sharded like the
  # parameters and checkpointed with them; {} for most methods.
  method_state: Any = dataclasses.field(default_factory=dict)


def step_key(seed: int, step: jax.Array) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


# The stream of keys the non-gradient state is initialised from (the
# parameters keep key(seed) itself, so adding state changes no parameter).
_STATE_INIT_STREAM = 1


def init_state(task, tx: optax.GradientTransformation, key: jax.Array,
               batch: dict[str, jax.Array]) -> TrainState:
  """The initial state from `key` (jax.random.key(config.seed)).

  Jit this with the key as an argument, not a closed-over constant: a program
  of no arguments is all constants, and XLA's constant folding then runs the
  whole random initialisation in its interpreter at compile time (minutes
  for a ViT-B on a GPU).
  """
  params = task.init(key, batch)
  method_state = task.init_state(jax.random.fold_in(key, _STATE_INIT_STREAM), batch, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), method_state=method_state)


def make_train_step(task, tx: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, seed: int) -> Callable:
  """(state, batch) -> (new state, {metric: scalar})."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = step_key(seed, state.step)
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    (loss, (metrics, method_state)), grads = grad_fn(state.params, batch, rng, train=True,
                                                     state=state.method_state)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A task may report its own 'loss' (pretraining reports the
    # self-supervised loss without its online probe's).
    metrics = {'loss': loss, **metrics, 'grad_norm': optax.tree.norm(grads),
               'param_norm': optax.tree.norm(params),
               'learning_rate': lr_schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state, method_state), metrics

  return train_step


def jit_train_step(train_step: Callable, state_sharding: Any,
                   batch_sharding: NamedSharding, replicated: NamedSharding):
  """jax.jit with explicit in/out shardings; the state's buffers are donated."""
  return jax.jit(train_step,
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated),
                 donate_argnums=0)
