"""Adaptive attacks (issue 13): margin losses, PGD-L2, its minimal-norm
search and the worst case over attacks, on toys with closed-form answers.

`LinearProbeToy` has the prior features of `test_attacks.ToyLinearCapsules`,
sigmoid([a, -a]) with a = <w, x - 0.5> and w a unit vector, and a linear
probe that is the identity: label 0 iff a > 0 for the probe (PriL) and
for a k-means on the unit centres (PriK). The smallest L2 perturbation that
flips an image at distance d = a / ||w|| from the boundary is d (its
projection stays inside the box in `linear_problem`).
"""

import dataclasses
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, margin_cw, margins, pgd, pipeline
from attacks import sanity, worst_case
from conftest import data_path
from scae_tf import checkpoints, configs, loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.model import SCAE
from test_attacks import REPO, ToyConfig, linear_problem


class LinearProbeToy:
  """Prior features sigmoid([a, -a]); both probes predict argmax of them."""

  def __init__(self, w):
    self.config = ToyConfig()
    self.w = tf.constant(np.asarray(w, np.float32).reshape(-1, 1))
    identity = types.SimpleNamespace(linear=tf.identity)
    self.prior_probe = self.posterior_probe = identity

  def capsule_features(self, images, kind, gradient='code'):
    del kind, gradient  # no stop-gradients: one gradient
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    a = tf.matmul(flat - 0.5, self.w)
    features = tf.sigmoid(tf.concat([a, -a], -1))
    return features, tf.argmax(features, -1)


def toy_target(w, name='PriL'):
  km = None
  if name.endswith('K'):
    km = KMeansClassifier(np.eye(2), 'cosine', 'prior', [0, 1])
  return classifiers.make_classifier(LinearProbeToy(w), name, kmeans=km)


# --- margins -----------------------------------------------------------------

def test_logit_margin_by_hand():
  logits = tf.constant([[2., 5., 1.], [2., 5., 1.], [0., 0., -3.],
                        [-1., -4., -2.]])
  labels = tf.constant([1, 0, 0, 2])
  # 5 - 2; 2 - 5; a tie is no margin; -2 - (-1).
  np.testing.assert_allclose(margins.logit_margin(logits, labels).numpy(),
                             [3., -3., 0., -1.])


def test_cosine_kmeans_margin_on_hand_placed_centroids():
  # f = (3, 4) has unit vector (.6, .8): cosine distances 1 - cos to the
  # centres (1, 0), (0, 1), (1, 1)/sqrt2 are .4, .2, 1 - 1.4/sqrt2.
  d = np.array([.4, .2, 1. - 1.4 / np.sqrt(2.)])
  centers = np.array([[1., 0.], [0., 1.], [1., 1.]])
  f = tf.constant([[3., 4.]] * 3)

  def margin(mapping, labels):
    km = KMeansClassifier(centers, 'cosine', 'prior', mapping)
    scores = km.tf_cluster_scores(f)
    return margins.kmeans_margin(scores, km.cluster_to_label,
                                 tf.constant(labels)).numpy()

  # One cluster per label: min_{j != y} d_j - d_y.
  np.testing.assert_allclose(margin([0, 1, 2], [0, 1, 2]),
                             [d[2] - d[0], d[2] - d[1], d[1] - d[2]],
                             rtol=1e-5)
  # Clusters 0 and 2 both say 0: label 0's nearest (2) counts.
  np.testing.assert_allclose(margin([0, 1, 0], [0, 1, 0]),
                             [d[1] - d[2], d[2] - d[1], d[1] - d[2]],
                             rtol=1e-5)
  # Label 2 has no cluster: never predicted, margin at most -1 (finite);
  # label 1 owns two clusters.
  got = margin([0, 1, 1], [2, 1, 0])
  assert np.isfinite(got).all() and got[0] <= -1.
  np.testing.assert_allclose(got[1:], [d[0] - d[2], d[2] - d[0]], rtol=1e-5)


