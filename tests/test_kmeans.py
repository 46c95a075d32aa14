"""k-means classifiers on capsule presences (scae_tf/kmeans/)."""

import dataclasses
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import kmeans
from scae_tf.kmeans import KMeansClassifier
from scae_tf.kmeans import report
from scae_tf.capsules.model import SCAE

N_PER_BLOB = 60


def blobs(n_blobs=5, dim=7, noise=0.03, seed=0, label_perm=None):
  """Well-separated non-negative blobs (presence-like), blob i -> label
  label_perm[i]; rows shuffled."""
  rng = np.random.default_rng(seed)
  centres = 0.05 + 0.9 * np.eye(dim)[:n_blobs]
  blob = np.repeat(np.arange(n_blobs), N_PER_BLOB)
  x = centres[blob] + noise * rng.standard_normal((len(blob), dim))
  perm = np.arange(n_blobs) if label_perm is None else np.asarray(label_perm)
  labels = perm[blob]
  order = rng.permutation(len(blob))
  return x[order].astype(np.float32), labels[order]


@pytest.mark.parametrize('metric', ['cosine', 'euclidean'])
@pytest.mark.parametrize('label_perm', [None, [3, 0, 4, 1, 2]])
def test_recovers_blobs(metric, label_perm):
  x, y = blobs(label_perm=label_perm)
  clf = kmeans.fit_kmeans_classifier(x, y, metric=metric, k=5, seed=1)
  assert clf.metadata['train_accuracy'] == 1.0
  x_test, y_test = blobs(label_perm=label_perm, seed=7)
  np.testing.assert_array_equal(clf.predict(x_test), y_test)
  # The map is a permutation that sends each blob's cluster to its label.
  assert sorted(clf.cluster_to_label.tolist()) == list(range(5))


def test_hungarian_mapping_hand_made():
  # Greedy (per-cluster majority) would send clusters 0 and 1 both to label
  # 1 (40 + 35 = 75 matched); the best one-to-one map is 0->1, 1->0, 2->2
  # (40 + 30 + 10 = 80).
  c = np.array([[5, 40, 0],
                [30, 35, 0],
                [0, 0, 10]])
  np.testing.assert_array_equal(kmeans.hungarian_mapping(c), [1, 0, 2])
  # Rebuild that contingency from cluster ids and labels.
  clusters, labels = [], []
  for i in range(3):
    for j in range(3):
      clusters += [i] * c[i, j]
      labels += [j] * c[i, j]
  np.testing.assert_array_equal(
      kmeans.contingency_matrix(clusters, labels, 3, 3), c)
  assert kmeans.rematched_accuracy(clusters, labels, 3, 3) == pytest.approx(
      80 / c.sum())
  # More clusters than labels: the unmatched cluster takes its majority.
  c4 = np.array([[9, 0], [0, 9], [1, 5]])
  np.testing.assert_array_equal(kmeans.hungarian_mapping(c4), [0, 1, 1])
  with pytest.raises(ValueError):
    kmeans.contingency_matrix([0, 3], [0, 1], 3, 2)


def directional_data(seed=0):
  """Three direction groups with radii spread over two decades."""
  rng = np.random.default_rng(seed)
  dirs = kmeans.l2_normalize(np.array([[1., .1, .1], [.1, 1., .1],
                                       [.1, .1, 1.]]))
  group = np.repeat(np.arange(3), 50)
  radius = np.exp(rng.uniform(np.log(0.1), np.log(10.), len(group)))
  x = dirs[group] * radius[:, None] + 0.01 * rng.standard_normal((150, 3))
  return np.abs(x), group


