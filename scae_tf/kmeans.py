"""Unsupervised classification of SCAE capsule presences with k-means.

The SCAE paper (and the attack paper built on it) classify an image without
labels: cluster the object-capsule presences of the training set with
k-means (k = number of classes), map every cluster to one label by maximum
bipartite matching on the training set, then label a new image with the label
of its nearest centre. Two feature kinds are clustered:

* `prior`: the prior object-capsule presence probabilities
  (`ScaeOutput.caps_presence_prob`, [N, K]);
* `posterior`: the posterior mixing probabilities summed over the parts
  (`ScaeOutput.posterior_presence`, [N, K]).

Two k-means variants:

`cosine` (the DEFAULT; the attack paper's numbers come from it): the fork's
  `tools/model.py::KMeans`, a TF1 `contrib.factorization` KMeans with
  `distance_metric=COSINE_DISTANCE`, `initial_clusters=KMEANS_PLUS_PLUS_INIT`
  (`kmeans_plus_plus_num_retries=10`), `use_mini_batch=True`,
  `mini_batch_steps_per_iteration=1`, and 1000 training steps, each fed the
  WHOLE training feature matrix (`KMeans.train` runs `training_op` 1000 times
  on `pres_list`). We reimplement that exact schedule (`fit_cosine_kmeans`,
  `update='minibatch'`):

  - points are L2-normalised (TF's `l2_normalize`, epsilon 1e-12);
  - k-means++ initialisation as the contrib kernel does it ("greedy"
    k-means++): every centre, the first included, is the best of
    1 + n_retries candidates, candidates drawn uniformly for the first centre
    and with probability proportional to the half squared distance to the
    nearest chosen centre afterwards (never a point already chosen); "best" =
    smallest potential (sum of those distances). On unit vectors the half
    squared Euclidean distance is exactly the cosine distance.
  - each step assigns every point to the centre of largest cosine similarity
    (centres normalised for the assignment only) and applies contrib's
    mini-batch update with per-centre counts that start at 1 and never reset:
    `c += (sum_i d_i - m c) / (n + m)`, `n += m` for a centre with m newly
    assigned points. Because the "mini-batch" is the full set and the counts
    accumulate over steps, each centre is the running mean of every
    assignment it received over all steps (its initial point weighing 1),
    i.e. Sculley's web-scale k-means with a decaying learning rate, NOT
    Lloyd's algorithm. Stored centres are unnormalised (contrib keeps them
    unnormalised when `mini_batch_steps_per_iteration == 1`).

  The contrib graph reads the old counts (`gather`) and increments them
  (`scatter_add`) with no control dependency between the two, so TF may
  read the already-incremented count and step by `1 / (n + 2m)` instead.
  Checked against TF 2.19's `tensorflow.python.ops.clustering_ops.KMeans`
  (contrib's module, moved into TF core) from identical initial centres: with
  the default thread pool most steps equal ours to float32 precision and
  some do not, varying run to run; with one inter-op thread every step takes
  `1 / (n + 2m)`. We implement the rule contrib's own comment states,
  deterministically.

  We compute in float64 (contrib in float32; the differences are rounding
  level per step). The fork seeds with `int(time.time())`; ours is a seed
  argument, so runs are reproducible. `update='lloyd'` gives plain spherical
  k-means (centre = normalised mean, stops when assignments no longer
  change) for comparison.

`euclidean`: upstream's `eval_mnist_model.py`: scikit-learn
  `KMeans(n_clusters=10, max_iter=1000)`, Euclidean, k-means++; we pass
  `n_init=10` (the default of the scikit-learn upstream used) and a fixed
  `random_state` explicitly.

Accuracies use the cluster -> label map fitted on the training features
(`scipy.optimize.linear_sum_assignment`, maximising matched examples), as the
fork's classifier does; `evaluate_kmeans` also reports upstream's own
protocol, which re-matches clusters to labels on the evaluated set itself
(`*_rematched`).
"""

