"""The attack targets PriK, PosK, PriL and PosL (`attacks.classifiers`) on
the toy `TwoHeads` (helpers/attack_toys.py), whose heads look at different
pixels: each target reads its own feature and prediction; and on the SCAE,
without its noise."""

import numpy as np
import tensorflow as tf

from attacks import classifiers
from helpers.attack_toys import CLEAN_PRED, target, two_heads_problem
from scae_tf import configs
from scae_tf.capsules.model import SCAE


def _sigmoid(z):
  return 1. / (1. + np.exp(-z))


def test_each_target_reads_its_own_feature_and_prediction():
  model, u, v, _ = two_heads_problem([], [])
  rng = np.random.default_rng(1)
  x = rng.uniform(0.1, 0.9, (64, 4, 4, 1)).astype(np.float32)
  flat = x.reshape(64, -1) - 0.5
  a, b = flat @ u, flat @ v
  assert {(s, t) for s, t in zip(a > 0, b > 0)} == {
      (True, True), (True, False), (False, True), (False, False)}
  prior = np.stack([_sigmoid(a), _sigmoid(-a)], 1)
  posterior = np.stack([_sigmoid(2 * b) + _sigmoid(4 * b),
                        _sigmoid(-2 * b) + _sigmoid(-4 * b)], 1)
  want = dict(PriK=(prior, np.where(a > 0, 3, 2)),
              PosK=(posterior, np.where(b > 0, 1, 0)),
              PriL=(prior, np.where(a > 0, 0, 1)),
              PosL=(posterior, np.where(b > 0, 2, 3)))
  for name, (features, pred) in want.items():
    clf = target(model, name)
    assert clf.feature_kind == ('prior' if name.startswith('Pri')
                                else 'posterior')
    assert clf.n_part_caps == 2
    got_features, got_pred = clf(tf.constant(x))
    np.testing.assert_allclose(got_features.numpy(), features, rtol=1e-5,
                               err_msg=name)
    np.testing.assert_array_equal(got_pred.numpy(), pred, err_msg=name)
    assert got_pred.dtype == tf.int64
  # On an image with a > 0 and b > 0 the four targets disagree.
  _, _, _, x1 = two_heads_problem([.2], [.2])
  assert {n: int(target(model, n)(x1)[1][0]) for n in want} == CLEAN_PRED


def test_targets_run_the_scae_without_its_noise():
  """The tiny config has presence noise (scale 4); the targets run the
  inference pass, so every call gives the same features and predictions."""
  tf.random.set_seed(0)
  model = SCAE(configs.tiny_config())
  images = tf.random.uniform([3, 20, 20, 1], seed=1)
  out = model.forward(images, training=False)
  for name, want in (('PriL', out.caps_presence_prob),
                     ('PosL', out.posterior_presence)):
    clf = classifiers.make_classifier(model, name)
    (f1, p1), (f2, p2) = clf(images), clf(images)
    np.testing.assert_array_equal(f1.numpy(), f2.numpy())
    np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    np.testing.assert_allclose(f1.numpy(), want.numpy(), rtol=1e-6)
