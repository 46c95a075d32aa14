"""The two k-means variants that cluster the features.

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
"""

import math

import numpy as np

METRICS = ('cosine', 'euclidean')
_L2_EPSILON = 1e-12  # tf.math.l2_normalize's default


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
                      n_retries: int = 10, update: str = 'minibatch',
                      progress: bool = False, desc: str = 'k-means'):
  """The fork's cosine k-means (see the module docstring).

  Args:
    features: [N, D] training features.
    k: number of clusters.
    n_iter: training steps, each over all points (the fork: 1000).
    seed: int seed or `np.random.Generator` (k-means++).
    n_retries: k-means++ extra candidates per centre (the fork: 10).
    update: 'minibatch' (the fork's contrib update, default) or 'lloyd'
      (spherical k-means; stops early once assignments are stable).
    progress: a progress bar of the steps on stderr, labelled `desc`.

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

  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  assign = nearest(centers)
  steps = 0
  with tqdm(total=n_iter, desc=desc, unit='step', disable=not progress,
            dynamic_ncols=True) as bar:
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
      bar.update()
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