def test_kmeans_margin_sign_is_the_classifiers_decision():
  rng = np.random.default_rng(0)
  km = KMeansClassifier(rng.normal(size=(7, 5)), 'cosine', 'prior',
                        [0, 1, 2, 0, 1, 3, 3])
  f = rng.normal(size=(500, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 500)  # label 4 has no cluster
  m = margins.kmeans_margin(km.tf_cluster_scores(f), km.cluster_to_label,
                            labels).numpy()
  right = km.predict(f) == labels
  assert right.any() and (~right).any()
  assert (m[right] > 0).all() and (m[~right] < 0).all()
  assert (m[labels == 4] <= -1).all()


def test_margin_target_on_the_scae_has_the_probes_gradient():
  """The SCAE's probe stops the gradient of its input: the probe's logits
  give a zero image gradient. The margin target's logits equal the probe's
  and do carry the gradient."""
  tf.random.set_seed(0)
  model = SCAE(configs.tiny_config().without_noise())
  images = tf.random.uniform([3, 20, 20, 1], seed=1)
  out = model.forward(images, training=False)
  labels = tf.constant([0, 3, 7], tf.int64)
  target = margins.margin_target(classifiers.make_classifier(model, 'PriL'))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(images)
    margin, pred = target(images, labels)
    stopped = model.prior_probe(model.capsule_features(images, 'prior')
                                .features).logits
  want = margins.logit_margin(out.prior_cls_logits, labels)
  np.testing.assert_allclose(margin.numpy(), want.numpy(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(pred.numpy(), out.prior_cls_pred.numpy())
  assert tape.gradient(stopped, images) is None
  assert np.abs(tape.gradient(margin, images).numpy()).max() > 0


def test_margin_target_bad_inputs():
  model = types.SimpleNamespace(config=ToyConfig(),
                                capsule_features=(
                                    lambda x, kind, gradient: None))
  with pytest.raises(ValueError, match='no prior linear probe'):
    margins.margin_target(classifiers.make_classifier(model, 'PriL'))
  with pytest.raises(ValueError, match='needs a k-means'):
    classifiers.make_classifier(model, 'PosK')
  with pytest.raises(ValueError, match='ModelClassifier'):
    margins.margin_target(object())


# --- PGD-L2 ------------------------------------------------------------------

@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_pgd_breaks_exactly_the_samples_within_the_budget(name):
  """eps = .25: the samples at distance <= eps are broken, with an L2 no
  smaller than the closed-form minimum d and within the budget; those at
  d > eps keep a positive margin. A sample already on the wrong side
  (d < 0) is a success too."""
  d = np.array([.05, .15, .24, .3, .5, -.1])
  _, w, x = linear_problem(d, seed=3)
  labels = np.zeros(len(d), np.int64)
  attack = pgd.PGDAttack(toy_target(w, name), 'pgd_l2', eps=.25, steps=40,
                         restarts=2)
  r = attack(x, labels, seed=1)
  np.testing.assert_array_equal(r.success, d <= .25)
  np.testing.assert_array_equal(r.clean_pred, (d < 0).astype(np.int64))
  ok = r.success[:3]
  assert (r.l2[:3][ok] >= d[:3] - 1e-4).all()
  assert (r.l2[:3] <= .25 + 1e-4).all()
  assert (r.margin[:3] < 0).all() and (r.margin[3:5] > 0).all()
  assert np.isinf(r.l2[3:5]).all() and np.isnan(r.adversarial[3:5]).all()
  # Re-evaluated: every kept image is misclassified, in the box, at its L2.
  adv = r.adversarial[:3]
  a = (adv.reshape(3, -1) - .5) @ w
  assert (a < 0).all() and adv.min() >= 0. and adv.max() <= 1.
  np.testing.assert_allclose(
      np.linalg.norm((adv - x[:3]).reshape(3, -1), axis=1), r.l2[:3],
      rtol=1e-4)


@pytest.mark.parametrize('zero_start', [True, False])
def test_pgd_keeps_the_most_negative_margin_in_the_ball(zero_start):
  """At eps = .3 the margin at the kept point is sigmoid(a) - sigmoid(-a)
  there, and it is the best in the ball, reached at x - eps * w:
  a = d - eps. From the clean image PGD walks straight there; from random
  starts only the projection removes their orthogonal part, and PGD ends
  a little short (see `attacks.pgd`)."""
  d = np.array([.1, .2])
  _, w, x = linear_problem(d, seed=4)
  r = pgd.PGDAttack(toy_target(w), 'pgd_l2', eps=.3, steps=60, restarts=3,
                    zero_start=zero_start)(x, np.zeros(2, np.int64), seed=0)
  a = (r.adversarial.reshape(2, -1) - .5) @ w
  s = 1. / (1. + np.exp(-a))
  np.testing.assert_allclose(r.margin, 2. * s - 1., rtol=1e-4, atol=1e-6)
  best = d - .3
  if zero_start:
    np.testing.assert_allclose(a, best, atol=1e-4)
  else:
    assert (a > best).all() and (a < best + .3 * .05).all()


@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_pgd_minimal_norm_finds_the_closed_form_distance(name):
  """Ceiling .5: the samples within it get L2 within the search's
  resolution .5 / 2^10 above d; the one beyond fails; the clean error
  comes back clean at L2 0."""
  d = np.array([.05, .17, .33, .6, -.1])
  _, w, x = linear_problem(d, seed=5)
  attack = pgd.PGDAttack(toy_target(w, name), 'pgd_l2_min', eps=.5, steps=40,
                         search_steps=10)
  calls = []
  r = attack(x, np.zeros(len(d), np.int64), seed=2,
             callback=lambda i, n: calls.append((i, n)))
  assert calls == [(i, 11) for i in range(11)]
  np.testing.assert_array_equal(r.success, [True, True, True, False, True])
  assert (r.l2[:3] >= d[:3] - 1e-5).all()
  assert (r.l2[:3] <= d[:3] + .5 / 2 ** 10).all()
  assert np.isinf(r.l2[3]) and r.l2[4] == 0.
  np.testing.assert_array_equal(r.adversarial[4], x[4])
  a = (r.adversarial[:3].reshape(3, -1) - .5) @ w
  assert (a < 0).all()


class SaturatingMargin:
  """A margin target on 4 x 4 images: a = <w, x - .5> with w = 1/4
  everywhere (a unit vector), margin max(a, -.005) for label 0: its
  gradient vanishes once a <= -.005, so PGD stays at the first point that
  far past the boundary, inside the ball when the steps are long."""
  name = 'saturating'
  image_shape = (4, 4, 1)
  num_classes = 2
  w = np.full(16, .25)

  def __call__(self, images, labels):
    del labels  # all 0 here
    a = tf.reduce_sum(images - .5, [1, 2, 3]) * .25
    return tf.maximum(a, -.005), tf.cast(a <= 0, tf.int64)


def test_minimal_norm_reports_the_l2_of_the_image_it_returns():
  """The search's L2 is that of the kept image, not the budget it was
  found at. d = .1 and .3, ceiling 1, 5 steps of 2.5 * eps / 5 = eps / 2,
  from the clean image along -w (the fixed schedule, not the preset's
  APGD): at eps 1 both stop after one step, at
  L2 .5. The search's round at eps .25 stops d = .1 after one step, at
  .125, and leaves d = .3 on the sphere at a = .05, a failure."""
  d = np.array([.1, .3])
  x = (.5 + d[:, None] * SaturatingMargin.w).reshape(2, 4, 4, 1)
  r = pgd.PGDAttack(SaturatingMargin(), 'pgd_l2_min', eps=1., steps=5,
                    search_steps=1, schedule='fixed')(x.astype(np.float32),
                                    np.zeros(2, np.int64))
  assert r.success.all()
  np.testing.assert_allclose(r.l2, [.125, .5], rtol=1e-5)
  norms = np.linalg.norm((r.adversarial - x).reshape(2, -1), axis=1)
  np.testing.assert_allclose(r.l2, norms, rtol=1e-5)


class DistanceToPlane:
  """A margin target on 4 x 4 images that never misclassifies: margin
  |a - t|, a = <w, x - .5>, w = 1/4 everywhere (a unit vector). From the
  grey image every PGD move is along w, so the image stays .5 + a w and
  PGD reduces to a scalar recurrence on a in [-eps, eps]."""
  name = 'distance'
  image_shape = (4, 4, 1)
  num_classes = 2
  w = np.full(16, .25)

  def __init__(self, t):
    self.t = t

  def __call__(self, images, labels):
    a = tf.reduce_sum(images - .5, [1, 2, 3]) * .25
    return tf.abs(a - self.t), tf.zeros_like(labels)


def apgd_by_hand(t, eps, steps):
  """Croce & Hein's Algorithm 1 on |a - t| along w, written out on the
  scalar a (minimising): the lowest margin visited."""
  checks = pgd.apgd_checkpoints(steps)
  step, a, a_prev = 2. * eps, 0., 0.
  low, low_a, low_g = np.inf, 0., 0.
  prev, last_low, falls, halved_last, last = np.inf, None, 0, False, 0
  seen = []
  for k in range(steps):
    m, g = abs(a - t), np.sign(a - t)
    seen.append(m)
    falls += k > 0 and m < prev
    prev = m
    if k == 0:
      last_low = m
    if m < low:
      low, low_a, low_g = m, a, g
    if k in checks:
      window, last = k - last, k
      halve = falls < .75 * window or (not halved_last and low >= last_low)
      if halve:
        step, a, g = step / 2., low_a, low_g
      halved_last, last_low, falls = halve, low, 0
    z = np.clip(a - step * g, -eps, eps)
    mix = .75 if k > 0 else 1.
    a_prev, a = a, np.clip(a + mix * (z - a) + (1. - mix) * (a - a_prev),
                           -eps, eps)
  seen.append(abs(a - t))
  return min(seen)


def test_apgd_checkpoints_by_hand():
  """22 % of the steps, then intervals shrinking by 3 % down to 6 %."""
  assert pgd.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert pgd.apgd_checkpoints(5) == [1, 2, 3, 4]
  assert pgd.apgd_checkpoints(1) == []


@pytest.mark.parametrize('t,steps', [(.3137, 20), (-.6071, 40), (.81, 100)])
def test_apgd_schedule_equals_algorithm_1_by_hand(t, steps):
  """On |a - t| the APGD schedule's lowest margin is that of the scalar
  recurrence (a failure: the image is not returned); the fixed step
  (2.5 eps / steps) oscillates around t and ends further from it: APGD
  halves its step on the oscillation, from a first step of 2 eps."""
  x = np.full((1, 4, 4, 1), .5, np.float32)
  labels = np.zeros(1, np.int64)
  r = pgd.PGDAttack(DistanceToPlane(t), 'pgd_l2', eps=1., steps=steps,
                    restarts=1, schedule='apgd')(x, labels)
  low = apgd_by_hand(t, 1., steps)
  assert not r.success[0]
  np.testing.assert_allclose(r.margin[0], low, atol=1e-5)
  fixed = pgd.PGDAttack(DistanceToPlane(t), 'pgd_l2', eps=1., steps=steps,
                        restarts=1)(x, labels)
  assert low < fixed.margin[0] / 4.


def test_apgd_reaches_the_best_point_of_the_ball_in_one_step():
  """On the linear toy the first APGD step, 2 eps along -w from the clean
  image, is projected onto x - eps w, the ball's best point, and momentum
  keeps it there."""
  d = np.array([.1, .2])
  _, w, x = linear_problem(d, seed=4)
  r = pgd.PGDAttack(toy_target(w), 'pgd_l2', eps=.3, steps=10, restarts=1,
                    schedule='apgd')(x, np.zeros(2, np.int64))
  a = (r.adversarial.reshape(2, -1) - .5) @ w
  np.testing.assert_allclose(a, d - .3, atol=1e-5)
  assert pgd.PRESETS['pgd_l2_min'].schedule == 'apgd'
  assert pgd.PRESETS['pgd_l2'].schedule == 'fixed'


# --- margin C&W --------------------------------------------------------------

@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_margin_cw_finds_the_closed_form_minimum(name):
  """The paper's search on the margin: L2 within 1 % of d (never below),
  along -w; the clean error (d < 0) succeeds too."""
  d = np.array([.1, .2, .3, -.05])
  _, w, x = linear_problem(d, seed=7)
  attack = margin_cw.MarginCWAttack(toy_target(w, name), learning_rate=.01,
                                    outer_iterations=12)
  r = attack(x, np.zeros(4, np.int64), seed=0)
  assert r.success.all()
  assert (r.l2[:3] >= d[:3] * (1 - 1e-4)).all()
  np.testing.assert_allclose(r.l2[:3], d[:3], rtol=1e-2)
  delta = (r.adversarial[:3] - x[:3]).reshape(3, -1)
  assert (-(delta @ w) / np.linalg.norm(delta, axis=1) > .99).all()


def test_margin_cw_preset_and_errors():
  config = margin_cw.get_config()
  assert (config.use_mask, config.const_coupling, config.const_init) == (
      False, 'example', 1.)
  with pytest.raises(ValueError, match='Unknown margin_cw preset'):
    margin_cw.get_config('paper_eval')
  model = types.SimpleNamespace(config=ToyConfig(),
                                capsule_features=(
                                    lambda x, kind, gradient: None))
  with pytest.raises(ValueError, match='no posterior linear probe'):
    margin_cw.MarginCWAttack(classifiers.make_classifier(model, 'PosL'))


def test_pgd_config_errors():
  with pytest.raises(ValueError, match='eps must be a positive number'):
    pgd.get_config('pgd_l2', eps=0.)
  with pytest.raises(ValueError, match='eps must be a positive number'):
    pgd.get_config('pgd_l2', eps=-1.)
  with pytest.raises(ValueError, match='steps must be a positive integer'):
    pgd.get_config('pgd_l2', steps=0)
  with pytest.raises(ValueError, match='Unknown PGD preset'):
    pgd.get_config('pgd_linf')
  with pytest.raises(ValueError, match='Unknown PGD setting'):
    pgd.get_config('pgd_l2', learning_rate=1.)
  with pytest.raises(ValueError, match='search_steps must be an integer >= 0'):
    pgd.get_config('pgd_l2_min', search_steps=-1)
  with pytest.raises(ValueError, match="schedule='adam' is not one of"):
    pgd.get_config('pgd_l2', schedule='adam')
  assert pgd.PRESETS['pgd_l2'].steps == 100
  assert pgd.PRESETS['pgd_l2'].restarts == 5


def test_random_start_lies_in_the_ball_and_the_box():
  rng = tf.random.Generator.from_seed(0)
  x = tf.constant(np.full((200, 4, 4, 1), .5, np.float32))
  eps = tf.fill([200], .3)
  start = pgd.random_start(rng, x, eps).numpy()
  norms = np.linalg.norm((start - .5).reshape(200, -1), axis=1)
  assert norms.max() <= .3 + 1e-6
  # Uniform in 16 dimensions: P(radius < .8 eps) = .8^16 ~ 3 %.
  assert .75 * .3 < np.median(norms) < .3
  # A corner pixel at 0 is clipped back into the box.
  y = pgd.project(tf.constant(-np.ones((1, 2, 2, 1), np.float32)),
                  tf.zeros([1, 2, 2, 1]), tf.constant([1.])).numpy()
  np.testing.assert_array_equal(y, np.zeros((1, 2, 2, 1)))
  z = pgd.project(tf.constant(np.full((1, 2, 2, 1), .9, np.float32)),
                  tf.fill([1, 2, 2, 1], .5), tf.constant([.4])).numpy()
  np.testing.assert_allclose(z, np.full((1, 2, 2, 1), .7), rtol=1e-6)


# --- worst case --------------------------------------------------------------

def test_worst_case_merge_of_known_arrays():
  inf = np.inf
  merged = worst_case.merge({
      'capsule': [0., 1.5, inf, 2.0, inf, 3.0],
      'pgd_l2': [0., 2.5, 1.0, 2.0, inf, inf],
      'margin_cw': [0., 1.7, 4.0, 0.5, inf, inf]})
  np.testing.assert_array_equal(merged.l2, [0., 1.5, 1.0, .5, inf, 3.0])
  np.testing.assert_array_equal(merged.winner, [0, 0, 1, 2, -1, 0])
  assert merged.names == ('capsule', 'pgd_l2', 'margin_cw')
  assert merged.wins() == dict(capsule=3, pgd_l2=1, margin_cw=1)
  with pytest.raises(ValueError, match='expected amounts of shape'):
    worst_case.merge({'a': [1., 2.], 'b': [1.]})
  with pytest.raises(ValueError, match='no NaN'):
    worst_case.merge({'a': [1., np.nan]})
  with pytest.raises(ValueError, match='at least one'):
    worst_case.merge({})


def test_worst_case_summary_of_known_arrays():
  inf = np.inf
  amounts = dict(capsule=np.array([0., 1.5, inf, 2.0, inf, 3.0]),
                 pgd_l2=np.array([0., 2.5, 1.0, 2.0, inf, inf]))
  merged = worst_case.merge(amounts)
  s = worst_case.summarize(merged, amounts, amounts['capsule'] > 0, 2.,
                           max_threshold=3.)
  # Worst case [0, 1.5, 1, 2, inf, 3]: > 2 for two of six samples.
  assert s['accuracy_at_threshold'] == pytest.approx(2 / 6)
  assert s['capsule_accuracy_at_threshold'] == pytest.approx(3 / 6)
  assert s['pgd_l2_accuracy_at_threshold'] == pytest.approx(3 / 6)
  assert s['strongest_at_threshold'] == 'tie: capsule, pgd_l2'
  # Ties (samples 0 and 3) go to the first attack; sample 4 to none.
  assert (s['capsule_wins'], s['pgd_l2_wins']) == (4, 1)
  assert s['pgd_l2_smaller_than_capsule'] == 1
  # Accuracies (capsule, pgd): t < 1: (5/6, 5/6); 1 <= t < 1.5: (5/6, 4/6);
  # 1.5 <= t < 2: (4/6, 4/6); 2 <= t < 2.5: (3/6, 3/6); 2.5 <= t < 3:
  # (3/6, 2/6); t = 3: (2/6, 2/6).
  assert s['strongest_by_threshold'] == (
      '0-0.75 tie; 1-1.25 pgd_l2; 1.5-2.25 tie; 2.5-2.75 pgd_l2; 3-3 tie')


# --- sanity checks -----------------------------------------------------------

INF = np.inf


def test_sanity_passes_a_consistent_report():
  correct = np.array([True, True, True, False])
  # PGD's failure is exempt from check 1 (it has a ceiling); its median
  # (1.5) is below the paper's attack's (2), as check 5 asks.
  amounts = dict(capsule=np.array([1., 2., 3., 0.]),
                 pgd_l2=np.array([.5, INF, 1.5, 0.]))
  report = sanity.check(amounts, correct, np.array([.4, 8., 2., 0.]), 40.,
                        curves=dict(capsule=[.75, .5, .25, 0.]),
                        unbounded_clean_correct=correct)
  assert report['ok'] and report['flags'] == []
  assert report['unbounded']['success_rates'] == dict(capsule=1.,
                                                      pgd_unbounded=1.)
  assert report['eps0']['accuracy_at_0'] == dict(
      capsule=.75, pgd_l2=.75, pgd_unbounded=.75)
  assert report['non_increasing']['unbounded_accuracy'] == 0.
  assert sanity.markdown(report).startswith('Sanity checks passed')


def test_sanity_flags_each_failure_by_hand():
  correct = np.array([True, True, True, False])
  amounts = dict(capsule=np.array([1., INF, 3., 0.]),      # fails sample 1
                 margin_cw=np.array([0., 2., 3., 0.]))     # 0 on a correct one
  unbounded = np.array([INF, 1., INF, 0.])                 # two survivors
  report = sanity.check(
      amounts, correct, unbounded, 40., curves=dict(capsule=[.75, .8, .5]),
      unbounded_clean_correct=np.array([True, True, False, False]),
      indices=np.array([70, 71, 72, 73]))
  assert not report['ok']
  assert report['unbounded']['success_rates'] == dict(
      capsule=pytest.approx(2 / 3), margin_cw=1., pgd_unbounded=pytest.approx(
          1 / 3))
  assert report['unbounded']['survivors'] == [70, 72]
  # Rising curve; unbounded accuracy .5 above capsule's .25 and cw's 0.
  assert report['non_increasing']['failing'] == ['capsule', 'capsule',
                                                 'margin_cw']
  assert report['eps0']['accuracy_at_0'] == dict(
      capsule=.75, margin_cw=.5, pgd_unbounded=.75)
  assert report['eps0']['clean_disagreements'] == 1
  flags = report['flags']
  assert len(flags) == 7, flags
  assert flags[0].startswith('capsule: its success rate without a budget is '
                             '66.67% < 100%')
  assert flags[1].startswith('PGD-L2 at eps = 40 (any image within reach) '
                             'left 2 of 3 correctly classified samples')
  assert 'margin_cw: robust accuracy at L2 = 0 is 0.5000, not the clean ' \
      'accuracy 0.7500.' in flags
  text = sanity.markdown(report)
  assert text.startswith('**Sanity checks FAILED**')
  assert text.count('\n- ') == 7


def test_sanity_flags_an_attack_that_missed_a_point_within_its_budget():
  correct = np.ones(4, bool)
  amounts = dict(capsule=np.array([3., 12., 1., INF]),
                 pgd_l2=np.array([INF, INF, .5, INF]))
  unbounded = np.array([9., 11., .6, 9.5])
  report = sanity.check(amounts, correct, unbounded, 40.,
                        ceilings=dict(pgd_l2=10.))
  # Samples 0 (capsule: 3) and 3 (unbounded PGD: 9.5) lie within 10;
  # sample 1's nearest known point (11) does not.
  assert report['non_increasing']['missed_within_budget'] == dict(pgd_l2=2)
  assert 'pgd_l2' in report['non_increasing']['failing']
  assert any(('pgd_l2 failed at its budget 10 on 2 samples that another '
              'attack broke within it (L2 3.00 to 9.50)') in flag
             for flag in report['flags'])
  within = sanity.check(amounts, correct, unbounded, 40.,
                        ceilings=dict(pgd_l2=2.))
  assert within['non_increasing']['missed_within_budget'] == {}


def test_unbounded_pgd_reaches_any_image():
  """The box diameter of 4 x 4 x 1 images is 4. The all-white image lies at
  the closed-form distance a = 0.5 sum(w) (about 2) from the toy's boundary
  (the box does not bind along -w): PGD at the diameter breaks it, PGD at
  0.9 a does not."""
  assert sanity.box_diameter((40, 40, 1)) == 40.
  config = sanity.unbounded_config((4, 4, 1), seed=2)
  assert (config.eps, config.steps, config.restarts, config.seed,
          config.schedule) == (4., sanity.UNBOUNDED_STEPS, 1, 2, 'apgd')
  _, w, near = linear_problem([.05], seed=3)
  x = np.concatenate([near, np.ones_like(near)])
  distance = .5 * w.sum()
  assert 1. < distance < 4. and (1. - distance * w >= 0.).all()
  labels = np.zeros(2, np.int64)
  target = toy_target(w, 'PriK')
  r = pgd.PGDAttack(target, config)(x, labels)
  np.testing.assert_array_equal(r.success, [True, True])
  assert r.l2[1] >= distance - 1e-4
  short = pgd.PGDAttack(target, config, eps=.9 * distance)(x, labels)
  np.testing.assert_array_equal(short.success, [True, False])


def test_attack_names_take_a_list_in_the_papers_order():
  assert pipeline.attack_names('all') == ('capsule', 'pgd_l2', 'margin_cw',
                                         'ddn', 'fmn')
  assert pipeline.attack_names('fmn,ddn') == ('ddn', 'fmn')
  assert pipeline.attack_names('pgd_l2, capsule') == ('capsule', 'pgd_l2')
  assert pipeline.attack_names('margin_cw') == ('margin_cw',)
  with pytest.raises(ValueError, match='capsule listed twice'):
    pipeline.attack_names('capsule,pgd_l2,capsule')
  with pytest.raises(ValueError, match="unknown attack='all'; expected one "
                     'of capsule, pgd_l2, margin_cw, ddn, fmn.'):
    pipeline.attack_names('capsule,all')
  with pytest.raises(ValueError, match="unknown attack='fgsm'"):
    pipeline.attack_names('fgsm,pgd_l2')


# --- run/attack.py -----------------------------------------------------------

@pytest.mark.parametrize('settings,error', [
    (dict(attack='pgd_linf'), "unknown attack='pgd_linf'"),
    (dict(attack='pgd_l2', eps=0.), 'eps must be a positive number'),
    (dict(attack='all', eps=-4.), 'eps must be a positive number'),
    (dict(attack='capsule', eps=float('nan')), 'eps must be a positive'),
    (dict(attack='pgd_l2', pgd_overrides=dict(steps=0)),
     'steps must be a positive integer'),
    (dict(attack='pgd_l2', pgd_preset='pgd_linf'), 'Unknown PGD preset'),
    (dict(attack='pgd_l2', gradient='true'), "unknown gradient='true'"),
    (dict(attack='pgd_l2', quantize='16bit'), "unknown quantize='16bit'"),
])
def test_bad_attack_settings_fail_before_the_model_loads(tmp_path, settings,
                                                         error):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=error):
    pipeline.attack_checkpoint(str(tmp_path / 'no_checkpoint'), 'PosK',
                               out_dir=str(out), progress=False, **settings)
  assert not out.exists()


def test_the_script_refuses_an_unknown_attack_with_one_line(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
      filter(None, (REPO, os.environ.get('PYTHONPATH')))))
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'run', 'attack.py'),
       f'--checkpoint={tmp_path}', '--attack=fgsm',
       f'--out_dir={tmp_path / "out"}'],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      "error: unknown attack='fgsm'; expected one of capsule, pgd_l2, "
      'margin_cw, ddn, fmn, all.')
  assert not (tmp_path / 'out').exists()


