"""The k-means classifier: nearest centre, then the cluster's label.

`fit_kmeans_classifier` fits the centres on training features and the
cluster -> label map on the training labels, as the fork's classifier does;
`KMeansClassifier` predicts in NumPy or in graph (the attack's target) and
saves itself as .npz or .json, never pickle.
"""

import dataclasses
import json
from typing import Optional

import numpy as np
import tensorflow as tf

from scae_tf import files
from scae_tf.kmeans.features import FEATURE_KINDS
from scae_tf.kmeans.fit import cosine_assign
from scae_tf.kmeans.fit import euclidean_assign
from scae_tf.kmeans.fit import fit_cosine_kmeans
from scae_tf.kmeans.fit import fit_euclidean_kmeans
from scae_tf.kmeans.fit import l2_normalize
from scae_tf.kmeans.fit import METRICS
from scae_tf.kmeans.matching import contingency_matrix
from scae_tf.kmeans.matching import hungarian_mapping

FORMAT_VERSION = 1


@dataclasses.dataclass
class KMeansClassifier:
  """Nearest-centre classifier with a cluster -> label map.

  centers: [k, D] float32 (unit rows for 'cosine').
  metric: 'cosine' or 'euclidean'.
  feature: 'prior' or 'posterior' (which `collect_features` entry to use).
  cluster_to_label: [k] int64.
  metadata: JSON-able dict (k, n_iter, seed, checkpoint, train_accuracy...).
  """
  centers: np.ndarray
  metric: str
  feature: str
  cluster_to_label: np.ndarray
  metadata: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f'metric must be one of {METRICS}, got {self.metric!r}.')
    if self.feature not in FEATURE_KINDS:
      raise ValueError(f'feature must be one of {FEATURE_KINDS}, got '
                       f'{self.feature!r}.')
    centers = np.asarray(self.centers, np.float64)
    if centers.ndim != 2:
      raise ValueError(f'centers must be [k, D], got {list(centers.shape)}.')
    if self.metric == 'cosine':
      centers = l2_normalize(centers)
    self.centers = centers.astype(np.float32)
    self.cluster_to_label = np.asarray(self.cluster_to_label, np.int64)
    if self.cluster_to_label.shape != (self.k,):
      raise ValueError(f'cluster_to_label must have shape [{self.k}], got '
                       f'{list(self.cluster_to_label.shape)}.')
    self.metadata = dict(self.metadata)

  @property
  def k(self) -> int:
    return int(self.centers.shape[0])

  @property
  def n_features(self) -> int:
    return int(self.centers.shape[1])

  @property
  def n_classes(self) -> int:
    return int(self.metadata.get('n_classes',
                                 int(self.cluster_to_label.max()) + 1))

  def features_of(self, features):
    """Picks this classifier's feature kind from a `collect_features` dict."""
    if isinstance(features, dict):
      return features[self.feature]
    return features

  def _check(self, x):
    x = np.asarray(self.features_of(x))
    if x.ndim != 2 or x.shape[1] != self.n_features:
      raise ValueError(f'Expected features [N, {self.n_features}], got '
                       f'{list(x.shape)}.')
    return x

  def assign(self, features) -> np.ndarray:
    """[N] cluster index of each row (numpy)."""
    x = self._check(features)
    if self.metric == 'cosine':
      return cosine_assign(x, self.centers)
    return euclidean_assign(x, self.centers)

  def predict(self, features) -> np.ndarray:
    """[N] int64 predicted labels (numpy). Accepts a `collect_features` dict."""
    return self.cluster_to_label[self.assign(features)]

  def mean_distance(self, features) -> float:
    """Mean distance of each row to its nearest centre: cosine distance
    (1 - cosine similarity) or squared Euclidean distance. This is the
    quantity k-means minimises, so it compares fits without labels."""
    x = self._check(features).astype(np.float64)
    c = self.centers.astype(np.float64)
    if self.metric == 'cosine':
      return float(np.mean(1. - np.max(l2_normalize(x) @ c.T, axis=1)))
    sq = (np.sum(x * x, 1)[:, None] - 2. * x @ c.T
          + np.sum(c * c, 1)[None, :])
    return float(np.mean(np.maximum(np.min(sq, axis=1), 0.)))

  def accuracy(self, features, labels) -> float:
    labels = np.asarray(labels).reshape(-1)
    return float(np.mean(self.predict(features) == labels))

  # In-graph versions (pure TF, usable inside tf.function; no numpy calls).

  def tf_cluster_scores(self, features):
    """[B, k] scores, larger = nearer: cosine similarity, or
    2<x, c> - |c|^2 (= |x|^2 - |x - c|^2) for Euclidean. Differentiable."""
    x = tf.convert_to_tensor(features)
    if not x.dtype.is_floating:
      x = tf.cast(x, tf.float32)
    c = tf.constant(self.centers, dtype=x.dtype)
    if self.metric == 'cosine':
      return tf.matmul(tf.math.l2_normalize(x, axis=-1), c, transpose_b=True)
    return (2. * tf.matmul(x, c, transpose_b=True)
            - tf.reduce_sum(tf.square(c), -1)[tf.newaxis, :])

  def tf_assign(self, features):
    """[B] int64 nearest cluster, in graph."""
    return tf.argmax(self.tf_cluster_scores(features), axis=-1,
                     output_type=tf.int64)

  def tf_predict(self, features):
    """[B] int64 predicted labels, in graph (equals `predict`)."""
    table = tf.constant(self.cluster_to_label, tf.int64)
    return tf.gather(table, self.tf_assign(features))

  # Persistence (.npz or .json; never pickle).

  def save(self, path: str) -> str:
    """Writes the classifier to `path` (.json -> JSON, else .npz)."""
    meta = json.dumps(_jsonable(self.metadata), sort_keys=True)
    if path.endswith('.json'):
      return files.write_json(path, dict(
          format_version=FORMAT_VERSION, metric=self.metric,
          feature=self.feature, centers=self.centers.tolist(),
          cluster_to_label=self.cluster_to_label.tolist(),
          metadata=json.loads(meta)))
    return files.save_npz(path, dict(
        format_version=np.int64(FORMAT_VERSION), metric=np.str_(self.metric),
        feature=np.str_(self.feature), centers=self.centers,
        cluster_to_label=self.cluster_to_label, metadata=np.str_(meta)))

  @classmethod
  def load(cls, path: str) -> 'KMeansClassifier':
    if path.endswith('.json'):
      with open(path) as f:
        blob = json.load(f)
      fields = dict(metric=blob['metric'], feature=blob['feature'],
                    centers=np.asarray(blob['centers'], np.float32),
                    cluster_to_label=np.asarray(blob['cluster_to_label'],
                                                np.int64),
                    metadata=blob.get('metadata', {}))
      version = blob.get('format_version')
    else:
      with np.load(path, allow_pickle=False) as z:
        fields = dict(metric=str(z['metric']), feature=str(z['feature']),
                      centers=z['centers'],
                      cluster_to_label=z['cluster_to_label'],
                      metadata=json.loads(str(z['metadata'])))
        version = int(z['format_version'])
    if version != FORMAT_VERSION:
      raise ValueError(f'{path}: unsupported k-means file version {version}.')
    return cls(**fields)


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def fit_kmeans_classifier(features, labels, metric: str = 'cosine',
                          feature: str = 'prior', k: int = 10,
                          n_iter: int = 1000, seed: int = 0,
                          n_classes: Optional[int] = None, n_init: int = 10,
                          n_retries: int = 10, update: str = 'minibatch',
                          checkpoint: Optional[str] = None,
                          progress: bool = False) -> KMeansClassifier:
  """Fits k-means on training features and the cluster -> label map.

  Args:
    features: [N, D] array, or a `collect_features` dict (then `feature`
      picks the entry).
    labels: [N] int training labels (only for the map, not the clustering).
    metric: 'cosine' (the fork's k-means, default) or 'euclidean'
      (upstream's scikit-learn k-means).
    feature: 'prior' or 'posterior' (recorded; selects from a dict).
    k, n_iter, seed: clusters, training steps / max iterations, seed.
    n_classes: number of labels (default: max(labels) + 1).
    n_init: scikit-learn restarts (euclidean only).
    n_retries, update: see `fit_cosine_kmeans` (cosine only).
    checkpoint: recorded in the metadata.
    progress: a progress bar of the cosine fit's steps on stderr
      (scikit-learn's Euclidean fit reports none).
  """
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}.')
  if feature not in FEATURE_KINDS:
    raise ValueError(f'feature must be one of {FEATURE_KINDS}, got '
                     f'{feature!r}.')
  x = features[feature] if isinstance(features, dict) else features
  x = np.asarray(x)
  labels = np.asarray(labels, np.int64).reshape(-1)
  if len(labels) != len(x):
    raise ValueError(f'{len(x)} feature rows but {len(labels)} labels.')
  if n_classes is None:
    n_classes = int(labels.max()) + 1
  if metric == 'cosine':
    centers, info = fit_cosine_kmeans(x, k, n_iter, seed, n_retries, update,
                                      progress, f'k-means {feature}')
    algo = dict(algorithm=f'fork_cosine_{update}', n_retries=n_retries,
                update=update)
  else:
    centers, info = fit_euclidean_kmeans(x, k, n_iter, seed, n_init)
    algo = dict(algorithm='sklearn_kmeans_lloyd', n_init=n_init,
                inertia=info['inertia'])
  mapping = hungarian_mapping(
      contingency_matrix(info['assignment'], labels, k, n_classes))
  clf = KMeansClassifier(centers, metric, feature, mapping)
  meta = dict(k=k, n_iter=n_iter, n_steps=info['n_steps'], seed=seed,
              n_classes=n_classes, n_train=len(x), n_features=x.shape[1],
              checkpoint=checkpoint, **algo)
  meta['train_accuracy'] = clf.accuracy(x, labels)
  clf.metadata = meta
  return clf