import dataclasses
import json
import math
import os
import weakref
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

METRICS = ('cosine', 'euclidean')
FEATURE_KINDS = ('prior', 'posterior')
FORMAT_VERSION = 1
_L2_EPSILON = 1e-12  # tf.math.l2_normalize's default


# --- Features ---------------------------------------------------------------

_FEATURE_FNS = weakref.WeakKeyDictionary()


def _feature_fn(model):
  """A compiled forward pass (full=False, no noise) returning the features."""
  fn = _FEATURE_FNS.get(model)
  if fn is None:
    c = model.config
    spec = tf.TensorSpec([None, c.canvas_size, c.canvas_size, c.n_channels],
                         tf.float32)

    @tf.function(input_signature=[spec])
    def fn(images):
      out = model.forward(images, full=False, training=False)
      return dict(prior=out.caps_presence_prob,
                  posterior=out.posterior_presence,
                  prior_probe_pred=out.prior_cls_pred,
                  posterior_probe_pred=out.posterior_cls_pred)

    _FEATURE_FNS[model] = fn
  return fn


def _check_batch(images, config):
  images = np.asarray(images)
  want = (config.canvas_size, config.canvas_size, config.n_channels)
  if images.ndim != 4 or tuple(images.shape[1:]) != want:
    raise ValueError(f'Expected images of shape [N, {want[0]}, {want[1]}, '
                     f'{want[2]}] for config {config.name!r}, got '
                     f'{list(images.shape)}.')
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'Expected float images in [0, 1], got dtype '
                     f'{images.dtype}; preprocess them first '
                     '(scae_tf.data).')
  return images.astype(np.float32, copy=False)


def _batches(images, batch_size):
  """Yields (images, labels or None) from an array or an iterable."""
  if isinstance(images, (np.ndarray, tf.Tensor)):
    images = np.asarray(images)
    for start in range(0, len(images), batch_size):
      yield images[start:start + batch_size], None
    return
  for item in images:
    if isinstance(item, (tuple, list)):
      if len(item) != 2:
        raise ValueError('An iterable of batches must yield image arrays or '
                         f'(images, labels) pairs, got {len(item)} items.')
      yield np.asarray(item[0]), np.asarray(item[1])
    else:
      yield np.asarray(item), None


def collect_features(model, images, batch_size: int = 500,
                     progress: bool = False, desc: str = 'features',
                     total: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Runs the SCAE (compiled, full=False, no noise) and gathers its features.

  Args:
    model: a `scae_tf.model.SCAE` (weights loaded).
    images: float images in [0, 1], [N, H, W, C] (split into batches of
      `batch_size`), or an iterable of such batches or of (images, labels)
      pairs (then the labels are returned too).
    batch_size: batch size when `images` is an array.
    progress: show a tqdm progress bar (on stderr).
    desc: the progress bar's label.
    total: number of images, for the progress bar of an iterable.

  Returns:
    dict(prior=[N, K] float32, posterior=[N, K] float32,
    prior_probe_pred=[N] int64, posterior_probe_pred=[N] int64), plus
    labels=[N] int64 if the iterable yielded labels.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  fn = _feature_fn(model)
  if isinstance(images, (np.ndarray, tf.Tensor)):
    total = len(images)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True)
  keys = ('prior', 'posterior', 'prior_probe_pred', 'posterior_probe_pred')
  parts = {k: [] for k in keys}
  labels = []
  try:
    for batch, batch_labels in _batches(images, batch_size):
      batch = _check_batch(batch, model.config)
      out = fn(tf.constant(batch))
      for k in keys:
        parts[k].append(out[k].numpy())
      if batch_labels is not None:
        labels.append(batch_labels)
      if bar is not None:
        bar.update(len(batch))
  finally:
    if bar is not None:
      bar.close()
  if not parts['prior']:
    raise ValueError('No images to collect features from.')
  n_caps = model.config.n_obj_caps
  res = dict(
      prior=np.concatenate(parts['prior']).astype(np.float32),
      posterior=np.concatenate(parts['posterior']).astype(np.float32),
      prior_probe_pred=np.concatenate(parts['prior_probe_pred']).astype(
          np.int64),
      posterior_probe_pred=np.concatenate(
          parts['posterior_probe_pred']).astype(np.int64))
  assert res['prior'].shape[1] == n_caps, res['prior'].shape
  if labels:
    if len(labels) != len(parts['prior']):
      raise ValueError('Some batches came with labels and some without.')
    res['labels'] = np.concatenate(labels).astype(np.int64)
  return res