def test_cosine_is_scale_invariant_euclidean_is_not():
  x, y = directional_data()
  scale = np.exp(np.random.default_rng(3).uniform(-2, 2, len(x)))[:, None]
  c1, info1 = kmeans.fit_cosine_kmeans(x, k=3, n_iter=100, seed=0)
  c2, info2 = kmeans.fit_cosine_kmeans(x * scale, k=3, n_iter=100, seed=0)
  np.testing.assert_array_equal(info1['init_indices'], info2['init_indices'])
  np.testing.assert_array_equal(info1['assignment'], info2['assignment'])
  np.testing.assert_allclose(c1, c2, atol=1e-10)
  cos = kmeans.fit_kmeans_classifier(x, y, 'cosine', k=3, n_iter=100)
  euc = kmeans.fit_kmeans_classifier(x, y, 'euclidean', k=3, n_iter=100)
  assert cos.metadata['train_accuracy'] == 1.0
  assert euc.metadata['train_accuracy'] < 0.9  # splits by radius instead
  np.testing.assert_array_equal(cos.predict(x * scale), cos.predict(x))
  assert np.any(euc.predict(x * scale) != euc.predict(x))
  # The same point scaled crosses a Euclidean boundary but not a cosine one.
  e = KMeansClassifier(np.array([[1., 1.], [4., 4.]]), 'euclidean', 'prior',
                       [0, 1])
  c = KMeansClassifier(np.array([[1., 0.2], [0.2, 1.]]), 'cosine', 'prior',
                       [0, 1])
  p = np.array([[1., 1.2]])
  assert e.predict(p)[0] == 0 and e.predict(4 * p)[0] == 1
  assert c.predict(p)[0] == c.predict(4 * p)[0] == 1


def test_kmeans_plus_plus_deterministic():
  x, _ = blobs(n_blobs=5, seed=2)
  xn = kmeans.l2_normalize(x)
  a = kmeans.kmeans_plus_plus(xn, 5, seed=11)
  b = kmeans.kmeans_plus_plus(xn, 5, seed=11)
  np.testing.assert_array_equal(a, b)
  assert len(set(a.tolist())) == 5
  # Greedy k-means++ with retries puts one seed in each separated blob.
  _, y = blobs(n_blobs=5, seed=2)
  assert sorted(y[a].tolist()) == list(range(5))
  seeds = {tuple(kmeans.kmeans_plus_plus(xn, 5, seed=s)) for s in range(5)}
  assert len(seeds) > 1  # the seed matters
  c1, i1 = kmeans.fit_cosine_kmeans(x, 5, n_iter=20, seed=4)
  c2, i2 = kmeans.fit_cosine_kmeans(x, 5, n_iter=20, seed=4)
  np.testing.assert_array_equal(c1, c2)
  np.testing.assert_array_equal(i1['assignment'], i2['assignment'])
  e1 = kmeans.fit_kmeans_classifier(x, np.zeros(len(x), int), 'euclidean',
                                    k=5, seed=4)
  e2 = kmeans.fit_kmeans_classifier(x, np.zeros(len(x), int), 'euclidean',
                                    k=5, seed=4)
  np.testing.assert_array_equal(e1.centers, e2.centers)


def test_minibatch_update_rule():
  """One step: c += (sum d - m c) / (1 + m), counts start at 1 (contrib)."""
  x, _ = blobs(n_blobs=3, seed=5)
  _, info0 = kmeans.fit_cosine_kmeans(x, 3, n_iter=0, seed=0)
  _, info1 = kmeans.fit_cosine_kmeans(x, 3, n_iter=1, seed=0)
  xn = kmeans.l2_normalize(x)
  c0 = xn[info0['init_indices']]
  a = kmeans.cosine_assign(xn, c0)
  m = np.bincount(a, minlength=3).astype(float)
  s = np.stack([xn[a == j].sum(0) for j in range(3)])
  np.testing.assert_allclose(info1['raw_centers'],
                             c0 + (s - m[:, None] * c0) / (1 + m)[:, None])
  np.testing.assert_array_equal(info1['counts'], 1 + m)


def overlapping_groups(seed=0):
  """Four presence-like groups whose spreads differ tenfold: they overlap,
  and the tighter a group, the longer its (unnormalised) mean."""
  rng = np.random.default_rng(seed)
  base = 0.1 + 0.8 * np.eye(6)[:4] + 0.3 * np.eye(6)[1:5]
  spread = np.array([0.05, 0.2, 0.35, 0.5])
  group = np.repeat(np.arange(4), 40)
  noise = spread[group, None] * rng.standard_normal((len(group), 6))
  return np.abs(base[group] + noise), group


def reference_minibatch_steps(x, init, n_steps):
  """The fork's k-means, transcribed from TF-contrib's clustering_ops:
  unit-normalised points, one mini-batch step per iteration on ALL points;
  a point goes to the centre of largest cosine similarity with the
  NORMALISED centre; per-centre counts start at 1 and accumulate over all
  steps; a centre with m new points moves by (sum of them - m c) / count.
  Returns the raw centres, the counts and the assignment after each step."""
  x = np.array(x, np.float64)
  x /= np.sqrt(np.maximum(np.sum(x * x, 1, keepdims=True), 1e-12))
  centres = x[np.asarray(init)].copy()
  counts = np.ones(len(centres))

  def nearest(centres):
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return np.argmax(x @ unit.T, axis=1)

  history = [nearest(centres)]
  for _ in range(n_steps):
    for j in range(len(centres)):
      members = x[history[-1] == j]
      if len(members):
        counts[j] += len(members)
        centres[j] += (members.sum(0) - len(members) * centres[j]) / counts[j]
    history.append(nearest(centres))
  return centres, counts, history


