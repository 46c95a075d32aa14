"""Our compiled DDN (`attacks.ddn`) on the linear toy of
helpers/attack_toys.py (closed-form minimal distances d: the image at
distance d from the boundary a = 0 flips at L2 exactly d, along -w), against
the closed form and against Foolbox's DDN (`attacks.foolbox_attacks`)."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, ddn, foolbox_attacks
from helpers.attack_toys import LinearProbeToy, linear_problem
from helpers.attack_toys import several_clusters_target, toy_target

DISTANCES = np.array([.05, .1, .17, .25, .33, -.1])


class StoppedToy(LinearProbeToy):
  """The toy with its gradient stopped: tape.gradient gives None."""

  def capsule_features(self, images, kind, gradient='code'):
    return super().capsule_features(tf.stop_gradient(images), kind, gradient)


def saturated_problem(scale=1000., toy=LinearProbeToy):
  """The toy with w scaled by `scale`. At these distances (a = 200 to 300
  for scale 1000) the sigmoid features are exactly 0 and 1 in float32 and
  the input gradient of the cross-entropy is exactly 0; with scale 200 it
  is tiny (1e-17 to 1e-25) but not zero."""
  d = np.array([.2, .3, .25])
  _, w, x = linear_problem(d, seed=5)
  clf = classifiers.make_classifier(toy(scale * w), 'PriL')
  return clf, x, np.zeros(len(d), np.int64), d


def input_gradient(attack, x, y):
  with tf.GradientTape() as tape:
    images = tf.constant(x)
    tape.watch(images)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        y, attack.logits.logits(images))
  return tape.gradient(loss, images).numpy()


@pytest.mark.parametrize('seed', [5, 6])
@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_finds_the_closed_form_distance(name, seed):
  """100 steps (the preset's). The noise of `linear_problem` is orthogonal
  to w and the gradient is along -w from the first step on, so delta stays
  along -w and the L2 kept is the smallest adversarial epsilon visited: its
  excess over d depends on d alone. Measured (seeds 5, 6, 7; PriL and PriK
  alike, and Foolbox's DDN the same): 0.070, 0.062, 0.045, 0.010, 0.019 %
  for d = .05, .1, .17, .25, .33. rtol 0.1 % is that worst case plus
  margin. No result may beat d (float32 rounding aside). The clean error
  (d < 0) is a success at L2 0 with the clean image."""
  d = DISTANCES
  _, w, x = linear_problem(d, seed=seed)
  attack = ddn.DDNAttack(toy_target(w, name))
  calls = []
  r = attack(x, np.zeros(len(d), np.int64), seed=1,
             callback=lambda i, n: calls.append((i, n)))
  assert calls == [(0, 1)]
  assert r.success.all()
  assert (r.l2[:5] >= d[:5] * (1 - 1e-5)).all()
  np.testing.assert_allclose(r.l2[:5], d[:5], rtol=1e-3)
  assert r.l2[5] == 0. and (r.adversarial[5] == x[5]).all()
  np.testing.assert_array_equal(r.clean_pred, [0, 0, 0, 0, 0, 1])
  a = (r.adversarial.reshape(len(d), -1) - .5) @ w
  assert (a < 0).all()
  assert r.adversarial.min() >= 0. and r.adversarial.max() <= 1.


@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_agrees_with_foolbox_ddn(name):
  """Same algorithm and schedule: on the toy (gradient never zero, so no
  random draw) the two keep the same points. Measured: L2 equal within
  1.8e-7 relative (a float32 ulp or two: Foolbox's eager ops against our
  graph); rtol 1e-5."""
  d = DISTANCES
  _, w, x = linear_problem(d, seed=5)
  clf = toy_target(w, name)
  y = np.zeros(len(d), np.int64)
  ours = ddn.DDNAttack(clf)(x, y, seed=1)
  theirs = foolbox_attacks.FoolboxAttack(clf, 'ddn')(x, y, seed=1)
  np.testing.assert_array_equal(ours.success, theirs.success)
  np.testing.assert_allclose(ours.l2, theirs.l2, rtol=1e-5)
  np.testing.assert_allclose(ours.adversarial, theirs.adversarial,
                             atol=1e-5)
  np.testing.assert_allclose(ours.l2[:5], d[:5], rtol=1e-3)


@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_logits_argmax_is_the_prediction(name):
  """The loop judges points by the argmax of `ClassifierLogits`; the
  classifier's own prediction (`attack.predict`) is the same."""
  _, w, _ = linear_problem([.1], seed=0)
  clf = several_clusters_target(w) if name == 'PriK' else toy_target(w, name)
  attack = ddn.DDNAttack(clf)
  images = tf.random.stateless_uniform([200, 4, 4, 1], seed=[3, 4])
  np.testing.assert_array_equal(
      attack.logits(images).numpy().argmax(1), attack.predict(images))


def test_zero_gradient_steps_randomly_from_its_own_seeded_generator():
  """Where the gradient is exactly zero DDN steps along a random direction
  of its own generator: the same seed gives the same result (seed None =
  the config's seed), another seed other images; TF's global seed is
  neither read nor advanced."""
  clf, x, y, _ = saturated_problem()
  attack = ddn.DDNAttack(clf, steps=30)
  assert not input_gradient(attack, x, y).any()
  tf.random.set_seed(7)
  expected = tf.random.uniform([5]).numpy()
  tf.random.set_seed(7)
  r1 = attack(x, y, seed=1)
  np.testing.assert_array_equal(tf.random.uniform([5]).numpy(), expected)
  r2, r3 = attack(x, y, seed=1), attack(x, y, seed=2)
  assert r1.success.any()  # random points beyond the boundary
  np.testing.assert_array_equal(r1.adversarial, r2.adversarial)
  np.testing.assert_array_equal(r1.l2, r2.l2)
  assert not np.array_equal(r1.adversarial, r3.adversarial, equal_nan=True)
  default = attack(x, y)
  np.testing.assert_array_equal(default.adversarial,
                                attack(x, y, seed=0).adversarial)
  np.testing.assert_array_equal(
      ddn.DDNAttack(clf, steps=30, seed=2)(x, y).adversarial,
      r3.adversarial)


def test_tiny_and_stopped_gradients():
  """A tiny gradient (w x 200: components 1e-17 to 1e-25, their squares
  underflow) keeps its direction: d found as on the plain toy (same excess,
  measured 0.055, 0.042, 0.010 % for d = .2, .3, .25) whatever the seed
  (a step or two far out, where the gradient does round to 0, may draw:
  the images differ by an ulp). A stopped gradient (None from the tape) is a zero one: a random
  search, which still crosses the boundary (measured L2 2.4 to 4.7 d)."""
  clf, x, y, d = saturated_problem(200.)
  attack = ddn.DDNAttack(clf)
  g = np.abs(input_gradient(attack, x, y)).reshape(len(d), -1).max(1)
  assert (g > 0).all() and (g < 1e-16).all()
  r1, r2 = attack(x, y, seed=1), attack(x, y, seed=2)
  assert r1.success.all()
  np.testing.assert_allclose(r1.l2, d, rtol=1e-3)
  assert (r1.l2 >= d * (1 - 1e-5)).all()
  np.testing.assert_allclose(r2.l2, r1.l2, rtol=1e-5)

  clf, x, y, d = saturated_problem(1., StoppedToy)
  r = ddn.DDNAttack(clf)(x, y, seed=1)
  assert r.success.all() and (r.l2 > d).all()
  assert (r.adversarial.min() >= 0.) and (r.adversarial.max() <= 1.)


def test_unit_directions_by_hand():
  """Rows: a tiny gradient, a huge one, zero, NaN: the first two are
  normalised along themselves, the last two replaced by the unit noise."""
  base = np.arange(1., 17.).reshape(4, 4, 1).astype(np.float32)
  grad = np.stack([1e-30 * base, 1e30 * base, 0. * base,
                   np.where(base > 8, np.nan, base)]).astype(np.float32)
  noise = np.full_like(grad, 3.)
  unit = ddn.unit_directions(tf.constant(grad), tf.constant(noise)).numpy()
  want = base / np.linalg.norm(base)
  np.testing.assert_allclose(unit[0], want, rtol=1e-6)
  np.testing.assert_allclose(unit[1], want, rtol=1e-6)
  np.testing.assert_allclose(unit[2:], .25, rtol=1e-6)


def test_clean_errors_and_failures():
  """Clean errors: successes at L2 0 with the clean image, not attacked. A
  classifier that never changes its prediction (w = 0: a constant 0, zero
  gradient everywhere) is never fooled: NaN images (or the clean ones with
  on_failure='clean'), L2 inf."""
  d = np.array([-.1, .2, -.3])
  _, w, x = linear_problem(d, seed=5)
  attack = ddn.DDNAttack(toy_target(w, 'PriK'), steps=50)
  sent = []
  run = attack._run  # pylint: disable=protected-access
  attack._run = lambda i, l: sent.append(len(i)) or run(i, l)  # pylint: disable=protected-access
  r = attack(x, np.zeros(3, np.int64))
  assert sent == [1]
  np.testing.assert_array_equal(r.success, [True, True, True])
  np.testing.assert_array_equal(r.l2[[0, 2]], [0., 0.])
  np.testing.assert_array_equal(r.adversarial[[0, 2]], x[[0, 2]])
  np.testing.assert_allclose(r.l2[1], .2, rtol=2e-3)
  r = attack(x[[0, 2]], np.zeros(2, np.int64))
  assert sent == [1] and r.success.all() and (r.l2 == 0.).all()

  const = classifiers.make_classifier(LinearProbeToy(np.zeros(16)), 'PriL')
  y = np.zeros(3, np.int64)
  for on_failure in ('nan', 'clean'):
    r = ddn.DDNAttack(const, steps=20, on_failure=on_failure)(x, y)
    assert not r.success.any() and np.isinf(r.l2).all()
    np.testing.assert_array_equal(r.clean_pred, y)
    if on_failure == 'nan':
      assert np.isnan(r.adversarial).all()
    else:
      np.testing.assert_array_equal(r.adversarial, x)


def test_success_and_l2_are_reverified():
  """The kept images are judged by a fresh forward pass of the classifier:
  the clean image (not misclassified), a NaN image and a misclassified
  image outside the box are failures whatever the loop said; a genuine one
  succeeds at its recomputed L2; an L2 of inf (nothing kept) is a
  failure."""
  d = np.array([.1, .2, .2, .3, .3])
  _, w, x = linear_problem(d, seed=5)
  flat_w = w.reshape(4, 4, 1).astype(np.float32)
  outside = (x[2] - 1.5 * d[2] * flat_w).astype(np.float32)
  outside[0, 0, 0] = -.5  # misclassified, out of the box
  genuine = (x[3] - 1.2 * d[3] * flat_w).astype(np.float32)
  kept = np.stack([x[0], np.full_like(x[1], np.nan), outside, genuine,
                   genuine])
  kept_l2 = np.array([.1, .1, .1, .1, np.inf], np.float32)
  attack = ddn.DDNAttack(toy_target(w))
  attack._run = lambda i, l: (tf.constant(kept), tf.constant(kept_l2))  # pylint: disable=protected-access
  r = attack(x, np.zeros(5, np.int64))
  np.testing.assert_array_equal(r.success, [False, False, False, True,
                                            False])
  assert np.isinf(r.l2[[0, 1, 2, 4]]).all()
  np.testing.assert_allclose(r.l2[3], 1.2 * d[3], rtol=1e-5)
  np.testing.assert_array_equal(r.adversarial[3], genuine)
  assert np.isnan(r.adversarial[[0, 1, 2, 4]]).all()


def test_xla_and_levels():
  """jit_compile=True keeps the same points (no random draw on the toy).
  levels=256 on images on that grid: every point on the grid, successes at
  L2 >= the closed form (the grid can only cost distance: measured excess
  up to 0.8 % at d = .05)."""
  d = DISTANCES
  _, w, x = linear_problem(d, seed=5)
  y = np.zeros(len(d), np.int64)
  plain = ddn.DDNAttack(toy_target(w))(x, y)
  xla = ddn.DDNAttack(toy_target(w), jit_compile=True)(x, y)
  np.testing.assert_array_equal(xla.success, plain.success)
  np.testing.assert_allclose(xla.l2, plain.l2, rtol=1e-5)

  xq = (np.round(x * 255) / 255).astype(np.float32)
  dq = (xq.reshape(len(d), -1) - .5) @ w
  r = ddn.DDNAttack(toy_target(w), levels=256)(xq, y)
  assert r.success.all() and r.l2[5] == 0.
  grid = r.adversarial * 255
  np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)
  assert (r.l2[:5] >= dq[:5] * (1 - 1e-5)).all()
  np.testing.assert_allclose(r.l2[:5], dq[:5], rtol=.02)


def test_step_sizes_by_hand():
  """Cosine annealing from init_step at k = 0 towards min_step."""
  cfg = ddn.get_config(steps=4, init_step=1., min_step=.2)
  cos = (1. + np.cos(np.pi * np.arange(4) / 4)) / 2.
  np.testing.assert_allclose(ddn.step_sizes(cfg), .2 + .8 * cos, rtol=1e-6)
  alphas = ddn.step_sizes(ddn.get_config())
  assert alphas[0] == 1. and (np.diff(alphas) < 0).all()
  assert .01 < alphas[-1] < .011


def test_bad_settings():
  _, w, _ = linear_problem([.1], seed=0)
  with pytest.raises(ValueError, match='preset .pgd.; expected one of ddn '
                     'or a DDNConfig'):
    ddn.DDNAttack(toy_target(w), 'pgd')
  with pytest.raises(ValueError, match=r"Unknown DDN setting\(s\) "
                     r"\['eps'\]"):
    ddn.get_config('ddn', eps=1.)
  for gamma in (1., 1.5):
    with pytest.raises(ValueError, match='gamma must be below 1'):
      ddn.get_config(gamma=gamma)
  for steps in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match='steps must be a positive integer'):
      ddn.get_config(steps=steps)
  with pytest.raises(ValueError, match='init_epsilon must be a positive'):
    ddn.get_config(init_epsilon=0.)
  with pytest.raises(ValueError, match='must not exceed init_step'):
    ddn.get_config(min_step=2.)
  with pytest.raises(ValueError, match='levels must be an integer >= 2'):
    ddn.get_config(levels=1)
  with pytest.raises(ValueError, match='on_failure=.drop. is not one of'):
    ddn.get_config(on_failure='drop')
  with pytest.raises(ValueError, match='ModelClassifier'):
    ddn.DDNAttack(object())
