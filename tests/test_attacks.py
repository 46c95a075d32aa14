"""The evasion attack (attacks/) on toy capsule models, and its protocol.

No SCAE here: a toy "capsule model" with the SCAE's output fields plugs into
`attacks.classifiers.make_classifier` exactly as the SCAE does. Its object
capsule presences are [sigmoid(a), sigmoid(-a)] with a = <w, x - 0.5>, and
both linear probes predict 0 iff a > 0: the decision boundary is the
hyperplane a = 0, so the smallest L2 perturbation that flips the label of x
is a(x) / ||w|| (when the projection stays inside the box).
"""

import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import NamedTuple
import warnings

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, evasion, objectives, optimizers, pipeline
from attacks import protocol
from attacks.classifiers import CapsuleClassifier
from conftest import data_path
from helpers.attack_files import assert_same_outputs
from helpers.attack_files import outputs
from helpers.attack_files import tiny_posk_checkpoint
from scae_tf import checkpoints, configs, data, kmeans, loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.model import SCAE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- toy models --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToyConfig:
  canvas_size: int = 4
  n_channels: int = 1
  n_part_caps: int = 1
  n_obj_caps: int = 2
  num_classes: int = 2


class ToyOutput(NamedTuple):
  caps_presence_prob: tf.Tensor      # [B, 2]
  posterior_mixing_probs: tf.Tensor  # [B, P=1, 2]
  prior_cls_pred: tf.Tensor          # [B]
  posterior_cls_pred: tf.Tensor      # [B]


class ToyLinearCapsules:
  """a = <w, x - 0.5>; presences sigmoid([a, -a]); posterior mixing
  softmax([a, -a]) over P = 1 part; probes predict 0 iff a > 0."""

  def __init__(self, w):
    self.config = ToyConfig()
    self.w = tf.constant(np.asarray(w, np.float32).reshape(-1, 1))

  def forward(self, images, full=False, training=False):
    del full, training
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    a = tf.matmul(flat - 0.5, self.w)
    logits = tf.concat([a, -a], -1)
    pred = tf.argmax(logits, -1)
    return ToyOutput(tf.sigmoid(logits), tf.nn.softmax(logits)[:, None, :],
                     pred, pred)


class ConstantPrediction(CapsuleClassifier):
  """Differentiable presences, but always predicts class 0: an attack on a
  label-0 example can never succeed, on a label-1 example it always does."""

  def __init__(self, shape=(4, 4, 1)):
    super().__init__('const', 'prior', shape, 2)
    n = int(np.prod(shape))
    self.w = tf.constant(np.linspace(-1., 1., 2 * n, dtype=np.float32)
                         .reshape(n, 2))

  def __call__(self, images):
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    features = tf.sigmoid(tf.matmul(flat, self.w))
    return features, tf.zeros([tf.shape(images)[0]], tf.int64)


def linear_problem(distances, seed=0):
  """Images [B, 4, 4, 1] at distance d_b from the boundary of a toy model
  with a positive unit normal w (brightening moves away from the boundary,
  so the random start p' >= 0 is never adversarial)."""
  rng = np.random.default_rng(seed)
  w = rng.uniform(0.5, 1.5, 16)
  w /= np.linalg.norm(w)
  d = np.asarray(distances, np.float64)
  noise = rng.uniform(-0.15, 0.15, (len(d), 16))
  noise -= (noise @ w)[:, None] * w          # orthogonal to w
  x = 0.5 + noise + d[:, None] * w
  assert x.min() > 0.2 and x.max() < 0.8     # the projection stays in the box
  return ToyLinearCapsules(w), w, x.reshape(-1, 4, 4, 1).astype(np.float32)


# --- objectives --------------------------------------------------------------

def test_blur_mask_by_hand():
  img = np.arange(1., 10.).reshape(1, 3, 3, 1)
  # Corners average 4 in-bounds pixels, edges 6, the centre 9.
  expected = np.array([[3., 3.5, 4.], [4.5, 5., 5.5], [6., 6.5, 7.]])
  got = objectives.blur_mask(img).numpy()
  np.testing.assert_allclose(got[0, :, :, 0], expected, rtol=1e-6)
  # Channels are blurred independently; `times` repeats the blur.
  two = np.concatenate([img, 10. - img], -1)
  got2 = objectives.blur_mask(two).numpy()
  np.testing.assert_allclose(got2[0, :, :, 1], 10. - expected, rtol=1e-6)
  twice = objectives.blur_mask(img, times=2).numpy()
  np.testing.assert_allclose(
      twice, objectives.blur_mask(got).numpy(), rtol=1e-6)
  assert twice[0, 0, 0, 0] == pytest.approx((3 + 3.5 + 4.5 + 5) / 4)


