"""Toy models, targets and attacks that the attack tests share.

No SCAE here: a toy "capsule model" with the SCAE's output fields plugs into
`attacks.classifiers.make_classifier` exactly as the SCAE does.

`ToyLinearCapsules`: object capsule presences [sigmoid(a), sigmoid(-a)] with
a = <w, x - 0.5>, and both linear probes predict 0 iff a > 0: the decision
boundary is the hyperplane a = 0, so the smallest L2 perturbation that
flips the label of x is a(x) / ||w|| (when the projection stays inside the
box, as in `linear_problem`).

`LinearProbeToy` has the prior features of `ToyLinearCapsules`,
sigmoid([a, -a]) with a = <w, x - 0.5> and w a unit vector, and a linear
probe that is the identity: label 0 iff a > 0 for the probe (PriL) and
for a k-means on the unit centres (PriK); `toy_target` makes either.

`TwoHeads` is a toy capsule model whose prior and posterior heads look at
different pixels, so that each of PriK, PosK, PriL and PosL has its own
feature and prediction, and a target wired to the wrong one fails.

`FakeAttack` stands for an attack where only the protocol is tested.
"""

import dataclasses
import types
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from attacks import classifiers, evasion
from attacks.classifiers import CapsuleClassifier
from scae_tf.kmeans import KMeansClassifier


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


def several_clusters_target(w):
  """PriK on the toy with 7 clusters in the positive quadrant (where the
  features sigmoid([a, -a]) point), labels interleaved (0 and 1 own
  several, not adjacent), and a third class without a cluster."""
  toy = LinearProbeToy(w)
  toy.config = dataclasses.replace(toy.config, num_classes=3)
  angles = np.deg2rad([20., 30., 38., 45., 52., 60., 70.])
  km = KMeansClassifier(np.stack([np.cos(angles), np.sin(angles)], 1),
                        'cosine', 'prior', [0, 1, 0, 1, 0, 1, 0])
  return classifiers.make_classifier(toy, 'PriK', kmeans=km)


# The clean prediction of each target on an image with a > 0 and b > 0.
CLEAN_PRED = dict(PriK=3, PosK=1, PriL=0, PosL=2)


class TwoHeads:
  """a = <u, x - .5> drives the prior head, b = <v, x - .5> the posterior
  one. Prior presences sigmoid([a, -a]); posterior mixing probabilities of
  the two parts softmax([b, -b]) and softmax([2b, -2b]), so the posterior
  masses (summed over the parts) lie in [0, 2]. The prior probe predicts 0
  iff a > 0, else 1; the posterior probe 2 iff b > 0, else 3."""

  def __init__(self, u, v):
    self.config = dataclasses.replace(ToyConfig(), n_part_caps=2,
                                      num_classes=4)
    self.u = tf.constant(np.asarray(u, np.float32).reshape(-1, 1))
    self.v = tf.constant(np.asarray(v, np.float32).reshape(-1, 1))

  def forward(self, images, full=False, training=False):
    del full, training
    flat = tf.reshape(images, [tf.shape(images)[0], -1]) - 0.5
    a, b = tf.matmul(flat, self.u), tf.matmul(flat, self.v)
    mixing = tf.stack([tf.nn.softmax(tf.concat([b, -b], -1)),
                       tf.nn.softmax(tf.concat([2. * b, -2. * b], -1))], 1)
    prior_pred = tf.where(a[:, 0] > 0, 0, 1)
    posterior_pred = tf.where(b[:, 0] > 0, 2, 3)
    return ToyOutput(tf.sigmoid(tf.concat([a, -a], -1)), mixing,
                     tf.cast(prior_pred, tf.int64),
                     tf.cast(posterior_pred, tf.int64))


def kmeans_for(kind):
  """Cluster 0 = capsule 0 dominant (a > 0 or b > 0). PriK maps it to 3,
  PosK to 1: four different labels for the four targets."""
  mapping = [3, 2] if kind == 'prior' else [1, 0]
  return KMeansClassifier(np.eye(2), 'cosine', kind, mapping)


def target(model, name):
  km = kmeans_for(classifiers.feature_kind_of(name)) if name.endswith(
      'K') else None
  return classifiers.make_classifier(model, name, kmeans=km)


def two_heads_problem(a_dist, b_dist, sign=1., seed=0):
  """Images [B, 4, 4, 1] at distances a_dist from the prior boundary and
  b_dist from the posterior one. u and v are unit vectors on disjoint
  halves of the image (orthogonal), all of whose entries have the sign
  `sign`: with sign = 1 brightening moves away from both boundaries, with
  sign = -1 towards them."""
  rng = np.random.default_rng(seed)
  u, v = np.zeros(16), np.zeros(16)
  u[:8], v[8:] = rng.uniform(0.5, 1.5, 8), rng.uniform(0.5, 1.5, 8)
  u, v = sign * u / np.linalg.norm(u), sign * v / np.linalg.norm(v)
  x = 0.5 + np.outer(a_dist, u) + np.outer(b_dist, v)
  return TwoHeads(u, v), u, v, x.reshape(-1, 4, 4, 1).astype(np.float32)


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
