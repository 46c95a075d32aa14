"""Sparsity losses, linear probes and the SCAE training objective.

Upstream: `capsule.sparsity_loss` (`_caps_pres_l2`, `_capsule_entropy`,
`_neg_capsule_kl`), `probe.classification_probe` and `ImageAutoencoder._loss`.
Every loss is returned as the original returns it, sign included: the
"between" terms are *subtracted* in the total loss, and the l2 version
returns its between term already negated.
"""

from typing import NamedTuple, Optional

import sonnet as snt
import tensorflow as tf

from scae_tf.capsules import math_ops
from scae_tf.capsules import neural
from scae_tf import replicas


def capsule_entropy(caps_presence_prob, k=1.):
  """(within, between) entropies of capsule activations ('entropy' type).

  within: mean over examples of the entropy of each example's normalised
  activations (low = few capsules per example). between: entropy of the
  batch's aggregated activations (high = all capsules get used).
  """
  within = math_ops.normalize(caps_presence_prob, 1)
  within = math_ops.safe_ce(within, within * k)
  between = math_ops.normalize(replicas.batch_sum(caps_presence_prob), 0)
  between = math_ops.safe_ce(between, between * k)
  return within, between


def neg_capsule_kl(caps_presence_prob):
  """'kl' type: the entropies shifted by log(K), i.e. -KL to uniform."""
  return capsule_entropy(caps_presence_prob, k=float(
      caps_presence_prob.shape[-1]))


def caps_pres_l2(caps_presence_prob, num_classes=10.,
                 within_example_constant=0.):
  """'l2' type: squared deviation of per-example and per-capsule totals.

  Each example should activate K / num_classes capsules (or the given
  constant), each capsule B / num_classes times per batch. The between term
  is returned negated, as upstream does. Under tf.distribute the between term
  is that of the global batch (`scae_tf.replicas`).
  """
  batch_size = tf.cast(tf.shape(caps_presence_prob)[0], tf.float32)
  num_caps = float(caps_presence_prob.shape[1])
  if within_example_constant == 0.:
    within_example_constant = num_caps / num_classes
  between_example_constant = (replicas.batch_size(caps_presence_prob)
                              / num_classes)

  within = math_ops.l2_loss(
      tf.reduce_sum(caps_presence_prob, 1) - within_example_constant
  ) / batch_size * 2.
  between = math_ops.l2_loss(
      replicas.batch_sum(caps_presence_prob) - between_example_constant
  ) / num_caps * 2.
  return within, -between


def sparsity_loss(loss_type, caps_presence_prob, num_classes=10.,
                  within_example_constant=0.):
  if loss_type == 'entropy':
    return capsule_entropy(caps_presence_prob)
  if loss_type == 'kl':
    return neg_capsule_kl(caps_presence_prob)
  if loss_type == 'l2':
    return caps_pres_l2(caps_presence_prob, num_classes,
                        within_example_constant)
  raise ValueError(f'Invalid sparsity loss {loss_type!r}.')


class ProbeResult(NamedTuple):
  logits: tf.Tensor
  pred: tf.Tensor
  xe: Optional[tf.Tensor]
  acc: Optional[tf.Tensor]


class ClassificationProbe(snt.Module):
  """A linear classifier on stop-gradient features (it never shapes them)."""

  def __init__(self, n_features, n_classes, name='classification_probe'):
    super().__init__(name=name)
    self.linear = neural.Linear(n_features, n_classes)

  def __call__(self, features, labels=None) -> ProbeResult:
    logits = self.linear(tf.stop_gradient(features))
    pred = tf.argmax(logits, axis=1)
    if labels is None:
      return ProbeResult(logits, pred, None, None)
    labels = tf.cast(labels, tf.int64)
    xe = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits))
    acc = tf.reduce_mean(tf.cast(tf.equal(pred, labels), tf.float32))
    return ProbeResult(logits, pred, xe, acc)


def total_loss(config, out):
  """The SCAE objective (upstream `ImageAutoencoder._loss`).

  -rec_ll - caps_ll_weight * log_prob + dynamic l2 + the four weighted
  sparsity terms, plus both probes' cross-entropies when labels were given.
  """
  c = config
  loss = (-out.rec_ll - c.caps_ll_weight * out.log_prob
          + c.dynamic_l2_weight * out.dynamic_weights_l2
          + c.posterior_within_example_sparsity_weight
          * out.posterior_within_sparsity_loss
          - c.posterior_between_example_sparsity_weight
          * out.posterior_between_sparsity_loss
          + c.prior_within_example_sparsity_weight
          * out.prior_within_sparsity_loss
          - c.prior_between_example_sparsity_weight
          * out.prior_between_sparsity_loss)
  if out.posterior_cls_xe is not None:
    loss += out.posterior_cls_xe + out.prior_cls_xe
  return loss
