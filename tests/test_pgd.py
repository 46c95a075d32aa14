"""PGD-L2 (`attacks.pgd`): a fixed budget, the minimal-norm search and
APGD's schedule, on the linear toy of helpers/attack_toys.py (closed-form
minimal distances d: the image at distance d from the boundary flips at L2
exactly d) and on margins written out here."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import pgd
from helpers.attack_toys import linear_problem, toy_target


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
