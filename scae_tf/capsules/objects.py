"""Object capsules: from Set Transformer features to votes for part poses.

Paper section 2.2 (OCAE). Upstream: `capsule.CapsuleLayer` wrapped by
`scae.ImageCapsule`. Each object capsule k predicts, with its own MLPs, an
object-viewer relation (OV, upstream `ccr`), per-part corrections of the
object-part relations (OP = static `cpr_static` + dynamic deformation), a
presence logit for itself and for each of its votes, and a scale per vote.
The vote for part n is OV_k @ OP_kn.
"""

import math
from typing import NamedTuple

import sonnet as snt
import tensorflow as tf
import tensorflow_probability as tfp

from scae_tf.capsules import math_ops
from scae_tf.capsules import neural
from scae_tf.capsules.likelihoods import CapsuleLikelihood
from scae_tf.capsules.likelihoods import CapsuleLikelihoodResult


class ObjectCapsuleOutput(NamedTuple):
  vote: tf.Tensor                 # [B, K, P, 6]
  scale: tf.Tensor                # [B, K, P]
  vote_presence_prob: tf.Tensor   # [B, K, P]
  caps_presence_prob: tf.Tensor   # [B, K]
  pres_logit_per_caps: tf.Tensor  # [B, K, 1]
  pres_logit_per_vote: tf.Tensor  # [B, K, P]
  dynamic_weights_l2: tf.Tensor   # []
  raw_caps_params: tf.Tensor      # [B, K, n_caps_params]
  raw_caps_features: tf.Tensor    # [B, K, d] the Set Transformer output
  likelihood: CapsuleLikelihoodResult


def presence_noise(noise_type, noise_scale, shape, seed=None):
  """Noise added to presence logits during training (sparsifies presences).

  Drawn statelessly from `seed` ([2] ints) when given.
  """
  if noise_type == 'uniform':
    u = (tf.random.uniform(shape) if seed is None
         else tf.random.stateless_uniform(shape, seed))
    return (u - .5) * noise_scale
  if noise_type == 'logistic':
    if seed is None:
      return tfp.distributions.Logistic(0., noise_scale).sample(shape)
    u = tf.random.stateless_uniform(shape, seed, minval=1e-7, maxval=1.)
    return noise_scale * (tf.math.log(u) - tf.math.log1p(-u))
  if noise_type == 'normal':
    n = (tf.random.normal(shape) if seed is None
         else tf.random.stateless_normal(shape, seed))
    return n * noise_scale
  raise ValueError(f'Invalid noise type {noise_type!r}.')


class ObjectCapsules(snt.Module):
  """Object capsule layer plus the capsule likelihood of the part poses."""

  N_TRANSFORM_PARAMS = 6

  def __init__(self, config, input_size, name='object_capsules'):
    super().__init__(name=name)
    c = config
    k, p, t = c.n_obj_caps, c.n_part_caps, self.N_TRANSFORM_PARAMS
    self.n_caps, self.n_votes = k, p
    self.noise_type = c.obj_decoder_noise_type
    self.noise_scale = c.obj_decoder_noise_scale
    self.params_mlp = neural.BatchMLP(
        k, input_size, [c.obj_caps_n_hiddens, c.n_obj_caps_params],
        name='batch_mlp')
    # +1 for upstream's constant "capsule exists" input.
    self.output_shapes = ([p, t], [1, t], [1], [p], [p])
    self.splits = [math.prod(s) for s in self.output_shapes]
    # No bias in the output layer: it separates the static and dynamic OP.
    self.caps_mlp = neural.BatchMLP(
        k, c.n_obj_caps_params + 1, [c.obj_caps_n_hiddens, sum(self.splits)],
        use_bias=False, name='batch_mlp_1')
    self.ccr_bias = tf.Variable(tf.zeros([k, 1, t]), name='ccr_bias')
    self.pres_logit_per_caps_bias = tf.Variable(tf.zeros([k, 1]),
                                                name='pres_per_caps_bias')
    self.pres_logit_per_vote_bias = tf.Variable(tf.zeros([k, p]),
                                                name='pres_per_vote_bias')
    self.scale_per_vote_bias = tf.Variable(tf.zeros([k, p]),
                                           name='scale_per_vote_bias')
    self.cpr_static = neural.glorot_uniform([1, k, p, t], 'cpr_static')
    self.likelihood = CapsuleLikelihood(p)

  def __call__(self, features, part_pose, part_presence, noise=False,
               full=True, seed=None) -> ObjectCapsuleOutput:
    """Args:
      features: [B, K, d] Set Transformer output.
      part_pose: [B, P, 6] poses to explain.
      part_presence: [B, P].
      noise: add the configured presence-logit noise (stateless from
        `seed`, [2] ints, when given).
      full: also compute outputs the loss does not need (winners).
    """
    batch_size = tf.shape(features)[0]
    raw_caps_params = self.params_mlp(features)
    caps_exist = tf.ones_like(raw_caps_params[..., :1])
    all_params = self.caps_mlp(tf.concat([raw_caps_params, caps_exist], -1))
    all_params = tf.split(all_params, self.splits, -1)
    cpr_dynamic, ccr, pres_logit_per_caps, pres_logit_per_vote, scale = [
        tf.reshape(x, tf.concat([[batch_size, self.n_caps], s], 0))
        for x, s in zip(all_params, self.output_shapes)]
    ccr += self.ccr_bias
    pres_logit_per_caps += self.pres_logit_per_caps_bias
    pres_logit_per_vote += self.pres_logit_per_vote_bias
    scale += self.scale_per_vote_bias

    if noise and self.noise_type:
      seeds = [None, None] if seed is None else tf.unstack(
          tf.random.experimental.stateless_split(seed, 2))
      pres_logit_per_caps += presence_noise(
          self.noise_type, self.noise_scale, tf.shape(pres_logit_per_caps),
          seeds[0])
      pres_logit_per_vote += presence_noise(
          self.noise_type, self.noise_scale, tf.shape(pres_logit_per_vote),
          seeds[1])

    # The vote is the top two rows of ccr @ cpr: AffineGridWarper order.
    votes = math_ops.transformed_votes(ccr, cpr_dynamic + self.cpr_static)

    pres_per_vote = (tf.nn.sigmoid(pres_logit_per_caps)
                     * tf.nn.sigmoid(pres_logit_per_vote))
    # Upstream's constants, "for numerical stability".
    scale = tf.nn.softplus(scale + .5) + 1e-2

    likelihood = self.likelihood(votes, scale, pres_per_vote, part_pose,
                                 part_presence, full=full)
    return ObjectCapsuleOutput(
        vote=votes,
        scale=scale,
        vote_presence_prob=pres_per_vote,
        caps_presence_prob=tf.reduce_max(pres_per_vote, 2),
        pres_logit_per_caps=pres_logit_per_caps,
        pres_logit_per_vote=pres_logit_per_vote,
        dynamic_weights_l2=(math_ops.l2_loss(cpr_dynamic)
                            / tf.cast(batch_size, tf.float32)),
        raw_caps_params=raw_caps_params,
        raw_caps_features=features,
        likelihood=likelihood)