def test_minibatch_steps_match_a_transcription_of_contrib():
  """25 steps on overlapping groups, against the transcription above. The
  data make both rules matter: points still change cluster after the first
  step (so the accumulated counts weigh the steps), and the centres'
  lengths differ (so normalising them moves points)."""
  x, _ = overlapping_groups()
  for seed in (0, 1):
    centers, info = kmeans.fit_cosine_kmeans(x, 4, n_iter=25, seed=seed)
    raw, counts, history = reference_minibatch_steps(
        x, info['init_indices'], 25)
    np.testing.assert_allclose(info['raw_centers'], raw, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(info['counts'], counts)
    np.testing.assert_array_equal(info['assignment'], history[-1])
    np.testing.assert_allclose(centers, raw / np.linalg.norm(
        raw, axis=1, keepdims=True), rtol=0, atol=1e-12)
    assert info['n_steps'] == 25
    changed = [int(np.sum(a != b)) for a, b in zip(history, history[1:])]
    assert sum(changed[1:]) > 0, changed
    lengths = np.linalg.norm(raw, axis=1)
    assert lengths.min() < 0.97 * lengths.max(), lengths
    # Counts: 1 + every assignment received over the 25 steps.
    np.testing.assert_array_equal(
        counts, 1 + sum(np.bincount(a, minlength=4) for a in history[:-1]))


class ScriptedDraws(np.random.Generator):
  """A Generator whose `integers` and `random` return scripted values."""

  def __init__(self, integers, reals):
    super().__init__(np.random.PCG64(0))
    self._integers, self._reals = list(integers), list(reals)

  def integers(self, *args, **kwargs):
    del args, kwargs
    return self._integers.pop(0)

  def random(self, *args, **kwargs):
    del args, kwargs
    return self._reals.pop(0)


def test_kmeans_plus_plus_keeps_the_better_candidate_by_hand():
  """Unit vectors at 0, 0, 60, 90 and 180 degrees; k = 2, two candidates
  per centre (n_retries=1). On unit vectors the half squared distance is the
  cosine distance 1 - cos: 0-60: .5, 0-90: 1, 0-180: 2, 60-90: 1 - sqrt(3)/2
  (= .134), 60-180: 1.5, 90-180: 1."""
  deg = np.radians([0., 0., 60., 90., 180.])
  x = np.stack([np.cos(deg), np.sin(deg)], 1)
  # First centre, candidates drawn uniformly: points 4 (180) and 1 (0).
  # Potentials: 2 + 2 + 1.5 + 1 + 0 = 6.5 and 0 + 0 + .5 + 1 + 2 = 3.5:
  # point 1 is kept. Second centre: distances to point 1 are
  # (0, 0, .5, 1, 2), cumulated (0, 0, .5, 1.5, 3.5): the draws .1 and .8
  # land at .35 -> point 2 (60) and 2.8 -> point 4 (180). Potentials with
  # point 2: 0 + 0 + 0 + .134 + 1.5 = 1.634; with point 4: .5 + 1 + 0 = 1.5:
  # point 4 is kept.
  draws = ScriptedDraws([4, 1], [.1, .8])
  np.testing.assert_array_equal(
      kmeans.kmeans_plus_plus(x, 2, seed=draws, n_retries=1), [1, 4])
  # With the candidates in the other order the choice is the same.
  draws = ScriptedDraws([1, 4], [.8, .1])
  np.testing.assert_array_equal(
      kmeans.kmeans_plus_plus(x, 2, seed=draws, n_retries=1), [1, 4])
  # One candidate per centre (n_retries=0) keeps whatever is drawn: point 4,
  # then distances (2, 2, 1.5, 1, 0), cumulated (2, 4, 5.5, 6.5, 6.5), and
  # the draw lands at 5 -> point 2.
  draws = ScriptedDraws([4], [5 / 6.5])
  np.testing.assert_array_equal(
      kmeans.kmeans_plus_plus(x, 2, seed=draws, n_retries=0), [4, 2])
  # fit_cosine_kmeans seeds with the same procedure.
  _, info = kmeans.fit_cosine_kmeans(x, 2, n_iter=0, n_retries=1,
                                     seed=ScriptedDraws([4, 1], [.1, .8]))
  np.testing.assert_array_equal(info['init_indices'], [1, 4])


def test_kmeans_plus_plus_draws_by_hand():
  """How many candidates are drawn, and from which distribution."""
  deg = np.radians([0., 0., 60., 90., 180.])
  x = np.stack([np.cos(deg), np.sin(deg)], 1)
  # Default: 1 + 10 candidates per centre (the fork's
  # kmeans_plus_plus_num_retries=10), the best kept: point 1 (potential
  # 3.5) among points 4 and 1 (3.5 is the smallest of all five points').
  draws = ScriptedDraws([4] * 10 + [1], [])
  np.testing.assert_array_equal(kmeans.kmeans_plus_plus(x, 1, seed=draws),
                                [1])
  assert not draws._integers
  # n_retries < 0: 2 + floor(log k) retries, 3 candidates for k = 1; point 3
  # (90 degrees) has potential 1 + 1 + .134 + 0 + 1 = 3.134 < 3.5.
  draws = ScriptedDraws([4, 1, 3], [])
  np.testing.assert_array_equal(
      kmeans.kmeans_plus_plus(x, 1, seed=draws, n_retries=-1), [3])
  assert not draws._integers
  # Close directions (potential .06 + .13 < 1 after the first centre): still
  # drawn by distance, not uniformly. Distances to point 0: (0, 0, 1 -
  # cos 20, 1 - cos 30) = (0, 0, .060, .134), cumulated total .194; the
  # draw .5 lands at .097 -> point 3.
  deg = np.radians([0., 0., 20., 30.])
  close = np.stack([np.cos(deg), np.sin(deg)], 1)
  draws = ScriptedDraws([0], [.5])
  np.testing.assert_array_equal(
      kmeans.kmeans_plus_plus(close, 2, seed=draws, n_retries=0), [0, 3])
  # All points at a chosen centre (total 0): uniform draws, and a chosen
  # point drawn again is rejected.
  same = np.ones((3, 2))
  draws = ScriptedDraws([0, 0, 2], [])
  np.testing.assert_array_equal(
      kmeans.kmeans_plus_plus(same, 2, seed=draws, n_retries=0), [0, 2])
  assert not draws._integers


def test_lloyd_update_is_spherical_kmeans():
  """update='lloyd': each centre is the normalised mean of its points, and
  the fit stops once the assignment no longer changes."""
  x, _ = overlapping_groups()
  centers, info = kmeans.fit_cosine_kmeans(x, 4, n_iter=100, seed=0,
                                           update='lloyd')
  assert 1 < info['n_steps'] < 100
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  assign = info['assignment']
  np.testing.assert_array_equal(assign, kmeans.cosine_assign(x, centers))
  for j in range(4):
    mean = xn[assign == j].sum(0)
    np.testing.assert_allclose(centers[j], mean / np.linalg.norm(mean),
                               rtol=0, atol=1e-12)
  _, info_mb = kmeans.fit_cosine_kmeans(x, 4, n_iter=100, seed=0)
  assert info_mb['n_steps'] == 100


def test_one_step_matches_tf_clustering_ops():
  """Against TF's own (contrib) KMeans: mini-batch, steps_per_iteration=1,
  cosine, given initial centres. Its graph reads the counts with no control
  dependency on their increment, so TF takes 1/(n+m) (the intended rule,
  ours) or 1/(n+2m); with one inter-op thread it is deterministic."""
  co = pytest.importorskip('tensorflow.python.ops.clustering_ops')
  x, _ = blobs(n_blobs=4, seed=6)
  x = x + 0.02  # keep every direction well defined
  _, info = kmeans.fit_cosine_kmeans(x, 4, n_iter=1, seed=0)
  xn = kmeans.l2_normalize(x)
  c0 = xn[info['init_indices']].astype(np.float32)
  with tf.Graph().as_default():
    inp = tf.compat.v1.placeholder(tf.float32, [None, x.shape[1]])
    model = co.KMeans(inputs=inp, num_clusters=4, initial_clusters=c0,
                      distance_metric=co.COSINE_DISTANCE, use_mini_batch=True,
                      mini_batch_steps_per_iteration=1)
    out = model.training_graph()
    init_op, train_op = out[4], out[5]
    centres_var = [v for v in tf.compat.v1.global_variables()
                   if v.name.endswith('clusters:0')][0]
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1,
                                      intra_op_parallelism_threads=1)
    with tf.compat.v1.Session(config=config) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(init_op, {inp: x})
      sess.run(train_op, {inp: x})
      tf_centres = sess.run(centres_var)
  a = kmeans.cosine_assign(xn, c0)
  m = np.bincount(a, minlength=4).astype(float)[:, None]
  s = info['raw_centers'] * (1 + m) - c0  # = sum of the assigned points
  racy = c0 + (s - m * c0) / (1 + 2 * m)
  ok_ours = np.allclose(tf_centres, info['raw_centers'], atol=1e-5)
  ok_racy = np.allclose(tf_centres, racy, atol=1e-5)
  assert ok_ours or ok_racy, np.abs(tf_centres - info['raw_centers']).max()


