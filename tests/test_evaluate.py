import numpy as np
import pytest

from ssl_jax.evaluate import fewshot, knn


def _clusters(n_per_class, num_classes=4, dim=32, seed=0, spread=0.3):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  y = np.repeat(np.arange(num_classes), n_per_class)
  return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_ridge_matches_numpy_normal_equations():
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(12, 30)), rng.normal(size=(12, 3))
  w, b = fewshot.ridge_fit(x, t, l2=0.5)
  xc, tc = x - x.mean(0), t - t.mean(0)
  w_ref = np.linalg.solve(xc.T @ xc + 0.5 * np.eye(30), xc.T @ tc)  # primal form
  np.testing.assert_allclose(w, w_ref, atol=1e-4)
  np.testing.assert_allclose(b, t.mean(0) - x.mean(0) @ w_ref, atol=1e-4)
  # More examples than dimensions: the primal form, same solution.
  tall, t2 = rng.normal(size=(40, 6)), rng.normal(size=(40, 2))
  w, b = fewshot.ridge_fit(tall, t2, l2=0.5)
  xc, tc = tall - tall.mean(0), t2 - t2.mean(0)
  w_ref = xc.T @ np.linalg.solve(xc @ xc.T + 0.5 * np.eye(40), tc)  # dual form
  np.testing.assert_allclose(w, w_ref, atol=1e-4)
  np.testing.assert_allclose(b, t2.mean(0) - tall.mean(0) @ w_ref, atol=1e-4)


def test_sample_shots_is_balanced_and_deterministic():
  y = np.repeat(np.arange(3), 10)
  idx = fewshot.sample_shots(y, 3, 4, seed=1)
  assert np.bincount(y[idx]).tolist() == [4, 4, 4] and len(set(idx)) == 12
  np.testing.assert_array_equal(idx, fewshot.sample_shots(y, 3, 4, seed=1))
  assert not np.array_equal(idx, fewshot.sample_shots(y, 3, 4, seed=2))
  with pytest.raises(ValueError, match='class 0 has 10 labelled examples, fewer than the 11 per class'):
    fewshot.sample_shots(y, 3, 11, seed=0)


def test_fewshot_separates_clusters_and_not_noise():
  train_x, train_y = _clusters(30)
  test_x, test_y = _clusters(20, seed=0)
  good = fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y, 4, shots=(1, 5))
  assert good['5shot'] > 0.95 and set(good) == {'1shot', '1shot_std', '5shot', '5shot_std'}
  noise = np.random.default_rng(3).normal(size=test_x.shape).astype(np.float32)
  bad = fewshot.fewshot_accuracy(np.random.default_rng(4).normal(size=train_x.shape),
                                 train_y, noise, test_y, 4, shots=(5,))
  assert bad['5shot'] < 0.5


def test_knn_matches_brute_force_with_chunks():
  train_x, train_y = _clusters(25, spread=2.0)
  test_x, _ = _clusters(7, seed=5, spread=2.0)
  got = knn.knn_predict(train_x, train_y, test_x, 4, k=5, query_chunk=6, bank_chunk=16)
  a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  q = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  sim = q @ a.T
  top = np.argsort(-sim, axis=1)[:, :5]
  votes = np.zeros((len(q), 4))
  for i in range(len(q)):
    for j in top[i]:
      votes[i, train_y[j]] += np.exp(sim[i, j] / 0.07)
  np.testing.assert_array_equal(got, votes.argmax(1))
  with pytest.raises(ValueError, match='k=500 must be in'):
    knn.knn_predict(train_x, train_y, test_x, 4, k=500)