def test_blur_mask_matches_loops_and_zero_regions():
  rng = np.random.default_rng(1)
  img = rng.uniform(size=(2, 5, 6, 1)) * (rng.uniform(size=(2, 5, 6, 1)) > .5)
  ref = np.zeros_like(img)
  for i in range(5):
    for j in range(6):
      box = img[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      ref[:, i, j] = box.mean(axis=(1, 2))
  np.testing.assert_allclose(objectives.blur_mask(img).numpy(), ref,
                             rtol=1e-5, atol=1e-7)
  stroke = np.zeros((1, 6, 6, 1), np.float32)
  stroke[0, 1, 1] = 1.
  mask = objectives.blur_mask(stroke).numpy()[0, :, :, 0]
  assert (mask[:3, :3] > 0).all() and (mask[3:, :] == 0).all() \
      and (mask[:, 3:] == 0).all()


def test_tanh_space_round_trip_and_box():
  x = np.array([0., .25, .5, 1.], np.float32).reshape(1, 2, 2, 1)
  w = objectives.to_tanh_space(x)
  assert np.isfinite(w.numpy()).all()  # the 0.999999 factor
  np.testing.assert_allclose(objectives.from_tanh_space(w).numpy(), x,
                             atol=1e-6)
  big = objectives.from_tanh_space(tf.constant([-1e4, -3., 0., 3., 1e4]))
  assert (big.numpy() >= 0).all() and (big.numpy() <= 1).all()


def test_capsule_subset_rules():
  f = tf.constant([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
  # Batch mean 2.1 / 6 = 0.35; row means 0.5 and 0.2.
  np.testing.assert_array_equal(objectives.capsule_subset(f).numpy(),
                                [[1, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(
      objectives.capsule_subset(f, 'example').numpy(), [[1, 0, 0], [0, 1, 0]])
  with pytest.raises(ValueError, match='subset rule'):
    objectives.capsule_subset(f, 'global')


def test_capsule_and_perturbation_losses_by_hand():
  f = tf.constant([[0.9, 0.1, 0.5], [2.0, 3.0, 1.0]])
  s = tf.constant([[1., 0., 1.], [0., 1., 1.]])
  prior = objectives.capsule_loss(f, s, 'prior', n_part_caps=4).numpy()
  np.testing.assert_allclose(prior, [0.5 * (0.81 + 0.25), 0.5 * (9. + 1.)])
  post = objectives.capsule_loss(f, s, 'posterior', n_part_caps=4).numpy()
  np.testing.assert_allclose(post, prior / 16.)
  plain = objectives.capsule_loss(f, s, 'posterior', 4, form='sum').numpy()
  np.testing.assert_allclose(plain, [1.4, 4.0])
  x = np.zeros((2, 2, 2, 1), np.float32)
  x_adv = x.copy()
  x_adv[0, 0, 0, 0], x_adv[1, 1, 1, 0], x_adv[1, 0, 1, 0] = 0.3, 0.4, 0.2
  p = objectives.perturbation_loss(tf.constant(x_adv), tf.constant(x))
  np.testing.assert_allclose(p.numpy(), [0.5 * .09, 0.5 * .2], rtol=1e-6)
  c_loss, p_loss = tf.constant([1., 2.]), tf.constant([.5, .25])
  const = tf.constant([10., 100.])
  # Per example: 10 * 1 + .5 + 100 * 2 + .25.
  assert objectives.total_loss(c_loss, p_loss, const, 'example').numpy() \
      == pytest.approx(210.75)
  # The fork's batch-coupled loss: (10 + 100) * (1 + 2) + 2 * (.5 + .25).
  assert objectives.total_loss(c_loss, p_loss, const).numpy() \
      == pytest.approx(331.5)


# --- optimisers and the search on alpha --------------------------------------

def test_adam_matches_keras_adam():
  # Keras' Adam uses TF1's epsilon-hat update; compare three steps.
  grads = [np.array([0.3, -2.0]), np.array([-0.1, 0.5]), np.array([1., 1.])]
  var = tf.Variable([0.5, -0.2])
  keras = tf.keras.optimizers.Adam(1.0, beta_1=.9, beta_2=.999,
                                   epsilon=1e-8)
  opt = optimizers.TF1Adam(1.0)
  p = tf.constant([0.5, -0.2])
  state = opt.init(p)
  for g in grads:
    keras.apply_gradients([(tf.constant(g, tf.float32), var)])
    p, state = opt.apply(p, tf.constant(g, tf.float32), state)
  np.testing.assert_allclose(p.numpy(), var.numpy(), rtol=1e-5)


def test_rmsprop_and_sign_by_hand():
  opt = optimizers.TF1RMSProp(0.1)
  p = tf.constant([1.0])
  state = opt.init(p)
  np.testing.assert_array_equal(state[0].numpy(), [1.])  # ms starts at 1
  p, state = opt.apply(p, tf.constant([2.0]), state)
  ms = 1 + (4 - 1) * 0.1
  mom = 0.1 * 2 / np.sqrt(ms + 1e-6)
  np.testing.assert_allclose(p.numpy(), [1 - mom], rtol=1e-6)
  p, state = opt.apply(p, tf.constant([-1.0]), state)
  ms2 = ms + (1 - ms) * 0.1
  mom2 = 0.9 * mom + 0.1 * -1 / np.sqrt(ms2 + 1e-6)
  np.testing.assert_allclose(p.numpy(), [1 - mom - mom2], rtol=1e-6)
  sign = optimizers.SignedGradient(0.5)
  q, _ = sign.apply(tf.constant([0., 1., 2.]), tf.constant([-3., 0., 1e-9]),
                    sign.init(None))
  np.testing.assert_allclose(q.numpy(), [0.5, 1., 1.5])


def test_update_const_schedule_by_hand():
  # Per example: misses multiply by 10 until the first hit, then bisect.
  hits = np.array([[0, 1, 1], [0, 1, 0], [1, 1, 0], [0, 1, 0], [1, 1, 1]],
                  bool)
  const = tf.fill([3], 100.)
  lower, upper = tf.zeros([3]), tf.fill([3], np.inf)
  seen = []
  for hit in hits:
    const, lower, upper = evasion.update_const(const, lower, upper, hit)
    seen.append(const.numpy())
  np.testing.assert_allclose(np.array(seen), [
      [1000., 50., 50.],
      [10000., 25., 75.],         # ex. 2: lb = 50, ub = 100
      [5500., 12.5, 87.5],        # ex. 1: ub = 10^4, lb = 10^3
      [7750., 6.25, 93.75],
      [6625., 3.125, 90.625]])     # ex. 3: ub = 93.75, lb = 87.5


def test_attack_search_failure_and_success_rules():
  clf = ConstantPrediction()
  x = np.random.default_rng(0).uniform(.2, .8, (2, 4, 4, 1)).astype(
      np.float32)
  labels = np.array([1, 0])  # example 0 always succeeds, example 1 never
  settings = dict(outer_iterations=4, inner_iterations=2)
  r = evasion.CapsuleAttack(clf, 'paper_eval', **settings)(x, labels)
  np.testing.assert_array_equal(r.hit_history, [[1, 0]] * 4)
  np.testing.assert_allclose(r.const_history,
                             [[100, 100], [50, 1e3], [25, 1e4], [12.5, 1e5]])
  np.testing.assert_array_equal(r.success, [True, False])
  assert np.isfinite(r.l2[0]) and r.l2[1] == np.inf
  np.testing.assert_allclose(r.l2[0], np.linalg.norm(r.adversarial[0] - x[0]),
                             rtol=1e-4)
  assert np.isnan(r.adversarial[1]).all()
  clean = evasion.CapsuleAttack(clf, 'paper_eval', on_failure='clean',
                                **settings)(x, labels)
  np.testing.assert_array_equal(clean.adversarial[1], x[1])
  assert clean.l2[1] == np.inf
  # Paper criterion: the prediction must change from the clean one (always
  # 0 here), so nothing succeeds, whatever the label.
  paper = evasion.CapsuleAttack(clf, 'paper_eval', success='clean_prediction',
                                **settings)(x, labels)
  assert not paper.success.any() and np.isnan(paper.adversarial).all()
  np.testing.assert_array_equal(paper.clean_pred, [0, 0])


def test_mask_confines_the_perturbation():
  x = np.zeros((1, 6, 6, 1), np.float32)
  x[0, 1:3, 1:3] = 0.8  # a "stroke"; the mask is 0 from row / column 4 on
  labels = np.array([1])  # always succeeds with ConstantPrediction
  clf = ConstantPrediction((6, 6, 1))
  far = (0, slice(4, None), slice(None), 0)
  # x_adv with p' = 0: x squeezed by the 0.999999 factor (5e-7 for x = 0).
  squeezed = objectives.from_tanh_space(objectives.to_tanh_space(x)).numpy()
  masked = evasion.CapsuleAttack(clf, 'paper_train', outer_iterations=1,
                                 inner_iterations=3)(x, labels).adversarial
  np.testing.assert_allclose(masked[far], squeezed[far], rtol=1e-6)
  assert np.abs(masked - x)[0, :3, :3].max() > 1e-2
  free = evasion.CapsuleAttack(clf, 'paper_train', outer_iterations=1,
                               inner_iterations=3, use_mask=False)(x, labels)
  assert (np.abs(free.adversarial[far] / squeezed[far] - 1) > .1).any()


@pytest.mark.parametrize('preset', ['paper_eval', 'paper_train'])
def test_box_constraint(preset):
  model, _, x = linear_problem([0.1, 0.3])
  x[0, 0, 0, 0], x[1, 3, 3, 0] = 0., 1.
  attack = evasion.CapsuleAttack(classifiers.make_classifier(model, 'PriL'),
                                 preset, outer_iterations=2,
                                 inner_iterations=20, learning_rate=5.,
                                 use_mask=False, on_failure='clean')
  r = attack(x, np.zeros(2, np.int64))
  adv = r.adversarial
  assert np.isfinite(adv).all()
  assert adv.min() >= 0. and adv.max() <= 1.
  # Steps of 5 in the tanh space push the pixels of a success against the
  # lower bound, where an additive perturbation would have left the box;
  # the pixel at 1 stays at 1.
  assert r.success.any()
  for i in np.flatnonzero(r.success):
    assert (adv[i] < 1e-3).sum() >= 4, adv[i].ravel()
  assert adv[1, 3, 3, 0] == 1.
  l2 = np.sqrt(np.sum(np.square(adv - x), axis=(1, 2, 3)))
  np.testing.assert_allclose(r.l2[r.success], l2[r.success], rtol=1e-5)
  np.testing.assert_array_equal(adv[~r.success], x[~r.success])


# --- closed-form minimum -----------------------------------------------------

def test_finds_the_closed_form_minimum_per_example():
  distances = [0.1, 0.2, 0.25, 0.3]
  model, w, x = linear_problem(distances)
  attack = evasion.CapsuleAttack(
      classifiers.make_classifier(model, 'PriL'), 'paper_eval',
      use_mask=False, learning_rate=0.01, inner_iterations=300,
      outer_iterations=15, const_init=1., const_coupling='example')
  r = attack(x, np.zeros(4, np.int64))
  assert r.success.all()
  # Nothing can beat the distance to the hyperplane; the attack is within
  # 1 % of it, and its perturbation points along -w.
  assert (r.l2 >= np.array(distances) * (1 - 1e-4)).all()
  np.testing.assert_allclose(r.l2, distances, rtol=1e-2)
  delta = (r.adversarial - x).reshape(4, -1)
  cosine = -(delta @ w) / np.linalg.norm(delta, axis=1)
  assert (cosine > 0.99).all()


def test_posk_with_kmeans_and_fork_defaults_reaches_the_minimum():
  # PosK: k-means (cosine) on the posterior masses; fork's subset rule and
  # batch coupling (one example per batch: same as per-example).
  model, _, x = linear_problem([0.2], seed=3)
  km = KMeansClassifier(centers=np.eye(2), metric='cosine',
                        feature='posterior', cluster_to_label=[0, 1])
  attack = evasion.CapsuleAttack(
      classifiers.make_classifier(model, 'posk', kmeans=km), 'paper_eval',
      use_mask=False, learning_rate=0.01, inner_iterations=300,
      outer_iterations=14, const_init=1.)
  r = attack(x, np.zeros(1, np.int64))
  np.testing.assert_allclose(r.l2, [0.2], rtol=1e-2)


# --- input validation --------------------------------------------------------

def test_bad_inputs_raise_before_any_work():
  attack = evasion.CapsuleAttack(ConstantPrediction(), 'paper_train')
  x = np.full((2, 4, 4, 1), .5, np.float32)
  y = np.array([0, 1])
  bad = [
      (x[:, :3], y, 'shape'), (x[0], y, 'shape'), (x[:0], y[:0], 'shape'),
      ((x * 255).astype(np.uint8), y, 'dtype'), (x + 1., y, 'values in'),
      (np.where(x > 0, np.nan, x), y, 'NaN'), (x, y[:1], 'labels'),
      (x, y.astype(np.float32), 'integers'), (x, np.array([0, 2]), 'labels'),
      (x, np.array([-1, 0]), 'labels'), ([[0.5]], y, 'images')]
  for images, labels, match in bad:
    with pytest.raises(ValueError, match=match):
      attack(images, labels)
  assert attack._prepare.experimental_get_tracing_count() == 0


def test_bad_settings_and_classifiers():
  clf = ConstantPrediction()
  with pytest.raises(ValueError, match='Unknown attack preset'):
    evasion.CapsuleAttack(clf, 'paper_best')
  with pytest.raises(ValueError, match='Unknown attack setting'):
    evasion.CapsuleAttack(clf, 'paper_eval', inner=3)
  for field, value in (('optimizer', 'sgd'), ('inner_iterations', 0),
                       ('learning_rate', -1.), ('subset', 'all'),
                       ('success', 'any'), ('on_failure', 'zero'),
                       ('capsule_loss', 'l1'), ('const_coupling', 'none')):
    with pytest.raises(ValueError, match=field):
      evasion.CapsuleAttack(clf, 'paper_eval', **{field: value})
  with pytest.raises(ValueError, match='CapsuleClassifier'):
    evasion.CapsuleAttack(object(), 'paper_eval')
  model = ToyLinearCapsules(np.ones(16))
  with pytest.raises(ValueError, match='Unknown classifier'):
    classifiers.make_classifier(model, 'PriX')
  with pytest.raises(ValueError, match='needs a k-means'):
    classifiers.make_classifier(model, 'PriK')
  km = KMeansClassifier(centers=np.eye(2), metric='cosine', feature='prior',
                        cluster_to_label=[0, 1])
  with pytest.raises(ValueError, match='posterior features'):
    classifiers.make_classifier(model, 'PosK', kmeans=km)
  with pytest.raises(ValueError, match='no target'):
    evasion.make_attack(model, 'paper_eval')
  assert evasion.make_attack(model, 'paper_train').classifier.name == 'PosL'
  assert evasion.PRESETS['paper_eval'] == evasion.AttackConfig(
      'adam', 1.0, 9, 300, const_init=100.)
  assert classifiers.kmeans_path_beside('/r/ckpt-5', 'PosK') == \
      '/r/ckpt-5.kmeans_posterior_cosine.npz'


# --- protocol ----------------------------------------------------------------

def test_protocol_numbers_by_hand():
  correct = np.array([True, True, False, True, True])
  success = np.array([True, False, True, True, True])
  l2 = np.array([1.5, 9., 0.3, 4.0, 4.5])
  p = protocol.protocol_l2(correct, success, l2)
  np.testing.assert_array_equal(p, [1.5, np.inf, 0., 4.0, 4.5])
  assert protocol.accuracy_at(p, 0.) == pytest.approx(0.8)  # clean accuracy
  assert protocol.accuracy_at(p, 4.) == pytest.approx(0.4)  # > 4: inf, 4.5
  assert protocol.accuracy_at(p, np.inf) == 0.
  curve = protocol.robust_accuracy_curve(p, 5., step=0.5)
  assert curve['thresholds'][:3] == [0., 0.5, 1.]
  assert curve['accuracy'][0] == pytest.approx(.8)
  assert curve['accuracy'][3] == pytest.approx(.6)   # t = 1.5: 1.5 is not > t
  assert curve['accuracy'][-1] == pytest.approx(.2)
  s = protocol.summarize(p, correct, 4.)
  assert s['clean_accuracy'] == pytest.approx(.8)
  assert s['attack_success_rate'] == pytest.approx(3 / 4)
  assert s['success_rate_incl_clean_errors'] == pytest.approx(4 / 5)
  assert s['mean_l2'] == pytest.approx(np.mean([1.5, 4., 4.5]))
  assert s['std_l2'] == pytest.approx(np.std([1.5, 4., 4.5]))
  assert s['mean_l2_incl_clean_errors'] == pytest.approx(10. / 4)
  assert s['accuracy_at_threshold'] == pytest.approx(.4)
  assert s['robust_accuracy_unbounded'] == pytest.approx(.2)
  assert '| accuracy at L2 <= 4 | 0.4000 |' in protocol.markdown_table(s)


class FakeAttack:
  """Deterministic stand-in: succeeds on even pixel sums, counts calls,
  reports `outer` iterations to the callback."""

  def __init__(self, outer=1):
    self.calls = 0
    self.outer = outer

  def __call__(self, images, labels, seed=None, callback=None):
    self.calls += 1
    n = len(images)
    success = (np.round(images.sum(axis=(1, 2, 3)) * 10) % 2 == 0)
    l2 = np.where(success, images.mean(axis=(1, 2, 3)) * 8, np.inf)
    adv = np.where(success[:, None, None, None], images * .5, np.nan)
    for i in range(self.outer):
      callback(i, self.outer)
    return evasion.AttackResult(
        adversarial=adv.astype(np.float32), success=success,
        l2=l2.astype(np.float32), clean_pred=(labels + (np.arange(n) % 3 == 2)
                                              ) % 10,
        const_history=np.zeros((1, n)), hit_history=success[None])


def test_run_protocol_resumes_and_writes_outputs(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(7, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 7)
  out = str(tmp_path / 'run')
  settings = dict(classifier='PosK', dataset='mnist', num_samples=7)
  protocol.check_settings(out, settings)
  fake = FakeAttack()
  first = protocol.run_protocol(fake, images, labels, out, batch_size=3,
                                indices=np.arange(10, 17), progress=False)
  assert fake.calls == 3
  os.remove(protocol.batch_path(out, 1))
  again = protocol.run_protocol(fake, images, labels, out, batch_size=3,
                                indices=np.arange(10, 17), progress=False)
  assert fake.calls == 4  # only the removed batch was recomputed
  for key in ('perturbation', 'success', 'clean_pred'):
    np.testing.assert_array_equal(first[key], again[key])
  wrong = np.arange(7)
  with pytest.raises(protocol.SettingsMismatchError):
    protocol.run_protocol(fake, images, labels, out, batch_size=3,
                          indices=wrong, progress=False)
  with pytest.raises(protocol.SettingsMismatchError, match='num_samples'):
    protocol.check_settings(out, dict(settings, num_samples=8))
  # Clean errors (every third sample) get amount 0 and their clean image.
  errors = ~first['clean_correct']
  assert (first['perturbation'][errors] == 0).all()
  np.testing.assert_array_equal(first['adversarial'][errors], images[errors])
  summary = protocol.write_outputs(out, first, settings, 4., 5.)
  for name in ('l2.npz', 'adversarial.npz', 'summary.json', 'summary.md',
               'robust_accuracy.json', 'accuracy_vs_l2.png'):
    assert os.path.exists(os.path.join(out, name)), name
  with open(os.path.join(out, 'summary.json')) as f:
    assert json.load(f)['summary'] == summary
  arrays, saved = protocol.load_results(out)
  np.testing.assert_array_equal(arrays['perturbation'], first['perturbation'])
  assert saved == settings
  # The command line overlays several result folders in one plot.
  other = str(tmp_path / 'other')
  protocol.check_settings(other, settings)
  protocol.write_outputs(other, dict(first, perturbation=first['perturbation']
                                     * 2), settings, 4., 5.)
  table = pipeline.compare_runs([out, other], str(tmp_path / 'both'),
                                labels=['a', 'b'])
  assert table.splitlines()[0] == (
      '| run | clean accuracy | accuracy at L2 <= 4 |')
  assert table.splitlines()[2:] == [
      f'| a | {protocol.accuracy_at(first["perturbation"], 0.):.4f} | '
      f'{protocol.accuracy_at(first["perturbation"], 4.):.4f} |',
      f'| b | {protocol.accuracy_at(first["perturbation"], 0.):.4f} | '
      f'{protocol.accuracy_at(first["perturbation"] * 2, 4.):.4f} |']
  assert (tmp_path / 'both' / 'compare.md').read_text() == table + '\n'
  with pytest.raises(ValueError, match='one label per compared folder'):
    pipeline.compare_runs([out, other], str(tmp_path / 'x'), labels=['a'])
  assert pipeline.thresholds('fashion_mnist') == (5., 6.)
  assert pipeline.thresholds('cifar', 2., 3.) == (2., 3.)
  with pytest.raises(ValueError, match="unknown dataset='cifar'"):
    pipeline.thresholds('cifar')
  # The reports are redrawn from the saved results alone.
  os.remove(os.path.join(out, 'summary.json'))
  assert pipeline.redraw_reports(out, threshold=4.) == summary
  with open(os.path.join(out, 'summary.json')) as f:
    assert json.load(f)['summary'] == summary
  # The script: the comparison, without TensorFlow.
  cmp_dir = str(tmp_path / 'cmp')
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'run', 'attack.py'), '--plot_only',
       f'--compare={out},{other}', '--labels=a,b', f'--out_dir={cmp_dir}'],
      capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  assert os.path.exists(os.path.join(cmp_dir, 'accuracy_vs_l2.png'))
  assert done.stdout == table + '\n'


def test_overwrite_removes_the_old_runs_outputs_first(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(5, 4, 4, 1)).astype(np.float32)
  out = tmp_path / 'run'
  old = dict(classifier='PosK', dataset='mnist', num_samples=5, seed=0)
  protocol.check_settings(str(out), old)
  results = protocol.run_protocol(FakeAttack(), images, rng.integers(0, 10, 5),
                                  str(out), batch_size=2, progress=False)
  protocol.write_outputs(str(out), results, old, 4., 5.)
  (out / 'notes.txt').write_text('not written by the attack')
  killed_writes = [out / 'summary.json.0123456789ab.tmp',
                   out / 'batches' / 'batch_00003.npz.ba9876543210.tmp']
  for path in killed_writes:
    path.write_bytes(b'half')
  # Another seed with --overwrite, interrupted straight after the check.
  protocol.check_settings(str(out), dict(old, seed=1), overwrite=True)
  assert sorted(os.listdir(out)) == ['batches', 'notes.txt', 'settings.json']
  assert os.listdir(out / 'batches') == []
  assert json.loads((out / 'settings.json').read_text())['seed'] == 1
  # --plot_only then finds no finished run, instead of drawing the seed-0
  # numbers under seed 1.
  with pytest.raises(FileNotFoundError, match='no finished run'):
    pipeline.redraw_reports(str(out))
  assert not (out / 'summary.json').exists()


def test_a_run_removes_the_writes_a_kill_left_unfinished(tmp_path):
  out = tmp_path / 'run'
  (out / 'batches').mkdir(parents=True)
  settings = dict(classifier='PosK', seed=0)
  killed = out / 'settings.json.0123456789ab.tmp'
  killed.write_bytes(b'{')
  protocol.check_settings(str(out), settings)  # a fresh start
  assert not killed.exists()
  killed_writes = [out / 'l2.npz.0123456789ab.tmp',
                   out / 'batches' / 'batch_00000.npz.ba9876543210.tmp']
  kept = [out / 'notes.0123456789ab.tmp', out / 'batches' / 'notes.txt']
  for path in killed_writes + kept:
    path.write_bytes(b'half')
  protocol.check_settings(str(out), settings)  # a resumed run
  assert [p.exists() for p in killed_writes + kept] == [False, False, True,
                                                        True]


def test_accuracy_plot_says_what_it_shows(tmp_path, monkeypatch):
  settings = dict(dataset='fashion_mnist', split='train', num_samples=5,
                  preset='paper_eval', classifier='PosK',
                  config='fashion_mnist')
  title = 'Fashion-MNIST train, N = 5, preset paper_eval, classifier PosK'
  assert protocol.plot_title([settings]) == title
  # A comparison's title keeps what its runs share.
  assert protocol.plot_title([settings, dict(settings, classifier='PriK')]) \
      == 'Fashion-MNIST train, N = 5, preset paper_eval'
  assert protocol.plot_title([{}]) is None
  p = np.array([0., 1., 2., 5.5, np.inf])
  fig = protocol.accuracy_vs_l2_figure([('SCAE', p)], 6., 5., title)
  ax = fig.axes[0]
  assert ax.get_title() == title
  legend = ax.get_legend()
  assert [t.get_text() for t in legend.get_texts()] == [
      'SCAE: accuracy 0.400 at L2 \u2264 5', 'reported threshold: L2 = 5']
  assert list(ax.lines[-1].get_xdata()) == [5., 5.]
  assert ax.get_xlabel().endswith('(pixel values in [0, 1])')
  assert ax.get_ylabel() == 'Accuracy under attacks of L2 \u2264 t'
  bottom, top = ax.get_ylim()
  assert bottom < 0 and top > 1  # a curve at 0 or 1 is not under the frame
  fig.canvas.draw()
  # Below the axes, the legend covers no curve.
  assert legend.get_window_extent().y1 < ax.get_window_extent().y0
  # The reports draw it with the run's settings.
  drawn = []
  monkeypatch.setattr(protocol, 'plot_accuracy_vs_l2',
                      lambda *args: drawn.append(args))
  protocol.write_reports(str(tmp_path), p, p > 0, settings, 5., 6.)
  assert [(a[0][0][0], a[3], a[4]) for a in drawn] == [
      ('PosK, config fashion_mnist', 5., title)]


def test_progress_bar_counts_whole_images(tmp_path, monkeypatch, capsys):
  # Batches of 2, 2 and 1 images, 3 outer iterations each: a bar counting
  # fractions would show 2/3 of an image after the first iteration.
  import tqdm  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tqdm, 'tqdm', functools.partial(tqdm.tqdm,
                                                      mininterval=0))
  images = np.random.default_rng(0).uniform(size=(5, 4, 4, 1))
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # tqdm's clamping warning included
    protocol.run_protocol(FakeAttack(outer=3), images, np.zeros(5, np.int64),
                          str(tmp_path), batch_size=2, progress=True)
  shown = re.findall(r'\| *([^ |]+)/5 \[', capsys.readouterr().err)
  assert set(shown) == {'0', '1', '2', '3', '4', '5'}, shown
  counts = [int(c) for c in shown]
  assert counts == sorted(counts) and counts[-1] == 5


# --- a checkpoint, end to end ------------------------------------------------

def test_attack_checkpoint_end_to_end(tmp_path):
  data_dir = str(data_path('mnist'))
  tf.random.set_seed(0)
  model = SCAE(configs.tiny_config(canvas_size=40))
  prefix = checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'tiny'))
  settings = dict(dataset='mnist', data_dir=data_dir, num_samples=4,
                  batch_size=2, progress=False,
                  overrides=dict(outer_iterations=1, inner_iterations=2))
  with pytest.raises(FileNotFoundError, match='run run/evaluate.py'):
    pipeline.attack_checkpoint(str(tmp_path), 'PosK',
                               out_dir=str(tmp_path / 'none'), **settings)
  assert not (tmp_path / 'none').exists()

  km = KMeansClassifier(centers=np.eye(3, dtype=np.float32), metric='cosine',
                        feature='posterior', cluster_to_label=[3, 1, 7])
  km.save(loading.kmeans_path(prefix, 'posterior'))
  out = tmp_path / 'out'
  messages = []
  result = pipeline.attack_checkpoint(str(tmp_path), 'posk',
                                      out_dir=str(out), log=messages.append,
                                      **settings)
  assert 'records neither the checkpoint nor the data' in messages[0]
  saved = result['settings']
  assert (saved['classifier'], saved['config'], saved['split']) == (
      'PosK', 'tiny', 'test')
  assert saved['checkpoint_format'] == 'tf2'
  assert saved['kmeans'] == os.path.abspath(
      loading.kmeans_path(prefix, 'posterior'))
  assert saved['attack']['inner_iterations'] == 2
  assert result['summary']['num_samples'] == 4
  # The samples are the seed's draw; their clean predictions, the k-means
  # labels of the model's posterior presences.
  indices = np.random.default_rng(0).choice(10000, 4, replace=False)
  with np.load(out / 'l2.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    images, labels = data.load_split(data_dir, 'test')
    np.testing.assert_array_equal(z['labels'], labels[indices])
    features = kmeans.collect_features(
        model, data.preprocess(images[indices], 'resize'))
    np.testing.assert_array_equal(z['clean_pred'], km.predict(features))
  with pytest.raises(ValueError, match='exceeds the 10000 examples'):
    pipeline.attack_checkpoint(prefix, 'PriL', **dict(settings,
                                                       num_samples=10001))


def test_attack_refuses_a_kmeans_of_another_checkpoint_or_data(tmp_path):
  prefixes = []
  for seed in (0, 1):
    tf.random.set_seed(seed)
    prefixes.append(checkpoints.save_tf2_checkpoint(
        SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / f'm{seed}')))
  fitted, attacked = prefixes
  km = KMeansClassifier(centers=np.eye(3, dtype=np.float32), metric='cosine',
                        feature='posterior', cluster_to_label=[3, 1, 7],
                        metadata=kmeans.fitted_on(fitted, 'mnist', 'resize',
                                                  'tiny'))
  path = km.save(str(tmp_path / 'km.npz'))
  km.save(loading.kmeans_path(fitted, 'posterior'))
  out = tmp_path / 'out'
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2, progress=False,
                  out_dir=str(out),
                  overrides=dict(outer_iterations=1, inner_iterations=1))
  with pytest.raises(kmeans.KMeansMismatchError, match=re.escape(
      f'k-means file {path} was fitted on checkpoint {fitted} ')):
    pipeline.attack_checkpoint(attacked, 'PosK', kmeans=path, **settings)
  # The one beside the checkpoint is checked too.
  with pytest.raises(kmeans.KMeansMismatchError,
                     match='with preprocess resize, not pad_center'):
    pipeline.attack_checkpoint(fitted, 'PosK', preprocess='pad_center',
                               **settings)
  assert not out.exists()
  messages = []
  result = pipeline.attack_checkpoint(attacked, 'PosK', kmeans=path,
                                      allow_kmeans_mismatch=True,
                                      log=messages.append, **settings)
  assert messages[0].startswith(f'warning: k-means file {path} was fitted '
                                f'on checkpoint {fitted} ')
  assert result['settings']['kmeans'] == path
  assert result['summary']['num_samples'] == 2


# --- fault injection: SIGKILL and resume -------------------------------------

@pytest.fixture
def killable_attack(tmp_path):
  """Runs tests/helpers/attack_run.py (a 3-batch PosK attack of a tiny
  checkpoint) as `run(out_dir, kill_at=-1)` -> (exit status, its stdout
  lines: the events of a finished run, `killed at <event>` of a killed
  one)."""
  prefix = tiny_posk_checkpoint(tmp_path)
  script = os.path.join(REPO, 'tests', 'helpers', 'attack_run.py')
  data_dir = str(data_path('mnist'))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
      filter(None, (REPO, os.environ.get('PYTHONPATH')))))

  def run(out_dir, kill_at=-1):
    done = subprocess.run(
        [sys.executable, script, prefix, data_dir, str(out_dir),
         str(kill_at)], env=env, capture_output=True, text=True, timeout=900,
        check=False)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode, done.stdout.splitlines()

  return run