@pytest.mark.parametrize('metric', ['cosine', 'euclidean'])
def test_tf_predict_equals_predict(metric):
  x, y = blobs(label_perm=[2, 4, 0, 1, 3])
  clf = kmeans.fit_kmeans_classifier(x, y, metric=metric, k=5, n_iter=50)
  probe = np.random.default_rng(0).random((200, x.shape[1])).astype(
      np.float32)
  probe = np.concatenate([probe, x])
  np.testing.assert_array_equal(clf.tf_predict(probe).numpy(),
                                clf.predict(probe))

  @tf.function(input_signature=[tf.TensorSpec([None, x.shape[1]],
                                               tf.float32)])
  def in_graph(f):
    return clf.tf_predict(f)

  pred = in_graph(tf.constant(probe))
  np.testing.assert_array_equal(pred.numpy(), clf.predict(probe))


@pytest.mark.parametrize('suffix', ['.npz', '.json'])
def test_save_load_round_trip(tmp_path, suffix):
  x, y = blobs(label_perm=[1, 0, 2, 4, 3])
  clf = kmeans.fit_kmeans_classifier(x, y, metric='cosine',
                                     feature='posterior', k=5, n_iter=30,
                                     seed=9, checkpoint='/some/ckpt-3')
  path = str(tmp_path / ('clf' + suffix))
  assert clf.save(path) == path
  if suffix == '.npz':
    with np.load(path, allow_pickle=False) as z:  # no object arrays inside
      assert set(z.files) >= {'centers', 'cluster_to_label', 'metadata'}
  else:
    with open(path) as f:
      json.load(f)
  back = KMeansClassifier.load(path)
  np.testing.assert_array_equal(back.centers, clf.centers)
  np.testing.assert_array_equal(back.cluster_to_label, clf.cluster_to_label)
  assert (back.metric, back.feature) == ('cosine', 'posterior')
  assert back.metadata == clf.metadata
  for key in ('metric', 'k', 'n_iter', 'seed', 'checkpoint',
              'train_accuracy'):
    assert key in back.metadata or key == 'metric'
  assert back.metadata['checkpoint'] == '/some/ckpt-3'
  np.testing.assert_array_equal(back.predict(x), clf.predict(x))
  assert back.predict({'posterior': x, 'prior': x[:, ::-1]}).tolist() == \
      clf.predict(x).tolist()