# --- k-means ----------------------------------------------------------------

def l2_normalize(x, epsilon=_L2_EPSILON):
  """Rows to unit length, as `tf.math.l2_normalize` (zero rows stay zero)."""
  x = np.asarray(x, np.float64)
  sq = np.sum(x * x, axis=-1, keepdims=True)
  return x / np.sqrt(np.maximum(sq, epsilon))


def _rng(seed_or_rng):
  if isinstance(seed_or_rng, np.random.Generator):
    return seed_or_rng
  return np.random.default_rng(seed_or_rng)


def _check_points(points, k):
  x = np.asarray(points, np.float64)
  if x.ndim != 2:
    raise ValueError(f'Expected features [N, D], got shape {list(x.shape)}.')
  if not np.all(np.isfinite(x)):
    raise ValueError('Features contain NaN or inf.')
  if not 0 < k <= len(x):
    raise ValueError(f'Need 0 < k <= number of points, got k={k} and '
                     f'{len(x)} points.')
  return x


def kmeans_plus_plus(points, k: int, seed=0, n_retries: int = 10
                     ) -> np.ndarray:
  """Greedy k-means++ seeding (the behaviour of TF's clustering kernel).

  Each of the k centres is the best of `1 + n_retries` candidates (a negative
  `n_retries` means 2 + floor(log k)); the first centre's candidates are drawn
  uniformly, later ones with probability proportional to the half squared
  Euclidean distance to the nearest chosen centre, never re-drawing a chosen
  point; the best candidate minimises the potential (the summed distances).

  Args:
    points: [N, D] (normalise them first for cosine k-means).
    k: number of centres.
    seed: int seed or a `np.random.Generator`.
    n_retries: extra candidates per centre.

  Returns:
    [k] int64 indices of the chosen points, in order of choice.
  """
  x = _check_points(points, k)
  rng = _rng(seed)
  n = len(x)
  if n_retries < 0:
    n_retries = 2 + int(math.log(k))
  half_sq = 0.5 * np.einsum('ij,ij->i', x, x)

  def half_sq_dist(idx):  # [N, len(idx)]
    return half_sq[:, None] - x @ x[idx].T + half_sq[idx][None, :]

  chosen = []
  chosen_set = set()
  min_dist = np.full(n, np.inf)
  cumsum = None

  def draw():
    while True:
      if not chosen:
        return int(rng.integers(n))
      total = cumsum[-1]
      if not total > 0.0:
        index = int(rng.integers(n))
      else:
        index = int(np.searchsorted(cumsum, rng.random() * total,
                                    side='right'))
        index = min(index, n - 1)
      if index not in chosen_set:
        return index

  for _ in range(k):
    if chosen:
      cumsum = np.cumsum(min_dist)
    candidates = [draw() for _ in range(1 + n_retries)]
    new_min = np.minimum(min_dist[:, None], half_sq_dist(candidates))
    best = int(np.argmin(new_min.sum(0)))  # first of equal potentials
    chosen.append(candidates[best])
    chosen_set.add(candidates[best])
    min_dist = new_min[:, best]
  return np.asarray(chosen, np.int64)


def _segment_sums(x, assign, k):
  """Per-cluster sums of the rows of x [k, D] and cluster sizes [k]."""
  sums = np.stack([np.bincount(assign, weights=x[:, d], minlength=k)
                   for d in range(x.shape[1])], axis=1)
  return sums, np.bincount(assign, minlength=k).astype(np.float64)


