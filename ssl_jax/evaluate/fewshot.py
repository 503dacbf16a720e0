"""Few-shot evaluation: closed-form ridge regression on frozen features.

For each shot count and seed, `shots` examples per class are drawn from the
labelled training features (deterministically from the seed), a ridge
regression to +-1 one-hot targets is solved in closed form, and the argmax of
its predictions on the evaluation features is scored. Cheap enough to run
every few thousand steps while pretraining (big_vision's few-shot monitor).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def ridge_fit(x: jax.Array, targets: jax.Array, l2: float) -> tuple[jax.Array, jax.Array]:
  """argmin_w,b |x w + b - targets|^2 + l2 |w|^2, in closed form.

  Solved in the dual (an n x n system) when there are fewer examples than
  feature dimensions, as in most few-shot problems, else in the primal (a
  d x d system: 25 shots of 1000 classes stay cheap). The bias is not
  regularised (features and targets are centred).
  """
  x = x.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  mean_x, mean_t = x.mean(0), targets.mean(0)
  xc, tc = x - mean_x, targets - mean_t
  n, d = x.shape
  if n <= d:
    w = xc.T @ jnp.linalg.solve(xc @ xc.T + l2 * jnp.eye(n, dtype=jnp.float32), tc)
  else:
    w = jnp.linalg.solve(xc.T @ xc + l2 * jnp.eye(d, dtype=jnp.float32), xc.T @ tc)
  return w, mean_t - mean_x @ w


def sample_shots(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
  """Indices of `shots` examples of every class, drawn without replacement
  with `seed`, class by class (the one class-balanced draw of few-shot
  evaluation and the logistic low-data probes); ValueError if a class has
  fewer."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < shots:
      raise ValueError(f'class {c} has {len(members)} labelled examples, fewer than the '
                       f'{shots} per class asked for')
    picked.append(rng.choice(members, shots, replace=False))
  return np.concatenate(picked)


def fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, num_classes: int, shots: Sequence[int] = (1, 5, 10, 25),
                     seeds: Sequence[int] = (0, 1, 2), l2: float = 1.0) -> dict[str, float]:
  """{'{n}shot': mean accuracy over seeds, '{n}shot_std': its spread}."""
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  test_x = jnp.asarray(test_x, jnp.float32)
  out = {}
  for n in shots:
    accs = []
    for seed in seeds:
      idx = sample_shots(train_y, num_classes, n, seed)
      targets = 2.0 * jax.nn.one_hot(train_y[idx], num_classes) - 1.0
      w, b = ridge_fit(jnp.asarray(train_x[idx]), targets, l2)
      pred = np.asarray(jnp.argmax(test_x @ w + b, axis=-1))
      accs.append(float(np.mean(pred == test_y)))
    out[f'{n}shot'] = float(np.mean(accs))
    out[f'{n}shot_std'] = float(np.std(accs))
  return out