def test_cosine_fit_shows_its_steps_on_request(capsys):
  x, y = blobs()
  quiet = kmeans.fit_kmeans_classifier(x, y, k=5, n_iter=7, feature='prior')
  assert capsys.readouterr().err == ''
  shown = kmeans.fit_kmeans_classifier(x, y, k=5, n_iter=7, feature='prior',
                                       progress=True)
  bar = capsys.readouterr().err
  assert 'k-means prior: 100%' in bar and '7/7' in bar
  np.testing.assert_array_equal(shown.centers, quiet.centers)
  kmeans.evaluate_kmeans(dict(prior=x, posterior=x), y, dict(prior=x,
                                                             posterior=x),
                         y, k=5, n_iter=3, progress=True)
  bars = capsys.readouterr().err
  assert 'k-means prior: 100%' in bars and 'k-means posterior: 100%' in bars


def test_evaluate_kmeans_report():
  x, y = blobs(label_perm=[4, 3, 2, 1, 0])
  xt, yt = blobs(label_perm=[4, 3, 2, 1, 0], seed=3)
  train = dict(prior=x, posterior=x[:, ::-1].copy(), prior_probe_pred=y,
               posterior_probe_pred=np.zeros_like(y))
  test = dict(prior=xt, posterior=xt[:, ::-1].copy(), prior_probe_pred=yt,
              posterior_probe_pred=yt)
  results, clfs = kmeans.evaluate_kmeans(
      train, y, test, yt, metrics=('cosine', 'euclidean'), k=5, n_iter=50,
      n_init=3)
  assert set(clfs) == {(k, m) for k in ('prior', 'posterior')
                       for m in ('cosine', 'euclidean')}
  for metric in ('cosine', 'euclidean'):
    for kind in ('prior', 'posterior'):
      r = results['kmeans'][metric][kind]
      for key in ('train', 'test', 'train+test', 'test_rematched'):
        assert r[key] == 1.0, (metric, kind, key)
  assert results['linear_probe']['prior'] == dict(train=1.0, test=1.0)
  assert results['linear_probe']['posterior']['train'] == pytest.approx(0.2)
  json.dumps(results)
  assert 'k-means cosine / prior' in kmeans.format_results(results)