def cosine_assign(points, centers) -> np.ndarray:
  """Index of the centre of largest cosine similarity (first on ties)."""
  sims = l2_normalize(points) @ l2_normalize(centers).T
  return np.argmax(sims, axis=1).astype(np.int64)


def euclidean_assign(points, centers) -> np.ndarray:
  """Index of the nearest centre in Euclidean distance (first on ties)."""
  x = np.asarray(points, np.float64)
  c = np.asarray(centers, np.float64)
  scores = 2. * x @ c.T - np.sum(c * c, axis=1)[None, :]
  return np.argmax(scores, axis=1).astype(np.int64)


def fit_cosine_kmeans(features, k: int = 10, n_iter: int = 1000, seed=0,
                      n_retries: int = 10, update: str = 'minibatch'):
  """The fork's cosine k-means (see the module docstring).

  Args:
    features: [N, D] training features.
    k: number of clusters.
    n_iter: training steps, each over all points (the fork: 1000).
    seed: int seed or `np.random.Generator` (k-means++).
    n_retries: k-means++ extra candidates per centre (the fork: 10).
    update: 'minibatch' (the fork's contrib update, default) or 'lloyd'
      (spherical k-means; stops early once assignments are stable).

  Returns:
    (centers [k, D] float64 unit rows, info dict: init_indices, counts,
    raw_centers, n_steps, final assignment).
  """
  if update not in ('minibatch', 'lloyd'):
    raise ValueError(f"update must be 'minibatch' or 'lloyd', got {update!r}.")
  if n_iter < 0:
    raise ValueError(f'n_iter must be >= 0, got {n_iter}.')
  x = l2_normalize(_check_points(features, k))
  init = kmeans_plus_plus(x, k, seed, n_retries)
  centers = x[init].copy()
  counts = np.ones(k, np.float64)  # contrib's mini-batch counts start at 1
  def nearest(centers):  # x is already normalised
    return np.argmax(x @ l2_normalize(centers).T, axis=1).astype(np.int64)

  assign = nearest(centers)
  steps = 0
  for _ in range(n_iter):
    sums, sizes = _segment_sums(x, assign, k)
    hit = sizes > 0
    if update == 'minibatch':
      counts = counts + sizes
      centers[hit] += ((sums[hit] - sizes[hit, None] * centers[hit])
                       / counts[hit, None])
    else:
      centers[hit] = l2_normalize(sums[hit])
    steps += 1
    new_assign = nearest(centers)
    if update == 'lloyd' and np.array_equal(new_assign, assign):
      assign = new_assign
      break
    assign = new_assign
  info = dict(init_indices=init, counts=counts, raw_centers=centers.copy(),
              n_steps=steps, assignment=assign)
  return l2_normalize(centers), info


def fit_euclidean_kmeans(features, k: int = 10, n_iter: int = 1000, seed=0,
                         n_init: int = 10):
  """Upstream's evaluation k-means: scikit-learn, Euclidean, k-means++.

  Returns (centers [k, D] float64, info dict: n_steps, inertia, assignment).
  """
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top
  x = _check_points(features, k)
  if isinstance(seed, np.random.Generator):
    seed = int(seed.integers(2 ** 31 - 1))
  km = KMeans(n_clusters=k, max_iter=n_iter, n_init=n_init,
              init='k-means++', algorithm='lloyd', random_state=seed).fit(x)
  centers = np.asarray(km.cluster_centers_, np.float64)
  return centers, dict(n_steps=int(km.n_iter_), inertia=float(km.inertia_),
                       assignment=euclidean_assign(x, centers))


# --- Cluster -> label matching ----------------------------------------------

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


