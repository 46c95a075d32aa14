"""The attack targets' lean pass (`SCAE.capsule_features`) against the
forward pass it replaces, on the original code's trained MNIST SCAE.

`ForwardOnly` hides `capsule_features`, so a target built on it reads its
features off `SCAE.forward(full=False)` as before the lean pass existed.
Features, predictions, the attack's input gradients and whole attacks must
come out bit for bit the same.
"""

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, evasion, objectives
from conftest import data_path, reference_path
from scae_tf import checkpoints, configs, data
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE

pytestmark = pytest.mark.fixtures


class ForwardOnly:
  """The SCAE seen through `forward` alone (the targets' old path)."""

  def __init__(self, model):
    self.config = model.config
    self.forward = model.forward


@pytest.fixture(scope='module')
def trained():
  model = SCAE(configs.MNIST.without_noise())
  checkpoints.load_tf1_checkpoint(
      model, str(reference_path('scae_mnist_trained', 'model.ckpt')))
  images, labels = data.load_split(str(data_path('mnist')), 'test')
  # Real digits, one black image, and uniform noise off the data manifold.
  rng = np.random.default_rng(0)
  x = np.concatenate([data.pad_center(images[:40]),
                      np.zeros((1, 40, 40, 1), np.float32),
                      rng.uniform(size=(3, 40, 40, 1)).astype(np.float32)])
  y = np.concatenate([labels[:40], [0, 1, 2]]).astype(np.int64)
  return model, x, y


def kmeans_on(model, kind, x):
  """Ten centres drawn from the model's own features: nearby clusters, so
  that small feature errors would change predictions."""
  out = model.forward(tf.constant(x[:10]))
  features = (out.caps_presence_prob if kind == 'prior'
              else out.posterior_presence)
  return KMeansClassifier(features.numpy(), 'cosine', kind, np.arange(10))


def targets(model, name, x):
  km = (kmeans_on(model, classifiers.feature_kind_of(name), x)
        if name.endswith('K') else None)
  return (classifiers.make_classifier(model, name, km),
          classifiers.make_classifier(ForwardOnly(model), name, km))


@pytest.mark.parametrize('name', classifiers.CLASSIFIERS)
def test_lean_features_predictions_and_gradients_equal_the_forward_pass(
    trained, name):
  model, x, _ = trained
  lean, old = targets(model, name, x)

  def step(target):
    @tf.function
    def run(images):
      with tf.GradientTape() as tape:
        tape.watch(images)
        features, pred = target(images)
        loss = tf.reduce_sum(objectives.capsule_loss(
            features, 1., target.feature_kind, target.n_part_caps))
      return features, pred, tape.gradient(loss, images)
    return run

  got = step(lean)(tf.constant(x))
  want = step(old)(tf.constant(x))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g.numpy(), w.numpy())
  assert np.abs(got[2].numpy()).max() > 0.
  if name.endswith('K'):  # (the trained prior probe says 1 to all of them)
    assert len(set(got[1].numpy())) > 1


@pytest.mark.parametrize('name,preset,overrides', [
    ('PosL', 'paper_train', {}),
    # Its centres' labels are arbitrary: success is leaving the clean class.
    ('PriK', 'paper_eval', dict(outer_iterations=3, inner_iterations=20,
                                success='clean_prediction')),
])
def test_attack_with_the_lean_features_equals_the_old_path(
    trained, name, preset, overrides):
  model, x, y = trained
  lean, old = targets(model, name, x)
  pick = [0, 1, 2, 3, 40, 41]
  results = [evasion.CapsuleAttack(target, preset, **overrides)(
      x[pick], y[pick], seed=3) for target in (lean, old)]
  got, want = results
  assert got.hit_history.any() and not got.hit_history.all()  # a search
  for field in ('adversarial', 'success', 'l2', 'clean_pred', 'hit_history',
                'const_history'):
    np.testing.assert_array_equal(getattr(got, field), getattr(want, field),
                                  err_msg=field)


def test_capsule_features_rejects_an_unknown_kind():
  model = SCAE(configs.MNIST.without_noise())
  with pytest.raises(ValueError, match='prior or posterior'):
    model.capsule_features(tf.zeros([1, 40, 40, 1]), 'presence')
