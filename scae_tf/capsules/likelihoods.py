"""The two mixture likelihoods of SCAE, on TensorFlow Probability components.

* `ImageMixture`: per-pixel mixture over warped templates plus background
  (paper eq. 2; upstream `prob.MixtureDistribution` with `tfd.Normal`).
* `CapsuleLikelihood`: every part pose is explained by a mixture over the
  object capsules' votes plus a dummy vote (paper eq. 5; upstream
  `capsule.CapsuleLikelihood`).
"""

from typing import NamedTuple

import math

import sonnet as snt
import tensorflow as tf
import tensorflow_probability as tfp

from scae_tf.capsules import math_ops
from scae_tf.capsules import neural

tfd = tfp.distributions

# Upstream's constant log-weight (and log-density) of the dummy vote: log(0.01).
DUMMY_LOGIT = -2. * math.log(10.)


class ImageMixture:
  """Mixture over components along axis 1, per pixel, with unit-scale Normals.

  Args:
    mixing_logits: [B, K, H, W, 1 or C], already including log presence.
    components: [B, K, H, W, C] component means.
  """

  def __init__(self, mixing_logits, components, scale=1.):
    self.mixing_logits = mixing_logits
    self.components = components
    self.distribution = tfd.Normal(components, scale)

  @property
  def mixing_log_prob(self):
    return self.mixing_logits - tf.reduce_logsumexp(
        self.mixing_logits, 1, keepdims=True)

  def log_prob(self, x):
    """[B, H, W, C] per-pixel log-likelihood of the image x."""
    lp = self.distribution.log_prob(x[:, tf.newaxis])
    return tf.reduce_logsumexp(lp + self.mixing_log_prob, 1)

  def mean(self):
    mixing_prob = tf.nn.softmax(self.mixing_logits, 1)
    return tf.reduce_sum(mixing_prob * self.distribution.mean(), 1)

  def mode(self):
    """The most probable component's mean at every pixel (no gradient to the
    mixing weights, as upstream)."""
    mixing_log_prob = self.mixing_log_prob
    mask = tf.one_hot(tf.argmax(mixing_log_prob, axis=1),
                      mixing_log_prob.shape[1], axis=1)
    return tf.reduce_sum(mask * self.distribution.mode(), 1)


class CapsuleLikelihoodResult(NamedTuple):
  log_prob: tf.Tensor                # [] mean over the batch
  posterior_mixing_probs: tf.Tensor  # [B, P, K]
  vote_presence: tf.Tensor           # [B, K, P] float 0/1: beats the dummy
  mixing_logits: tf.Tensor           # [B, K + 1, P]
  mixing_log_prob: tf.Tensor         # [B, K + 1, P]
  winner: tf.Tensor                  # [B, P, 6]
  winner_pres: tf.Tensor             # [B, P]
  is_from_capsule: tf.Tensor         # [B, P] int64
  soft_winner: tf.Tensor             # [B, P, 6]
  soft_winner_pres: tf.Tensor        # [B, P]


class CapsuleLikelihood(snt.Module):
  """Log-likelihood of part poses under the object capsules' votes."""

  def __init__(self, n_votes, n_dims=6, name='capsule_likelihood'):
    super().__init__(name=name)
    # Only the soft winner uses the dummy vote; it never receives a gradient.
    self.dummy_vote = neural.glorot_uniform([1, 1, n_votes, n_dims],
                                            'dummy_vote')

  def __call__(self, votes, scales, vote_presence_prob, x, presence=None,
               full=True):
    """Evaluates the mixture.

    Args:
      votes: [B, K, P, 6] one vote per (object capsule, part).
      scales: [B, K, P] vote standard deviations.
      vote_presence_prob: [B, K, P].
      x: [B, P, 6] part poses to explain.
      presence: [B, P] part presences weighting each part's log-likelihood.
      full: also compute the winners (not needed by the loss).
    """
    batch_size = tf.shape(x)[0]
    n_points = x.shape[1]

    vote_pdf = tfd.Normal(votes, scales[..., tf.newaxis])
    vote_log_prob = tf.reduce_sum(vote_pdf.log_prob(x[:, tf.newaxis]), -1)
    dummy = tf.zeros([batch_size, 1, n_points]) + DUMMY_LOGIT
    vote_log_prob = tf.concat([vote_log_prob, dummy], 1)

    mixing_logits = tf.concat(
        [math_ops.safe_log(vote_presence_prob), dummy], 1)
    mixing_log_prob = mixing_logits - tf.reduce_logsumexp(
        mixing_logits, 1, keepdims=True)

    # Upstream weighs the votes by the *unnormalised* mixing logits here.
    posterior_mixing_logits = mixing_logits + vote_log_prob
    log_prob_per_point = tf.reduce_logsumexp(posterior_mixing_logits, 1)
    if presence is not None:
      log_prob_per_point *= presence
    log_prob = tf.reduce_mean(tf.reduce_sum(log_prob_per_point, 1))

    posterior = tf.nn.softmax(posterior_mixing_logits, 1)
    posterior_mixing_probs = tf.transpose(posterior[:, :-1], (0, 2, 1))
    vote_presence = tf.cast(mixing_logits[:, :-1] > mixing_logits[:, -1:],
                            tf.float32)
    if not full:
      return CapsuleLikelihoodResult(
          log_prob, posterior_mixing_probs, vote_presence, mixing_logits,
          mixing_log_prob, *([None] * 5))

    winning_vote_idx = tf.argmax(posterior_mixing_logits[:, :-1], 1)
    # [B, P, K] after the transpose, so gather along the capsule axis.
    winner = tf.gather(tf.transpose(votes, (0, 2, 1, 3)),
                       winning_vote_idx, axis=2, batch_dims=2)
    winner_pres = tf.gather(tf.transpose(vote_presence_prob, (0, 2, 1)),
                            winning_vote_idx, axis=2, batch_dims=2)

    all_votes = tf.concat([votes, tf.broadcast_to(
        self.dummy_vote, tf.concat([[batch_size], self.dummy_vote.shape[1:]],
                                   0))], 1)
    all_pres = tf.concat([vote_presence_prob, tf.zeros_like(dummy)], 1)
    soft_winner = tf.reduce_sum(posterior[..., tf.newaxis] * all_votes, 1)
    soft_winner_pres = tf.reduce_sum(posterior * all_pres, 1)

    return CapsuleLikelihoodResult(
        log_prob=log_prob,
        posterior_mixing_probs=posterior_mixing_probs,
        vote_presence=vote_presence,
        mixing_logits=mixing_logits,
        mixing_log_prob=mixing_log_prob,
        winner=winner,
        winner_pres=winner_pres,
        is_from_capsule=winning_vote_idx,
        soft_winner=soft_winner,
        soft_winner_pres=soft_winner_pres)