def test_seed_spread_refits_per_seed(monkeypatch):
  """The spread's numbers from hand-made fits, one per seed: the expected
  accuracies and distances are worked out below, not by the library."""
  r2 = 1. / np.sqrt(1.04)  # cosine between (1, 0) and (1, .2)
  fits = {  # seed -> (centres, cluster -> label)
      0: ([[1., 0.], [0., 1.]], [0, 1]),
      3: ([[1., .2], [.2, 1.]], [1, 0]),   # the right clusters, labels swapped
      4: ([[1., 0.], [1., .1]], [0, 1])}   # both centres near the x axis
  calls = []

  def fake_fit(features, labels, metric, feature, seed, **kwargs):
    calls.append((seed, metric, feature, kwargs, len(features), len(labels)))
    centres, mapping = fits[seed]
    return KMeansClassifier(np.array(centres), metric, feature, mapping)

  monkeypatch.setattr(report, 'fit_kmeans_classifier', fake_fit)
  messages = []
  train_x = np.array([[1., 0.], [0., 1.], [1., .2], [.2, 1.], [1., .2]])
  test_x = np.array([[1., 0.], [0., 1.], [1., .2], [.2, 1.]])
  test_y = np.array([0, 1, 0, 1])
  spread = kmeans.seed_spread(dict(posterior=train_x), np.zeros(5, int),
                              dict(posterior=test_x), test_y, seeds=[0, 3, 4],
                              kinds=('posterior',), k=2, n_iter=7,
                              log=messages.append)
  assert messages == [f'k-means (cosine) on posterior features, seed {s}...'
                      for s in (0, 3, 4)]
  assert calls == [(s, 'cosine', 'posterior', dict(k=2, n_iter=7), 5, 5)
                   for s in (0, 3, 4)]
  r = spread['cosine']['posterior']
  # Seed 4: (1, .2) is nearer (1, .1) (label 1, wrong); (.2, 1) too (right).
  assert r['per_seed'] == {0: 1., 3: 0., 4: .75}
  assert (r['min'], r['max']) == (0., 1.)
  assert r['mean'] == pytest.approx(1.75 / 3)
  # Mean cosine distance to the nearest centre over the five train rows.
  sim4 = (np.array([1., .1, 1.02, .3, 1.02]) / np.sqrt(1.01)
          / np.array([1., 1., np.sqrt(1.04), np.sqrt(1.04), np.sqrt(1.04)]))
  distance = {0: 3 * (1 - r2) / 5, 3: 2 * (1 - r2) / 5,
              4: float(np.mean(1. - np.maximum(sim4, [1., 0., r2, .2 * r2,
                                                      r2])))}
  assert list(r['train_distance']) == [0, 3, 4]
  for seed, want in distance.items():
    # (float32 centres)
    assert r['train_distance'][seed] == pytest.approx(want, abs=1e-6), seed
  # The unsupervised pick (smallest distance) is seed 3, the worst one here.
  assert r['best_by_distance'] == dict(seed=3, test=0.)
  json.dumps(spread)


