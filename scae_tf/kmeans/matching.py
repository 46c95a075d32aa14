"""Cluster -> label matching: the maximum bipartite matching that turns
clusters into a classifier (fitted on the training set), and upstream's
protocol that re-matches on the evaluated set itself."""

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency_matrix(clusters, labels, n_clusters: int, n_classes: int
                       ) -> np.ndarray:
  """[n_clusters, n_classes] counts of examples per (cluster, label)."""
  clusters = np.asarray(clusters, np.int64).reshape(-1)
  labels = np.asarray(labels, np.int64).reshape(-1)
  if clusters.shape != labels.shape:
    raise ValueError(f'{clusters.size} cluster ids but {labels.size} labels.')
  for name, v, hi in (('cluster', clusters, n_clusters),
                      ('label', labels, n_classes)):
    if v.size and (v.min() < 0 or v.max() >= hi):
      raise ValueError(f'{name} ids must lie in [0, {hi}), got '
                       f'[{v.min()}, {v.max()}].')
  m = np.zeros([n_clusters, n_classes], np.int64)
  np.add.at(m, (clusters, labels), 1)
  return m


def hungarian_mapping(contingency) -> np.ndarray:
  """cluster -> label map maximising matched examples (one label per cluster).

  With more clusters than labels, clusters left unmatched take their majority
  label; with fewer, some labels are never predicted.
  """
  m = np.asarray(contingency)
  rows, cols = linear_sum_assignment(m, maximize=True)
  mapping = np.argmax(m, axis=1).astype(np.int64)
  mapping[rows] = cols
  return mapping


def rematched_accuracy(clusters, labels, n_clusters: int, n_classes: int
                       ) -> float:
  """Upstream's protocol: the best one-to-one matching on this very set."""
  m = contingency_matrix(clusters, labels, n_clusters, n_classes)
  rows, cols = linear_sum_assignment(m, maximize=True)
  return float(m[rows, cols].sum() / max(len(np.asarray(labels)), 1))