# --- The classifier -----------------------------------------------------------

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

  def tf_label_scores(self, features):
    """[B, n_classes] per-label score: the best score among the label's
    clusters (the dtype's lowest value for a label no cluster maps to).
    Its argmax equals `tf_predict` up to ties; a differentiable attack
    target."""
    scores = self.tf_cluster_scores(features)
    per_label = tf.math.unsorted_segment_max(
        tf.transpose(scores), tf.constant(self.cluster_to_label, tf.int64),
        self.n_classes)
    return tf.transpose(per_label)

  # Persistence (.npz or .json; never pickle).

  def save(self, path: str) -> str:
    """Writes the classifier to `path` (.json -> JSON, else .npz)."""
    meta = json.dumps(_jsonable(self.metadata), sort_keys=True)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + '.tmp'
    if path.endswith('.json'):
      blob = dict(format_version=FORMAT_VERSION, metric=self.metric,
                  feature=self.feature, centers=self.centers.tolist(),
                  cluster_to_label=self.cluster_to_label.tolist(),
                  metadata=json.loads(meta))
      with open(tmp, 'w') as f:
        json.dump(blob, f, indent=1)
    else:
      with open(tmp, 'wb') as f:
        np.savez(f, format_version=np.int64(FORMAT_VERSION),
                 metric=np.str_(self.metric), feature=np.str_(self.feature),
                 centers=self.centers, cluster_to_label=self.cluster_to_label,
                 metadata=np.str_(meta))
    os.replace(tmp, path)
    return path

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
                          checkpoint: Optional[str] = None
                          ) -> KMeansClassifier:
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
    centers, info = fit_cosine_kmeans(x, k, n_iter, seed, n_retries, update)
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


# --- Evaluation ----------------------------------------------------------------

def evaluate_kmeans(train_features: Dict[str, np.ndarray], train_labels,
                    test_features: Dict[str, np.ndarray], test_labels,
                    metrics: Sequence[str] = ('cosine',),
                    kinds: Sequence[str] = FEATURE_KINDS, k: int = 10,
                    n_iter: int = 1000, seed: int = 0,
                    n_classes: Optional[int] = None, n_init: int = 10,
                    n_retries: int = 10, checkpoint: Optional[str] = None,
                    log=None):
  """Fits k-means on the train features, scores train, test and train+test.

  Args:
    train_features, test_features: `collect_features` dicts.
    train_labels, test_labels: [N] int labels.
    metrics: k-means variants to run ('cosine', 'euclidean').
    kinds: feature kinds ('prior', 'posterior').
    log: optional callable(str) for progress messages.

  Returns:
    (results, classifiers): results is a JSON-able dict
      {n_train, n_test, linear_probe: {kind: {train, test}},
       kmeans: {metric: {kind: {train, test, train+test, test_rematched,
                                train+test_rematched}}}}
    with the cluster -> label map fitted on train for train / test /
    train+test, re-fitted on the evaluated set for *_rematched (upstream's
    protocol); classifiers maps (kind, metric) -> KMeansClassifier.
  """
  train_labels = np.asarray(train_labels, np.int64).reshape(-1)
  test_labels = np.asarray(test_labels, np.int64).reshape(-1)
  if n_classes is None:
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
  all_labels = np.concatenate([train_labels, test_labels])
  results = dict(n_train=int(len(train_labels)), n_test=int(len(test_labels)),
                 linear_probe={}, kmeans={})
  for kind in kinds:
    probe = {}
    for split, feats, labels in (('train', train_features, train_labels),
                                 ('test', test_features, test_labels)):
      key = f'{kind}_probe_pred'
      if key in feats:
        probe[split] = float(np.mean(np.asarray(feats[key]) == labels))
    if probe:
      results['linear_probe'][kind] = probe
  classifiers = {}
  for metric in metrics:
    results['kmeans'][metric] = {}
    for kind in kinds:
      if log is not None:
        log(f'k-means ({metric}) on {kind} features...')
      clf = fit_kmeans_classifier(
          train_features[kind], train_labels, metric=metric, feature=kind,
          k=k, n_iter=n_iter, seed=seed, n_classes=n_classes, n_init=n_init,
          n_retries=n_retries, checkpoint=checkpoint)
      test_x = np.asarray(test_features[kind])
      all_x = np.concatenate([np.asarray(train_features[kind]), test_x])
      all_clusters = clf.assign(all_x)
      n_train = len(train_labels)
      res = dict(
          train=clf.metadata['train_accuracy'],
          test=clf.accuracy(test_x, test_labels),
          **{'train+test': clf.accuracy(all_x, all_labels)},
          test_rematched=rematched_accuracy(all_clusters[n_train:],
                                            test_labels, k, n_classes),
          **{'train+test_rematched': rematched_accuracy(
              all_clusters, all_labels, k, n_classes)})
      clf.metadata['test_accuracy'] = res['test']
      clf.metadata['train+test_accuracy'] = res['train+test']
      results['kmeans'][metric][kind] = res
      classifiers[(kind, metric)] = clf
  return results, classifiers