def test_attack_killed_in_a_save_and_between_saves_ends_bit_identical(
    tmp_path, killable_attack):
  status, events = killable_attack(tmp_path / 'full')
  assert status == 0 and events.count('outer') == 9  # 3 batches x 3
  full = outputs(tmp_path / 'full')
  out = tmp_path / 'killed'
  # In the save of batch 1: written, not yet renamed.
  assert killable_attack(out, 'batches/batch_00001.npz written') == (
      -signal.SIGKILL, ['killed at batches/batch_00001.npz written'])
  assert sorted(os.listdir(out / 'batches'))[0] == 'batch_00000.npz'
  assert len(os.listdir(out / 'batches')) == 2
  # Between saves: after the first attack iteration of the resumed run.
  assert killable_attack(out, 'outer')[0] == -signal.SIGKILL
  status, resumed = killable_attack(out)
  assert status == 0
  # The last run attacked batches 1 and 2 only, and ends as the full run.
  assert resumed.count('outer') == 6
  assert_same_outputs(out, full)


@pytest.mark.slow
def test_attack_killed_at_20_random_points_ends_bit_identical(
    tmp_path, killable_attack):
  """SIGKILL at 20 events drawn with a fixed seed (in a save, or between
  saves), each run resuming the last; every run that finishes has written
  the files of an uninterrupted run."""
  status, events = killable_attack(tmp_path / 'full')
  assert status == 0
  full = outputs(tmp_path / 'full')
  rng = np.random.default_rng(20)
  out, killed_at, finished = tmp_path / 'killed', [], 0
  while len(killed_at) < 20:
    status, lines = killable_attack(out, int(rng.integers(len(events))))
    if status == 0:  # a resumed run has fewer events left than drawn
      assert_same_outputs(out, full)
      shutil.rmtree(out)
      finished += 1
    else:
      killed_at.append(lines[-1].split(' ')[-1])
  assert killable_attack(out)[0] == 0
  assert_same_outputs(out, full)
  assert finished >= 1
  # Kills fell in each stage of a save, and between saves.
  assert set(killed_at) == {'open', 'written', 'renamed', 'outer'}


