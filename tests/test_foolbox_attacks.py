"""Foolbox's DDN and FMN through `attacks.foolbox_attacks`, on the linear
toy of helpers/attack_toys.py (closed-form minimal distances d: the image
at distance d from the boundary a = 0 flips at L2 exactly d, along -w)."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, foolbox_attacks
from helpers.attack_toys import LinearProbeToy, linear_problem
from helpers.attack_toys import several_clusters_target, toy_target


@pytest.mark.parametrize('name', ['PriK', 'PriL'])
def test_logits_argmax_is_the_classifiers_prediction(name):
  _, w, _ = linear_problem([.1], seed=0)
  clf = several_clusters_target(w) if name == 'PriK' else toy_target(w, name)
  images = tf.random.uniform([300, 4, 4, 1], seed=3)
  logits = foolbox_attacks.ClassifierLogits(clf)(images).numpy()
  features, pred = clf(images)
  assert logits.shape == (300, clf.num_classes) and np.isfinite(logits).all()
  np.testing.assert_array_equal(logits.argmax(1), pred.numpy())
  assert set(pred.numpy()) == {0, 1}
  if name == 'PriK':
    # The images reach most clusters, so several per label decide.
    assert len(set(clf.kmeans.assign(features.numpy()))) >= 5
    # The class without a cluster sits below every real score.
    assert (logits[:, 2] < logits[:, :2].min(1)).all()
  # The Foolbox model gives the same logits.
  fmodel = foolbox_attacks.foolbox_model(clf)
  np.testing.assert_allclose(fmodel(images).numpy(), logits, rtol=1e-6)


@pytest.mark.parametrize('preset, rtol', [('ddn', 5e-3), ('fmn', 1e-3)])
@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_minimal_norm_finds_the_closed_form_distance(name, preset, rtol):
  """100 steps (the presets'). Measured excess over d (seeds 5, 6): DDN
  <= 0.07 % (its norm moves by 1 +- gamma = 5 % a step, and the smallest
  adversarial norm it visits is kept), FMN <= 0.003 % (its gamma anneals to
  0.1 %): rtol is ~7x and ~30x that. No attack may beat d (float32
  rounding aside). The clean error (d < 0) is a success at L2 0."""
  d = np.array([.05, .1, .17, .25, .33, -.1])
  _, w, x = linear_problem(d, seed=5)
  attack = foolbox_attacks.FoolboxAttack(toy_target(w, name), preset)
  calls = []
  r = attack(x, np.zeros(len(d), np.int64), seed=1,
             callback=lambda i, n: calls.append((i, n)))
  assert calls == [(i, 100) for i in range(100)]
  assert r.success.all()
  assert (r.l2[:5] >= d[:5] * (1 - 1e-5)).all()
  np.testing.assert_allclose(r.l2[:5], d[:5], rtol=rtol)
  assert r.l2[5] == 0. and (r.adversarial[5] == x[5]).all()
  np.testing.assert_array_equal(r.clean_pred, [0, 0, 0, 0, 0, 1])
  a = (r.adversarial.reshape(len(d), -1) - .5) @ w
  assert (a < 0).all()
  assert r.adversarial.min() >= 0. and r.adversarial.max() <= 1.


def test_stock_foolbox_fmn_does_not_project():
  """Why the fmn preset runs `L2FMNOnBall`: Foolbox 3.3.4's L2 FMN never
  scales its step onto the epsilon ball, so its first step (max_stepsize 1)
  overshoots and it never comes back: every sample at L2 1. If this fails,
  Foolbox projects now: drop the subclass."""
  d = np.array([.1, .25])
  _, w, x = linear_problem(d, seed=5)
  r = foolbox_attacks.FoolboxAttack(toy_target(w), 'fmn', steps=20,
                                    fmn_projection='foolbox')(
                                        x, np.zeros(2, np.int64))
  assert r.success.all()
  np.testing.assert_allclose(r.l2, 1., rtol=1e-4)


def test_success_and_l2_are_reverified(monkeypatch):
  """Foolbox's returned images are judged by our classifier: the clean
  image (not misclassified), a NaN image and a misclassified image outside
  the box are failures; a genuine one succeeds at its recomputed L2."""
  d = np.array([.1, .2, .2, .3])
  _, w, x = linear_problem(d, seed=5)
  flat_w = w.reshape(4, 4, 1).astype(np.float32)
  outside = (x[2] - 1.5 * d[2] * flat_w).astype(np.float32)
  outside[0, 0, 0] = -.5  # lowers a further: misclassified, out of the box
  genuine = (x[3] - 1.2 * d[3] * flat_w).astype(np.float32)
  returned = np.stack([x[0], np.full_like(x[1], np.nan), outside, genuine])
  for on_failure in ('nan', 'clean'):
    attack = foolbox_attacks.FoolboxAttack(toy_target(w), 'ddn',
                                           on_failure=on_failure)
    monkeypatch.setattr(attack, '_run_foolbox', lambda i, l: returned)
    r = attack(x, np.zeros(4, np.int64))
    np.testing.assert_array_equal(r.success, [False, False, False, True])
    assert np.isinf(r.l2[:3]).all()
    np.testing.assert_allclose(r.l2[3], 1.2 * d[3], rtol=1e-5)
    np.testing.assert_array_equal(r.adversarial[3], genuine)
    if on_failure == 'nan':
      assert np.isnan(r.adversarial[:3]).all()
    else:
      np.testing.assert_array_equal(r.adversarial[:3], x[:3])


def test_clean_errors_are_successes_at_zero_and_skip_foolbox(monkeypatch):
  d = np.array([-.1, .2, -.3])
  _, w, x = linear_problem(d, seed=5)
  attack = foolbox_attacks.FoolboxAttack(toy_target(w, 'PriK'), 'fmn',
                                         steps=50)
  sent = []
  run = attack._run_foolbox
  monkeypatch.setattr(attack, '_run_foolbox',
                      lambda i, l: sent.append(len(i)) or run(i, l))
  r = attack(x, np.zeros(3, np.int64))
  assert sent == [1]
  np.testing.assert_array_equal(r.success, [True, True, True])
  np.testing.assert_array_equal(r.l2[[0, 2]], [0., 0.])
  np.testing.assert_array_equal(r.adversarial[[0, 2]], x[[0, 2]])
  np.testing.assert_allclose(r.l2[1], .2, rtol=1e-3)
  # All clean errors: Foolbox is not called at all.
  r = attack(x[[0, 2]], np.zeros(2, np.int64))
  assert sent == [1] and r.success.all() and (r.l2 == 0.).all()


def test_bad_settings():
  _, w, _ = linear_problem([.1], seed=0)
  with pytest.raises(ValueError, match='preset .pgd.; expected one of ddn, '
                     'fmn or a FoolboxConfig'):
    foolbox_attacks.FoolboxAttack(toy_target(w), 'pgd')
  with pytest.raises(ValueError, match=r"Unknown Foolbox setting\(s\) "
                     r"\['eps'\]"):
    foolbox_attacks.get_config('ddn', eps=1.)
  with pytest.raises(ValueError, match='attack=.cw. is not one of'):
    foolbox_attacks.get_config('ddn', attack='cw')
  with pytest.raises(ValueError, match='gamma must be below 1'):
    foolbox_attacks.get_config('fmn', gamma=1.)
  with pytest.raises(ValueError, match='ModelClassifier'):
    foolbox_attacks.ClassifierLogits(object())


def test_ddn_draws_only_where_the_gradient_vanishes_and_the_seed_fixes_it():
  """With w scaled by 200 the features saturate: the gradient is exactly
  zero and DDN steps in random directions (`tf.random.normal`). The call's
  seed makes that reproducible; another seed gives other images."""
  d = np.array([.2, .3, .25])
  _, w, x = linear_problem(d, seed=5)
  clf = classifiers.make_classifier(LinearProbeToy(200 * w), 'PriL')
  attack = foolbox_attacks.FoolboxAttack(clf, 'ddn', steps=30)
  y = np.zeros(3, np.int64)
  r1, r2, r3 = attack(x, y, seed=1), attack(x, y, seed=1), attack(x, y,
                                                                   seed=2)
  np.testing.assert_array_equal(r1.adversarial, r2.adversarial)
  np.testing.assert_array_equal(r1.l2, r2.l2)
  assert not np.array_equal(r1.adversarial, r3.adversarial, equal_nan=True)
