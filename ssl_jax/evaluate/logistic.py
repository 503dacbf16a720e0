"""Multinomial logistic regression on frozen features, fitted by L-BFGS, in
bounded memory.

The linear probes of generative pretraining on CIFAR-10/100 and STL-10,
and their low-data evaluation ("a logistic regression classifier on ...
features without any data augmentation or fine-tuning"), fit a logistic
regression to normalised features with L-BFGS. Here: features standardised
with the training set's mean and standard deviation (`moments`), minimise

  mean cross-entropy + l2 / 2 * |W|^2        (the bias is not penalised)

with scipy's L-BFGS-B for a fixed number of iterations, full batch. The
features may be a numpy array or a memory map on disk (a whole ImageNet
training split): the objective and its gradient are sums over chunks of
`chunk` rows, each standardised on the fly and evaluated by one jitted
function (every chunk padded to the same shape: one compilation), so memory
holds one chunk and the parameters, whatever the number of examples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ssl_jax.evaluate import fewshot

CHUNK = 65_536  # rows per chunk: 65536 x 1536 float32 features = 400 MB


def _chunks(n: int, chunk: int):
  for start in range(0, n, chunk):
    yield start, min(start + chunk, n)


def _padded(x, y, start: int, stop: int, chunk: int):
  """Rows [start, stop) as float32, padded to `chunk` rows (weight 0)."""
  rows = np.asarray(x[start:stop], np.float32)
  pad = min(chunk, len(x)) - len(rows)
  weights = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)])
  rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), np.float32)])
  labels = None if y is None else np.concatenate(
      [np.asarray(y[start:stop], np.int32), np.zeros(pad, np.int32)])
  return rows, labels, weights


def moments(x, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) of every feature of x [n, d] (1 where the std is 0),
  accumulated chunk by chunk in float64."""
  total, squares = 0.0, 0.0
  for start, stop in _chunks(len(x), chunk):
    rows = np.asarray(x[start:stop], np.float64)
    total = total + rows.sum(0)
    squares = squares + (rows ** 2).sum(0)
  mean = total / len(x)
  std = np.sqrt(np.maximum(squares / len(x) - mean ** 2, 0.0))
  return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _loss_and_grads(w, b, x, y, weights, mean, std, *, num_classes: int):
  def summed(w, b):
    logits = ((x - mean) / std) @ w + b
    return jnp.sum(weights * -jnp.take_along_axis(
        jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0])
  value, (gw, gb) = jax.value_and_grad(summed, argnums=(0, 1))(w, b)
  return value, gw, gb


def fit(x, y: np.ndarray, num_classes: int, *, l2: float, steps: int = 100,
        standardise_with: tuple[np.ndarray, np.ndarray] | None = None,
        chunk: int = CHUNK) -> dict[str, np.ndarray]:
  """{'w': [d, classes], 'b': [classes], 'mean', 'std'} fitted to x [n, d]
  (an array or a memory map), standardised with `standardise_with` (default:
  its own `moments`)."""
  n, d = x.shape
  mean, std = standardise_with if standardise_with is not None else moments(x, chunk)
  y = np.asarray(y)

  def objective(flat):
    w = jnp.asarray(flat[:d * num_classes].reshape(d, num_classes), jnp.float32)
    b = jnp.asarray(flat[d * num_classes:], jnp.float32)
    value, gw, gb = 0.0, np.zeros((d, num_classes)), np.zeros(num_classes)
    for start, stop in _chunks(n, chunk):
      rows, labels, weights = _padded(x, y, start, stop, chunk)
      v, cw, cb = _loss_and_grads(w, b, rows, labels, weights, mean, std,
                                  num_classes=num_classes)
      value, gw, gb = value + float(v), gw + np.asarray(cw, np.float64), gb + np.asarray(cb)
    w64 = flat[:d * num_classes].reshape(d, num_classes)
    value = value / n + 0.5 * l2 * float(np.sum(w64 ** 2))
    grad = np.concatenate([(gw / n + l2 * w64).ravel(), gb / n])
    return value, grad

  start = np.zeros(d * num_classes + num_classes)
  out = scipy.optimize.minimize(objective, start, jac=True, method='L-BFGS-B',
                                options={'maxiter': steps})
  return {'w': out.x[:d * num_classes].reshape(d, num_classes).astype(np.float32),
          'b': out.x[d * num_classes:].astype(np.float32), 'mean': mean, 'std': std}


def accuracy(params: dict[str, np.ndarray], x, y: np.ndarray, chunk: int = CHUNK) -> float:
  """Top-1 of the fitted classifier on x [n, d] (an array or a memory map),
  standardised as when it was fitted."""
  correct = 0
  for start, stop in _chunks(len(x), chunk):
    rows = (np.asarray(x[start:stop], np.float32) - params['mean']) / params['std']
    correct += int(np.sum(np.argmax(rows @ params['w'] + params['b'], -1)
                          == np.asarray(y[start:stop])))
  return correct / len(x)


def class_balanced(labels: np.ndarray, per_class: int, num_classes: int,
                   seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of every class, drawn without
  replacement with `seed` (fewshot.sample_shots); ValueError if a class has
  fewer."""
  return np.sort(fewshot.sample_shots(labels, num_classes, per_class, seed))
