"""Margin losses of the deployed classifiers (`attacks.margins`, issue 13),
by hand and on the SCAE."""

import types

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, margins
from helpers.attack_toys import ToyConfig
from scae_tf import configs
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE


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
