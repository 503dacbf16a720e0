"""Multinomial logistic regression on frozen features, fitted by L-BFGS.

The linear probes of generative pretraining on CIFAR-10/100 and STL-10,
and their low-data evaluation ("a logistic regression classifier on ...
features without any data augmentation or fine-tuning"), fit a logistic
regression to normalised features with L-BFGS. Here: features standardised with the
training set's mean and standard deviation, minimise

  mean cross-entropy + l2 / 2 * |W|^2        (the bias is not penalised)

with optax's L-BFGS (zoom line search) for a fixed number of iterations,
full batch, in float32, jit-compiled (one compilation per shape).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluate import fewshot


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """`train` and `others` minus train's mean, over train's std (1 where 0)."""
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return [((x - mean) / std).astype(np.float32) for x in (train,) + others]


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def _fit(x, y, l2, *, num_classes: int, steps: int):
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  onehot = jax.nn.one_hot(y, num_classes)

  def objective(p):
    logits = x @ p['w'] + p['b']
    return optax.softmax_cross_entropy(logits, onehot).mean() + 0.5 * l2 * jnp.sum(p['w'] ** 2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad,
                                   value_fn=objective)
    return (optax.apply_updates(p, updates), state), value

  (params, _), values = jax.lax.scan(step, (params, solver.init(params)), None, length=steps)
  return params, values[-1]


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float,
        steps: int = 100) -> dict[str, np.ndarray]:
  """{'w': [d, classes], 'b': [classes]} fitted to standardised x [n, d]."""
  params, _ = _fit(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                   jnp.float32(l2), num_classes=num_classes, steps=steps)
  return jax.device_get(params)


def accuracy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
  logits = np.asarray(x, np.float32) @ params['w'] + params['b']
  return float(np.mean(np.argmax(logits, -1) == y))


def class_balanced(labels: np.ndarray, per_class: int, num_classes: int,
                   seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of every class, drawn without
  replacement with `seed` (fewshot.sample_shots); ValueError if a class has
  fewer."""
  return np.sort(fewshot.sample_shots(labels, num_classes, per_class, seed))