def seed_spread(train_features: Dict[str, np.ndarray], train_labels,
                test_features: Dict[str, np.ndarray], test_labels,
                seeds: Sequence[int], metrics: Sequence[str] = ('cosine',),
                kinds: Sequence[str] = FEATURE_KINDS, log=None,
                **fit_kwargs):
  """Test accuracy of k-means refitted with each seed (map fitted on train).

  One k-means++ fit can merge two classes (the fork fits once, so a single
  number may be unlucky); this shows how far the seed moves the result.
  Each fit's mean distance on the train features (`mean_distance`) is kept
  too: the fit with the smallest one is what restarting k-means and keeping
  the best objective would give, without looking at labels.

  Returns {metric: {kind: {'per_seed': {seed: acc}, 'min', 'mean', 'max',
  'train_distance': {seed: mean distance}, 'best_by_distance': {'seed',
  'test'}}}}.
  """
  test_labels = np.asarray(test_labels, np.int64).reshape(-1)
  spread = {}
  for metric in metrics:
    spread[metric] = {}
    for kind in kinds:
      per_seed, distance = {}, {}
      for seed in seeds:
        if log is not None:
          log(f'k-means ({metric}) on {kind} features, seed {seed}...')
        clf = fit_kmeans_classifier(train_features[kind], train_labels,
                                    metric=metric, feature=kind, seed=seed,
                                    **fit_kwargs)
        per_seed[int(seed)] = clf.accuracy(test_features[kind], test_labels)
        distance[int(seed)] = clf.mean_distance(train_features[kind])
      accs = list(per_seed.values())
      best = min(distance, key=distance.get)  # first seed among ties
      spread[metric][kind] = dict(
          per_seed=per_seed, min=min(accs), mean=float(np.mean(accs)),
          max=max(accs), train_distance=distance,
          best_by_distance=dict(seed=best, test=per_seed[best]))
  return spread


def format_results(results) -> str:
  """A readable table of `evaluate_kmeans` results."""
  lines = [f"examples: train={results['n_train']} test={results['n_test']}",
           '',
           f"{'classifier':<30}{'train':>9}{'test':>9}{'train+test':>12}"
           f"{'test*':>9}"]
  lines.append('-' * len(lines[-1]))
  for metric, per_kind in results['kmeans'].items():
    for kind, r in per_kind.items():
      lines.append(f"{f'k-means {metric} / {kind}':<30}{r['train']:>9.4f}"
                   f"{r['test']:>9.4f}{r['train+test']:>12.4f}"
                   f"{r['test_rematched']:>9.4f}")
  for kind, r in results['linear_probe'].items():
    train = f"{r['train']:>9.4f}" if 'train' in r else f"{'-':>9}"
    test = f"{r['test']:>9.4f}" if 'test' in r else f"{'-':>9}"
    lines.append(f"{f'linear probe / {kind}':<30}{train}{test}{'-':>12}"
                 f"{'-':>9}")
  lines.append('')
  lines.append('k-means: cluster -> label map fitted on train; test* '
               're-matches clusters to labels on the test set itself '
               "(upstream's eval protocol).")
  return '\n'.join(lines)