# --- labels of modified presets (issue 25, item 2) ---------------------------

def test_a_modified_preset_is_never_labelled_by_its_name_alone(tmp_path,
                                                               monkeypatch):
  from attacks import settings as settings_lib  # pylint: disable=g-import-not-at-top
  paper = evasion.get_config('paper_eval', seed=3)
  changed = settings_lib.changed_settings(
      paper, paper.replace(inner_iterations=10, outer_iterations=2,
                           learning_rate=1.))
  # In the config's field order; a value equal to the preset's is no change.
  assert changed == dict(outer_iterations=2, inner_iterations=10)
  assert settings_lib.preset_label('paper_eval', changed) == \
      'paper_eval, modified: outer 2, inner 10'
  assert settings_lib.preset_label('pgd_l2_min', dict(
      steps=10, search_steps=2)) == \
      'pgd_l2_min, modified: steps 10, search_steps 2'
  assert settings_lib.preset_label('paper_eval', {}) == 'paper_eval'
  # The reports: summary.md, the plot's title.
  settings = dict(dataset='mnist', split='test', num_samples=5,
                  preset='paper_eval', modified=changed, classifier='PosK')
  label = 'paper_eval, modified: outer 2, inner 10'
  assert protocol.plot_title([settings]) == \
      f'MNIST test, N = 5, preset {label}, classifier PosK'
  # Runs that share the preset but not its changes share no label.
  assert protocol.plot_title([settings, dict(settings, modified=None)]) == \
      'MNIST test, N = 5, classifier PosK'
  drawn = []
  monkeypatch.setattr(protocol, 'plot_accuracy_vs_l2',
                      lambda *args: drawn.append(args))
  p = np.array([0., 1., np.inf])
  protocol.write_reports(str(tmp_path), p, p > 0, settings, 4., 5.)
  assert label in drawn[0][4]
  assert f'| preset | {label} |' in (tmp_path / 'summary.md').read_text()
  assert json.loads((tmp_path / 'summary.json').read_text())['settings'][
      'modified'] == changed


