"""Margin losses of the deployed classifiers, for adaptive attacks.

The paper's attack lowers capsule presences and never looks at what makes
the decision; a margin attack aims at the decision itself. One sign
convention for every target: the margin is POSITIVE when the example is
classified as its label and NEGATIVE when it is misclassified, so an
attack MINIMISES it.

  PriK / PosK  kmeans_margin(scores, cluster_to_label, labels)
               = max over the label's clusters of the score
                 - max over the other clusters of the score.
               With cosine scores (similarity = 1 - cosine distance) that is
                 min_{j: label(j) != y} d(f, c_j) - min_{j: label(j) = y} d(f, c_j),
               the issue's d(f, c_y) - min_{j != y} d(f, c_j) with its sign
               flipped to the convention above.
  PriL / PosL  logit_margin(logits, labels) = z_y - max_{j != y} z_j.

Several clusters per label: the k-means classifier predicts the label of
the nearest centre, so the label's nearest centre is the one that counts
(the max over the label's clusters). The Hungarian map gives one label per
cluster when k = number of classes (the paper's k = 10), but with more
clusters than labels the left-over clusters take their majority label.

A label without a cluster (more labels than clusters) can never be
predicted: such an example is misclassified whatever the image, and its
margin is negative (the label's score is set one below the row's smallest
score, so the margin is at most -1 for cosine). Likewise a label that owns
every cluster is always predicted, and its margin is positive. Both stay
finite: an infinite margin would give NaN gradients in the attack loop.

`margin_target(classifier)` turns an attack target of `attacks.classifiers`
into images, labels -> (margin [B], prediction [B]) in pure TensorFlow.
"""

import tensorflow as tf

from attacks.classifiers import CapsuleClassifier, ModelClassifier


def logit_margin(logits, labels):
  """[B] z_y - max_{j != y} z_j of logits [B, C] and int labels [B]."""
  logits = tf.convert_to_tensor(logits)
  own = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1],
                   on_value=True, off_value=False, dtype=tf.bool)
  return _group_margin(logits, own)


def kmeans_margin(scores, cluster_to_label, labels):
  """[B] margin of a nearest-centre classifier.

  scores: [B, k] larger = nearer (`KMeansClassifier.tf_cluster_scores`:
    cosine similarity, or |x|^2 - |x - c|^2 for Euclidean).
  cluster_to_label: [k] int, the label each cluster predicts.
  labels: [B] int true labels.
  """
  table = tf.cast(tf.convert_to_tensor(cluster_to_label), tf.int64)
  own = tf.equal(table[tf.newaxis, :],
                 tf.cast(labels, tf.int64)[:, tf.newaxis])
  return _group_margin(tf.convert_to_tensor(scores), own)


def _group_margin(scores, own):
  """max of `scores` where `own` minus max where not, per row; an empty
  side counts as one below the row's smallest score (see module doc)."""
  floor = tf.stop_gradient(tf.reduce_min(scores, -1, keepdims=True) - 1.)
  best_own = tf.reduce_max(tf.where(own, scores, floor), -1)
  best_other = tf.reduce_max(tf.where(own, floor, scores), -1)
  return best_own - best_other


def linear_probe(model, kind):
  """`model`'s linear probe of `kind` as a map features [B, K] -> logits
  [B, C] through which the image's gradient flows.

  The SCAE's `ClassificationProbe` stops the gradient of its input (so that
  it never shapes the features in training). Its `logits` are thus constant
  to the image's gradient, and an attack through them would see a zero
  gradient everywhere: masking, not robustness. The probe's `linear` layer
  is the same map without the stop.
  """
  probe = getattr(model, f'{kind}_probe', None)
  if probe is None or not hasattr(probe, 'linear'):
    raise ValueError(f'The model has no {kind} linear probe '
                     f'(`{kind}_probe.linear`); PriL / PosL need one.')
  return probe.linear


class MarginTarget:
  """images [B, H, W, C], labels [B] -> (margin [B], prediction [B] int64)
  of a `ModelClassifier`; the prediction is the classifier's own, so the
  attack's success is judged by the deployed classifier."""

  def __init__(self, classifier: ModelClassifier):
    self.classifier = classifier
    self.name = classifier.name
    self.image_shape = classifier.image_shape
    self.num_classes = classifier.num_classes
    # Looked up now, so that a model without the probe fails before any
    # attack work.
    self._logits = (None if classifier.kmeans is not None else
                    linear_probe(classifier.model, classifier.feature_kind))

  def __call__(self, images, labels):
    clf = self.classifier
    features, pred = clf(images)
    if clf.kmeans is not None:
      margin = kmeans_margin(clf.kmeans.tf_cluster_scores(features),
                             clf.kmeans.cluster_to_label, labels)
    else:
      margin = logit_margin(self._logits(features), labels)
    return margin, pred


def margin_target(classifier):
  """The margin of an attack target: a `ModelClassifier` is wrapped in a
  `MarginTarget`; any other object must already map (images, labels) to
  (margin, prediction) and carry `name`, `image_shape`, `num_classes`."""
  if isinstance(classifier, ModelClassifier):
    return MarginTarget(classifier)
  if isinstance(classifier, CapsuleClassifier) or not all(
      hasattr(classifier, a) for a in ('image_shape', 'num_classes')) \
      or not callable(classifier):
    raise ValueError('A margin attack needs a ModelClassifier (attacks.'
                     'classifiers.make_classifier(model, "PosK", kmeans)) or '
                     'a margin target, got '
                     f'{type(classifier).__name__}.')
  return classifier