def test_pgd_settings_of_a_run():
  fixed = pipeline.pgd_config('pgd_l2', None, 5., seed=3)
  assert (fixed.eps, fixed.seed, fixed.search_steps) == (5., 3, 0)
  search = pipeline.pgd_config('pgd_l2_min', None, 5., seed=0)
  assert search.eps == pgd.PRESETS['pgd_l2_min'].eps
  assert pipeline.pgd_config('pgd_l2_min', 7., 5., 0, dict(steps=3)) == \
      dataclasses.replace(pgd.PRESETS['pgd_l2_min'], eps=7., steps=3)


def _tiny_checkpoint(tmp_path):
  tf.random.set_seed(0)
  return checkpoints.save_tf2_checkpoint(
      SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / 'tiny'))


def test_kmeans_pgd_without_a_fitted_kmeans_fails_before_attacking(tmp_path):
  _tiny_checkpoint(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(FileNotFoundError, match='run run/evaluate.py'):
    pipeline.attack_checkpoint(
        str(tmp_path), 'PriK', attack='pgd_l2', dataset='mnist',
        data_dir=str(data_path('mnist')), num_samples=2, out_dir=str(out),
        progress=False)
  assert not out.exists()


def test_attack_all_runs_each_on_the_same_samples_and_merges(tmp_path):
  prefix = _tiny_checkpoint(tmp_path)
  KMeansClassifier(np.eye(3, dtype=np.float32), 'cosine', 'posterior',
                   [3, 1, 7]).save(loading.kmeans_path(prefix, 'posterior'))
  out = tmp_path / 'all'
  result = pipeline.attack_checkpoint(
      str(tmp_path), 'PosK', attack='all', dataset='mnist',
      data_dir=str(data_path('mnist')), num_samples=4, batch_size=2,
      overrides=dict(outer_iterations=1, inner_iterations=2),
      pgd_overrides=dict(steps=2, search_steps=1), out_dir=str(out),
      progress=False)
  assert sorted(result['runs']) == ['capsule', 'ddn', 'fmn', 'margin_cw',
                                    'pgd_l2']
  pgd_settings = result['runs']['pgd_l2']['settings']
  assert pgd_settings['attack_name'] == 'pgd_l2'
  assert pgd_settings['attack']['steps'] == 2
  assert 'attack_name' not in result['runs']['capsule']['settings']
  # The paper's attack differentiates the training graph, the adaptive ones
  # the classifier.
  assert {n: r['settings']['gradient'] for n, r in result['runs'].items()
          } == dict(capsule='code', pgd_l2='full', margin_cw='full',
                    ddn='full', fmn='full')
  cw_settings = result['runs']['margin_cw']['settings']
  assert (cw_settings['preset'], cw_settings['attack']['inner_iterations'],
          cw_settings['attack']['use_mask']) == ('margin_cw', 2, False)
  amounts = {}
  for name in ('capsule', 'pgd_l2', 'margin_cw', 'ddn', 'fmn'):
    with np.load(out / name / 'l2.npz') as z:
      amounts[name] = z['perturbation']
      indices = z['indices']
  with np.load(out / 'worst_case.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    np.testing.assert_array_equal(
        z['perturbation'], np.minimum.reduce(list(amounts.values())))
    np.testing.assert_array_equal(z['perturbation_pgd_l2'],
                                  amounts['pgd_l2'])
  assert result['summary']['num_samples'] == 4
  for name in ('pgd_l2', 'margin_cw', 'ddn', 'fmn'):
    assert result['summary'][f'{name}_smaller_than_capsule'] == int(
        np.sum(amounts[name] < amounts['capsule']))
  assert (out / 'accuracy_vs_l2.png').exists()
  with open(out / 'worst_case.json') as f:
    saved = json.load(f)
  assert saved['summary'] == json.loads(json.dumps(result['summary']))
  # The sanity checks: PGD at the canvas's diameter on the same samples,
  # with the run's PGD steps, and the report of attacks.sanity on the files.
  with np.load(out / 'sanity_unbounded' / 'l2.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    unbounded, clean_correct = z['perturbation'], z['clean_correct']
  with open(out / 'sanity_unbounded' / 'settings.json') as f:
    unbounded_settings = json.load(f)
  assert (unbounded_settings['attack']['eps'],
          unbounded_settings['attack']['steps'],
          unbounded_settings['attack_name'],
          unbounded_settings['gradient']) == (40., 2, 'sanity_unbounded',
                                              'full')
  curves = {}
  for name in amounts:
    with open(out / name / 'robust_accuracy.json') as f:
      curves[name] = json.load(f)['accuracy']
  with np.load(out / 'noise_control.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    noise_correct = z['correct']
  assert noise_correct.shape == (4, 2)
  expected = sanity.check(amounts, clean_correct, unbounded, 40., curves,
                          clean_correct, indices, dict(pgd_l2=10.),
                          noise_correct, 4.)
  assert result['sanity'] == expected
  with open(out / 'sanity.json') as f:
    assert json.load(f)['flags'] == expected['flags']
  assert (out / 'sanity.md').read_text() == sanity.markdown(expected)


def test_a_list_of_attacks_runs_those_and_a_single_one_checks_in_place(
    tmp_path):
  _tiny_checkpoint(tmp_path)
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2, progress=False,
                  overrides=dict(outer_iterations=1, inner_iterations=1),
                  pgd_overrides=dict(steps=1, search_steps=1))
  two = pipeline.attack_checkpoint(str(tmp_path), 'PriL',
                                   attack='pgd_l2,capsule',
                                   out_dir=str(tmp_path / 'two'), **settings)
  assert sorted(two['runs']) == ['capsule', 'pgd_l2']
  assert sorted(p.name for p in (tmp_path / 'two').iterdir()
                if p.is_dir()) == ['capsule', 'pgd_l2', 'sanity_unbounded']
  one = pipeline.attack_checkpoint(str(tmp_path), 'PriL', attack='pgd_l2',
                                   out_dir=str(tmp_path / 'one'), **settings)
  assert (tmp_path / 'one' / 'l2.npz').exists()
  assert (tmp_path / 'one' / 'sanity_unbounded' / 'l2.npz').exists()
  assert one['sanity'] == json.loads(
      (tmp_path / 'one' / 'sanity.json').read_text(),
      object_hook=lambda d: {k: v for k, v in d.items()
                             if k not in ('runs', 'unbounded_run')})
  skipped = pipeline.attack_checkpoint(
      str(tmp_path), 'PriL', attack='pgd_l2', sanity=False, gradient='code',
      out_dir=str(tmp_path / 'skipped'), **settings)
  assert skipped['sanity'] is None
  assert skipped['settings']['gradient'] == 'code'  # --gradient overrides
  assert not (tmp_path / 'skipped' / 'sanity_unbounded').exists()


def test_overwrite_removes_every_output_of_the_previous_run(tmp_path):
  _tiny_checkpoint(tmp_path)
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2, progress=False, sanity=False,
                  overrides=dict(outer_iterations=1, inner_iterations=1),
                  pgd_overrides=dict(steps=1, search_steps=1))
  out = tmp_path / 'out'
  pipeline.attack_checkpoint(str(tmp_path), 'PriL', attack='pgd_l2',
                             out_dir=str(out), **settings)
  assert (out / 'settings.json').exists() and (out / 'batches').is_dir()
  (out / 'notes.txt').write_text('mine')
  pipeline.attack_checkpoint(str(tmp_path), 'PriL', attack='capsule,pgd_l2',
                             out_dir=str(out), overwrite=True, **settings)
  # (the folder's lock file, .lock, stays: it is not a result)
  left = sorted(p.name for p in out.iterdir() if p.name != '.lock')
  assert left == ['accuracy_vs_l2.png', 'capsule', 'notes.txt', 'pgd_l2',
                  'worst_case.json', 'worst_case.md', 'worst_case.npz'], left
  # And back: the single run in place again, the two subfolders gone.
  pipeline.attack_checkpoint(str(tmp_path), 'PriL', attack='pgd_l2',
                             out_dir=str(out), overwrite=True, **settings)
  left = sorted(p.name for p in out.iterdir() if p.name != '.lock')
  assert left == ['accuracy_vs_l2.png', 'adversarial.npz', 'batches',
                  'l2.npz', 'notes.txt',
                  'robust_accuracy.json', 'settings.json', 'summary.json',
                  'summary.md'], left


def test_quantized_runs_count_only_what_survives_the_rounding(tmp_path):
  _tiny_checkpoint(tmp_path)
  out = tmp_path / 'q'
  result = pipeline.attack_checkpoint(
      str(tmp_path), 'PriL', attack='pgd_l2', quantize='8bit',
      dataset='mnist', data_dir=str(data_path('mnist')), num_samples=4,
      batch_size=2, progress=False, sanity=False,
      pgd_overrides=dict(steps=2, search_steps=1), out_dir=str(out))
  assert result['settings']['quantize'] == '8bit'
  summary = result['summary']
  with np.load(out / 'l2.npz') as z:
    before, after = z['success_unquantized'], z['success']
    correct = z['clean_correct']
    kept = np.load(out / 'adversarial.npz')['adversarial'][after & correct]
  assert summary['quantized_successes_before'] == int(before[correct].sum())
  assert summary['quantized_successes_after'] == int(after[correct].sum())
  assert not (after & ~before).any()
  # What counts lies on the 8-bit grid.
  np.testing.assert_allclose(kept * 255., np.round(kept * 255.), atol=1e-4)