def test_a_run_labels_its_modified_presets_everywhere(tmp_path, monkeypatch):
  """Banner, summary files and plot titles of an attack run with the
  preset's settings overridden; the unmodified ones keep the bare name."""
  tf.random.set_seed(0)
  prefix = checkpoints.save_tf2_checkpoint(
      SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / 'tiny'))
  titles = []
  draw = protocol.plot_accuracy_vs_l2
  monkeypatch.setattr(protocol, 'plot_accuracy_vs_l2',
                      lambda *args: titles.append(args[4]) or draw(*args))
  messages = []
  out = tmp_path / 'out'
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2, progress=False,
                  attack='capsule,pgd_l2,ddn', sanity=False, out_dir=str(out),
                  overrides=dict(outer_iterations=1, inner_iterations=2),
                  pgd_overrides=dict(steps=2, search_steps=1))
  pipeline.attack_checkpoint(prefix, 'PriL', log=messages.append, **settings)
  capsule = 'paper_eval, modified: outer 1, inner 2'
  pgd_label = 'pgd_l2_min, modified: steps 2, search_steps 1'
  banners = [m for m in messages if m.startswith('checkpoint ')]
  assert [b.split('; attack ')[1].split(' gradient')[0] for b in banners] == [
      f'capsule ({capsule}, code', f'pgd_l2 ({pgd_label}, full',
      'ddn (ddn, full']
  for name, label in (('capsule', capsule), ('pgd_l2', pgd_label),
                      ('ddn', 'ddn')):
    md = (out / name / 'summary.md').read_text()
    assert f'| preset | {label} |' in md
  assert titles[:3] == [f'MNIST test, N = 2, preset {label}, classifier PriL'
                        for label in (capsule, pgd_label, 'ddn')]
  # The worst case's plot: no preset is common to all three.
  assert 'preset' not in titles[3]
  # Redrawn from the saved settings: the same label.
  pipeline.redraw_reports(str(out / 'pgd_l2'))
  assert titles[-1] == f'MNIST test, N = 2, preset {pgd_label}, classifier PriL'
  # The same command resumes (the label is no setting of its own).
  messages.clear()
  pipeline.attack_checkpoint(prefix, 'PriL', log=messages.append, **settings)
  assert any(capsule in m for m in messages)


