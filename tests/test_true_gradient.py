"""The classifier's true input gradient (`gradient='full'`): the SCAE's
training-time stop-gradients removed, the values untouched.

On a tiny random model, every target's scores (the k-means cosine scores of
PriK / PosK, the probe logits of PriL / PosL) must equal the stopped graph's
bit for bit, and the full gradient must match a central finite difference of
those scores, which the training graph's gradient does not on the posterior
targets.
"""

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, margins
from scae_tf import configs
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE

TINY = configs.tiny_config().without_noise()
NAMES = ('PriK', 'PosK', 'PriL', 'PosL')


@pytest.fixture(scope='module')
def model_and_images():
  tf.random.set_seed(3)
  model = SCAE(TINY)
  rng = np.random.default_rng(0)
  # Away from the box's edges, so that +-h stays in [0, 1].
  x = rng.uniform(0.3, 0.7, (8, 20, 20, 1)).astype(np.float32)
  model(tf.constant(x))
  return model, x


def _scores(model, name, gradient):
  """x -> [B, n] the target's scores, and its prediction."""
  kind = classifiers.feature_kind_of(name)
  km = None
  if name.endswith('K'):
    centres = np.random.default_rng(1).uniform(0.1, 1., (3, TINY.n_obj_caps))
    km = KMeansClassifier(centres, 'cosine', kind, [0, 1, 2])
  clf = classifiers.make_classifier(model, name, km, gradient=gradient)
  probe = margins.linear_probe(model, kind) if km is None else None

  def scores(x):
    features, pred = clf(x)
    return (km.tf_cluster_scores(features) if km is not None
            else probe(features)), pred
  return scores


@pytest.mark.parametrize('name', NAMES)
def test_full_gradient_changes_no_value(model_and_images, name):
  model, x = model_and_images
  code, pred_code = _scores(model, name, 'code')(tf.constant(x))
  full, pred_full = _scores(model, name, 'full')(tf.constant(x))
  np.testing.assert_array_equal(code.numpy(), full.numpy())
  np.testing.assert_array_equal(pred_code.numpy(), pred_full.numpy())


def _directional(fn, x, direction, weights):
  """(the gradient's directional derivative of sum(weights * fn(x)), a
  central finite difference of it), each [B]: the examples are independent,
  so one batch checks B points."""
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    value = tf.reduce_sum(weights * fn(xt)[0])
  grad = tape.gradient(value, xt).numpy()
  analytic = (grad * direction).sum((1, 2, 3))

  def central(h):
    at = lambda t: (weights * fn(tf.constant(x + t * direction))[0].numpy()
                    ).astype(np.float64).sum(1)
    return (at(h) - at(-h)) / (2 * h)

  # Richardson's extrapolation cancels the h^2 term, so h can be large
  # enough for the float32 scores' rounding (~1e-7 / h) not to dominate.
  h = 0.05
  return analytic, (4 * central(h) - central(2 * h)) / 3


@pytest.mark.parametrize('name', NAMES)
def test_full_gradient_matches_a_finite_difference(model_and_images, name):
  model, x = model_and_images
  rng = np.random.default_rng(2)
  direction = rng.standard_normal(x.shape).astype(np.float32)
  direction /= np.sqrt((direction ** 2).sum((1, 2, 3), keepdims=True))
  n_scores = 3 if name.endswith('K') else TINY.num_classes
  weights = rng.standard_normal((1, n_scores)).astype(np.float32)
  full, numeric = _directional(_scores(model, name, 'full'), x, direction,
                               weights)
  error = lambda g: np.linalg.norm(g - numeric) / np.linalg.norm(numeric)
  # Measured: 0.024-0.028 (the difference's own error), 0.83-0.93 for the
  # training graph's gradient on this model.
  assert error(full) < 0.06
  code, _ = _directional(_scores(model, name, 'code'), x, direction, weights)
  assert error(code) > 0.3