def test_seed_spread_of_real_fits():
  # Separated blobs: every seed finds them (accuracy 1); overlapping blobs:
  # some seed merges two classes (below 1), so the seeds do reach the fit.
  x, y = blobs()
  xt, yt = blobs(seed=3)
  kw = dict(kinds=('prior',), k=5, n_iter=30)
  easy = kmeans.seed_spread(dict(prior=x), y, dict(prior=xt), yt,
                            seeds=[0, 3, 4], **kw)['cosine']['prior']
  assert easy['per_seed'] == {0: 1., 3: 1., 4: 1.}
  x, y = blobs(noise=0.4)
  xt, yt = blobs(noise=0.4, seed=3)
  hard = kmeans.seed_spread(dict(prior=x), y, dict(prior=xt), yt,
                            seeds=[0, 3, 4], **kw)['cosine']['prior']
  assert hard['min'] < hard['max'] <= 1.
  assert set(hard['per_seed']) == {0, 3, 4}


def test_mean_distance_hand_made():
  feats = np.array([[2., 0.], [0., 3.], [1., 1.]])
  cos = kmeans.KMeansClassifier(np.array([[1., 0.], [0., 1.]]), 'cosine',
                                'prior', np.array([0, 1]))
  # Cosine distances to the nearest axis: 0, 0 and 1 - 1/sqrt(2).
  assert cos.mean_distance(feats) == pytest.approx((1 - 0.5 ** 0.5) / 3)
  euc = kmeans.KMeansClassifier(np.array([[2., 0.], [0., 2.]]), 'euclidean',
                                'prior', np.array([0, 1]))
  # Squared distances: 0, 1 and min(1 + 1, 1 + 1) = 2.
  assert euc.mean_distance(feats) == pytest.approx(1.)
  assert euc.mean_distance(dict(prior=feats)) == pytest.approx(1.)
  with pytest.raises(ValueError, match='Expected features'):
    euc.mean_distance(np.zeros((3, 5)))


def test_collect_features_tiny_model():
  config = configs.tiny_config()
  model = SCAE(config)
  rng = np.random.default_rng(0)
  images = rng.random((11, 20, 20, 1)).astype(np.float32)
  feats = kmeans.collect_features(model, images, batch_size=4)
  k = config.n_obj_caps
  assert feats['prior'].shape == (11, k)
  assert feats['posterior'].shape == (11, k)
  assert feats['prior_probe_pred'].shape == (11,)
  assert feats['posterior_probe_pred'].shape == (11,)
  for key in ('prior', 'posterior'):
    assert feats[key].dtype == np.float32
    assert np.all(np.isfinite(feats[key])) and np.all(feats[key] >= 0)
  # Prior: presence probabilities. Posterior: per-part mixing probabilities
  # summed over the parts, so in [0, P] per capsule and <= P per example.
  assert np.all(feats['prior'] <= 1)
  assert np.all(feats['posterior'] <= config.n_part_caps)
  assert np.all(feats['posterior'].sum(1) <= config.n_part_caps + 1e-4)
  # Batching does not change the result; an iterable with labels works.
  whole = kmeans.collect_features(model, images, batch_size=11)
  np.testing.assert_allclose(whole['prior'], feats['prior'], atol=1e-5)
  pairs = [(images[:6], np.arange(6)), (images[6:], np.arange(6, 11))]
  it = kmeans.collect_features(model, iter(pairs))
  np.testing.assert_array_equal(it['labels'], np.arange(11))
  np.testing.assert_allclose(it['posterior'], feats['posterior'], atol=1e-5)
  with pytest.raises(ValueError, match='shape'):
    kmeans.collect_features(model, np.zeros((2, 40, 40, 1), np.float32))
  with pytest.raises(ValueError, match='dtype'):
    kmeans.collect_features(model, np.zeros((2, 20, 20, 1), np.uint8))