def test_a_run_saved_before_the_labels_resumes_and_gets_its_label(tmp_path):
  out = str(tmp_path / 'run')
  old = dict(classifier='PosK', preset='paper_eval',
             attack=dict(outer_iterations=2))
  protocol.check_settings(out, old)
  new = dict(old, modified=dict(outer_iterations=2))
  protocol.check_settings(out, new)  # no SettingsMismatchError
  assert json.loads(open(os.path.join(out, 'settings.json')).read()) == new
  with pytest.raises(protocol.SettingsMismatchError,
                     match=r'attack.outer_iterations: 2 -> 3'):
    protocol.check_settings(out, dict(new, attack=dict(outer_iterations=3)))


def test_worst_case_names_its_runs_relative_to_itself(tmp_path):
  """worst_case.json lists the attacks' folders relative to the file (as
  sanity.json does), not as paths of the machine that ran them."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(4, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 4)
  out = tmp_path / 'all'
  folders = []
  for name in ('capsule', 'pgd_l2'):
    folder = str(out / name)
    settings = dict(classifier='PosK', dataset='mnist', num_samples=4,
                    **({} if name == 'capsule' else dict(attack_name=name)))
    protocol.check_settings(folder, settings)
    results = protocol.run_protocol(FakeAttack(), images, labels, folder,
                                    batch_size=2, progress=False)
    protocol.write_outputs(folder, results, settings, 4., 5.)
    folders.append(os.path.abspath(folder))
  pipeline.write_worst_case(str(out), folders, 4., 5.)
  saved = json.loads((out / 'worst_case.json').read_text())
  assert saved['runs'] == ['capsule', 'pgd_l2']
