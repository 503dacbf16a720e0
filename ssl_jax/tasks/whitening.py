"""The whitening a classifier head fits once to its backbone's features: a
linear probe's to the frozen features, a fine-tune's (per feature only) to
the starting backbone's."""

from __future__ import annotations

import numpy as np

WHITEN_EPS = 1e-3
BATCHNORM_EPS = 1e-6  # as BatchNorm1d(affine=False, eps=1e-6) before a linear probe
KINDS = ('full', 'per_feature')


def whitening(features: np.ndarray, eps: float = WHITEN_EPS) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], matrix [D, D]) such that (x - mean) @ matrix is white.

  Each feature is standardised, then PCA-whitened: eigenvectors of the
  correlation matrix scaled by 1 / sqrt(eigenvalue + eps). The correlation
  matrix's eigenvalues average 1, so `eps` is relative: directions holding
  less than about eps of an average feature's variance are not amplified
  beyond 1 / sqrt(eps). Computed in float64 with numpy, so every host gets the
  same result from the same features.

  Why: self-supervised features are often extremely ill-conditioned (on the
  built-in dataset, five directions of a tiny model's 128 hold 99% of the
  variance, condition number ~1e7), and a linear classifier trained by
  gradient descent then learns only the dominant directions within its
  budget, while the classes are told apart by the small ones.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f'whitening needs features [n >= 2, D], got shape {x.shape}')
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  z = (x - mean) / std
  eigenvalues, eigenvectors = np.linalg.eigh(z.T @ z / len(z))
  matrix = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
  return mean.astype(np.float32), (matrix / std[:, None]).astype(np.float32)


def per_feature(features: np.ndarray, eps: float = BATCHNORM_EPS
                ) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], diagonal matrix [D, D]): each feature standardised by its own
  mean and variance, (x - mean) / sqrt(var + eps). This is the BatchNorm
  without affine parameters that some papers put before their linear probes,
  with statistics fitted once to the training features: an approximation of
  the BatchNorm's running statistics, which track the (augmented) training
  batches of a frozen backbone, here computed on evaluation-mode views."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f'normalisation needs features [n >= 2, D], got shape {x.shape}')
  scale = 1.0 / np.sqrt(x.var(axis=0) + eps)
  return x.mean(axis=0).astype(np.float32), np.diag(scale).astype(np.float32)


def fit(features: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
  """The head's (mean, matrix) of `kind`: 'full' (`whitening`) or
  'per_feature' (`per_feature`)."""
  if kind not in KINDS:
    raise ValueError(f'whitening kind must be one of {KINDS}, got {kind!r}')
  return whitening(features) if kind == 'full' else per_feature(features)