def test_fitted_on_identifies_the_checkpoint_by_its_weights(tmp_path):
  tf.random.set_seed(0)
  model = SCAE(configs.tiny_config())
  fitted = checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'a' / 'ckpt'))
  copy = tmp_path / 'copy'
  shutil.copytree(tmp_path / 'a', copy)
  copy = str(copy / 'ckpt')
  weight = model.trainable_variables[0]
  weight.assign(weight + 1e-3)
  changed = checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'b'))
  meta = kmeans.fitted_on(fitted, 'mnist', 'resize', 'tiny')
  with open(fitted + '.index', 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert meta == dict(checkpoint=fitted, checkpoint_digest=digest,
                      dataset='mnist', preprocess='resize', config='tiny')
  clf = KMeansClassifier(np.eye(2), 'cosine', 'prior', [0, 1], meta)
  messages = []

  def check(prefix, clf=clf, dataset='mnist', preprocess='resize',
            allow=False):
    kmeans.check_fitted_on(clf, 'km.npz', prefix, dataset, preprocess,
                           allow, messages.append)

  check(copy)  # a copy elsewhere holds the same weights
  with pytest.raises(kmeans.KMeansMismatchError, match=re.escape(
      f'k-means file km.npz was fitted on checkpoint {fitted} (weights digest '
      f'{digest[:12]}), not on the attacked {changed} (weights digest '
      f'{kmeans.checkpoint_digest(changed)[:12]}). Fit one for this '
      'checkpoint with run/evaluate.py, or pass --allow_kmeans_mismatch')):
    check(changed)
  with pytest.raises(kmeans.KMeansMismatchError, match=re.escape(
      'fitted with dataset mnist, not fashion_mnist; and with preprocess '
      'resize, not pad_center.')):
    check(copy, dataset='fashion_mnist', preprocess='pad_center')
  assert not messages
  check(changed, allow=True)
  assert messages == [
      f'warning: k-means file km.npz was fitted on checkpoint {fitted} '
      f'(weights digest {digest[:12]}), not on the attacked {changed} '
      f'(weights digest {kmeans.checkpoint_digest(changed)[:12]}); using it '
      'anyway (--allow_kmeans_mismatch).']

  # Files written before the digest: the recorded checkpoint's weights, if
  # it is still there, else its path.
  legacy = dict(meta, checkpoint_digest=None)
  check(copy, clf=dataclasses.replace(clf, metadata=legacy))
  with pytest.raises(kmeans.KMeansMismatchError, match='weights digest'):
    check(changed, clf=dataclasses.replace(clf, metadata=legacy))
  moved = dict(legacy, checkpoint=str(tmp_path / 'gone'))
  with pytest.raises(kmeans.KMeansMismatchError, match=re.escape(
      f'fitted on checkpoint {tmp_path / "gone"}, not on the attacked '
      f'{copy} (weights digest {digest[:12]})')):
    check(copy, clf=dataclasses.replace(clf, metadata=moved))
  # A file that records nothing: said, not refused.
  messages.clear()
  check(changed, clf=dataclasses.replace(clf, metadata={}))
  assert messages == ['warning: k-means file km.npz records neither the '
                      'checkpoint nor the data it was fitted on; it cannot '
                      'be checked.']


def test_a_kmeans_file_names_its_checkpoint_relative_to_itself(tmp_path):
  """Portable: the path recorded beside the digest is relative to the
  k-means file's folder (no absolute path of the machine that fitted it),
  and read back against that folder, wherever the folder moved."""
  tf.random.set_seed(0)
  prefix = checkpoints.save_tf2_checkpoint(SCAE(configs.tiny_config()),
                                           str(tmp_path / 'a' / 'model'))
  path = str(tmp_path / 'a' / 'model.kmeans_prior_cosine.npz')
  meta = kmeans.fitted_on(prefix, 'mnist', 'resize', 'tiny', path=path)
  assert meta['checkpoint'] == 'model'
  assert kmeans.fitted_on(prefix, 'mnist', 'resize', 'tiny',
                          path=str(tmp_path / 'b' / 'km.npz'))[
                              'checkpoint'] == os.path.join('..', 'a', 'model')
  # Moved; and a file without the digest (then the path is what counts).
  shutil.move(str(tmp_path / 'a'), str(tmp_path / 'moved'))
  moved = str(tmp_path / 'moved' / 'model')
  moved_path = str(tmp_path / 'moved' / 'model.kmeans_prior_cosine.npz')
  legacy = dict(meta, checkpoint_digest=None)
  assert not kmeans.provenance.mismatches(legacy, moved, 'mnist', 'resize',
                                          path=moved_path)
  clf = KMeansClassifier(np.eye(2), 'cosine', 'prior', [0, 1], legacy)
  kmeans.check_fitted_on(clf, moved_path, moved, 'mnist', 'resize')
  # Refused elsewhere, naming the checkpoint it resolves to.
  other = checkpoints.save_tf2_checkpoint(SCAE(configs.tiny_config()),
                                          str(tmp_path / 'other'))
  with pytest.raises(kmeans.KMeansMismatchError, match=re.escape(
      f'fitted on checkpoint {moved} (weights digest')):
    kmeans.check_fitted_on(clf, moved_path, other, 'mnist', 'resize')
