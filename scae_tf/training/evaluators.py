"""Evaluations the training loop runs after every epoch.

An evaluator has a `name` and is called with the step; it returns a dict of
floats, which the loop logs (one `log.jsonl` record with `eval: true` and the
evaluator's `tags`), writes to TensorBoard under `test/` and prints.
The defences add their own (robust accuracy under the attack, ...).
"""

import numpy as np
import tensorflow as tf


def probe_accuracy(model, batches, forward=None):
  """Linear-probe accuracy (prior, posterior) over (images, labels).

  `forward`: the model's compiled forward pass, if the caller keeps one.
  """
  step = forward or tf.function(lambda x: model.forward(x, full=False))
  correct = np.zeros(2)
  total = 0
  for images, labels in batches:
    out = step(tf.constant(images))
    correct += [np.sum(out.prior_cls_pred.numpy() == labels),
                np.sum(out.posterior_cls_pred.numpy() == labels)]
    total += len(labels)
  return dict(prior_probe_acc=correct[0] / total,
              posterior_probe_acc=correct[1] / total)


class ProbeAccuracy:
  """Test accuracy of the model's prior and posterior linear probes.

  `batches`: a callable returning an iterable of (images, labels).
  """
  name = 'probes'
  tags = {}

  def __init__(self, model, batches):
    self.model = model
    self.batches = batches
    # Traced once, not at every epoch.
    self.forward = tf.function(lambda x: model.forward(x, full=False))

  def __call__(self, step):
    del step
    return probe_accuracy(self.model, self.batches(), self.forward)


class KMeansCurve:
  """Test accuracy of the fork's cosine k-means (prior and posterior),
  fitted on the train split: the paper's unsupervised metric, per epoch."""
  name = 'kmeans'
  tags = {'kmeans': True}

  def __init__(self, model, train_batches, test_batches, seed=0):
    self.model = model
    self.train_batches = train_batches
    self.test_batches = test_batches
    self.seed = seed

  def __call__(self, step):
    del step
    from scae_tf import kmeans  # pylint: disable=g-import-not-at-top
    train = kmeans.collect_features(self.model, self.train_batches())
    test = kmeans.collect_features(self.model, self.test_batches())
    record = {}
    for kind in ('prior', 'posterior'):
      clf = kmeans.fit_kmeans_classifier(train, train['labels'], feature=kind,
                                         seed=self.seed)
      record[f'kmeans_{kind}_test_acc'] = clf.accuracy(test, test['labels'])
    return record
