"""The Stacked Capsule Autoencoder: wires the paper's parts together.

image -> PartEncoder -> part capsules
      -> TemplateDecoder (templates warped by part poses) -> rec_ll
      -> SetTransformer(poses, presences, features, templates) -> ObjectCapsules
      -> CapsuleLikelihood(part poses | votes) -> log_prob, posteriors, presences

Upstream: `capsules/models/scae.py` (`ImageAutoencoder`) as built by the fork's
`_stacked_capsule_autoencoder`. Field names of `ScaeOutput` are upstream's.
"""

from typing import NamedTuple, Optional

import numpy as np
import sonnet as snt
import tensorflow as tf
import tensorflow_probability as tfp

from scae_tf.capsules import losses
from scae_tf.capsules import math_ops
from scae_tf.configs import GRADIENTS, ScaeConfig
from scae_tf.capsules.objects import ObjectCapsuleOutput, ObjectCapsules
from scae_tf.capsules.parts import PartCapsules, PartEncoder, Rendering
from scae_tf.capsules.parts import TemplateDecoder
from scae_tf.capsules.set_transformer import SetTransformer


class RenderingSummary(NamedTuple):
  transformed_templates: tf.Tensor
  mixing_logits: tf.Tensor
  mode: tf.Tensor


class Capsules(NamedTuple):
  """The encoding every output of the SCAE is computed from."""
  part: PartCapsules
  templates: tf.Tensor      # [B, P, h, w, C] templates coloured per example
  obj: ObjectCapsuleOutput  # with the capsule likelihood of the part poses


class CapsuleFeatures(NamedTuple):
  """What an attack target reads (`SCAE.capsule_features`)."""
  features: tf.Tensor    # [B, K] prior presences or posterior masses
  probe_pred: tf.Tensor  # [B] int64, the linear probe of those features


class ScaeOutput(NamedTuple):
  """Everything the original's `ImageAutoencoder._build` returns.

  Fields that the requested computation did not need are None (see
  `SCAE.forward(full=...)`).
  """
  part: PartCapsules
  # Object capsules.
  vote: tf.Tensor
  scale: tf.Tensor
  vote_presence: tf.Tensor          # [B, K, P] 0/1: vote beats the dummy
  vote_presence_prob: tf.Tensor     # [B, K, P]
  pres_logit_per_caps: tf.Tensor
  pres_logit_per_vote: tf.Tensor
  dynamic_weights_l2: tf.Tensor
  raw_caps_params: tf.Tensor
  raw_caps_features: tf.Tensor
  caps_presence_prob: tf.Tensor     # [B, K] prior object presence
  # Capsule likelihood.
  log_prob: tf.Tensor
  posterior_mixing_probs: tf.Tensor  # [B, P, K]
  mixing_logits: tf.Tensor
  mixing_log_prob: tf.Tensor
  # Reconstruction.
  rec_ll: tf.Tensor
  rec_ll_per_pixel: tf.Tensor
  # Sparsity.
  prior_within_sparsity_loss: tf.Tensor
  prior_between_sparsity_loss: tf.Tensor
  posterior_within_sparsity_loss: tf.Tensor
  posterior_between_sparsity_loss: tf.Tensor
  # Probes (logits/pred always; xe/acc when labels are given).
  prior_cls_logits: tf.Tensor
  prior_cls_pred: tf.Tensor
  posterior_cls_logits: tf.Tensor
  posterior_cls_pred: tf.Tensor
  prior_cls_xe: Optional[tf.Tensor] = None
  prior_cls_acc: Optional[tf.Tensor] = None
  posterior_cls_xe: Optional[tf.Tensor] = None
  posterior_cls_acc: Optional[tf.Tensor] = None
  best_cls_acc: Optional[tf.Tensor] = None
  # Only with full=True.
  winner: Optional[tf.Tensor] = None
  winner_pres: Optional[tf.Tensor] = None
  soft_winner: Optional[tf.Tensor] = None
  soft_winner_pres: Optional[tf.Tensor] = None
  is_from_capsule: Optional[tf.Tensor] = None
  templates: Optional[tf.Tensor] = None
  used_templates: Optional[tf.Tensor] = None
  rec_mode: Optional[tf.Tensor] = None
  rec_mean: Optional[tf.Tensor] = None
  mse_per_pixel: Optional[tf.Tensor] = None
  mse: Optional[tf.Tensor] = None
  primary_caps_l1: Optional[tf.Tensor] = None
  bottom_up_rec: Optional[RenderingSummary] = None
  top_down_rec: Optional[RenderingSummary] = None
  top_down_per_caps_rec: Optional[RenderingSummary] = None

  # Upstream's names for two values that live in `part` here, so that code
  # written against upstream's result dictionary reads the same.
  @property
  def primary_presence(self):
    return self.part.presence

  @property
  def template_pres(self):
    return self.part.presence

  @property
  def posterior_presence(self):
    return posterior_presence(self.posterior_mixing_probs)


class SCAE(snt.Module):
  """Stacked Capsule Autoencoder.

  Call it (`model(images, labels)`) from user code: inputs are validated.
  Compiled steps call `forward` directly: it does no Python-side checks.
  """

  def __init__(self, config: ScaeConfig, name='scae'):
    super().__init__(name=name)
    c = self.config = config
    self.part_encoder = PartEncoder(c)
    self.template_decoder = TemplateDecoder(c)
    n_inputs = (c.n_part_caps_dims + 1 + c.n_part_special_features
                + c.template_size ** 2 * c.n_channels)
    self.set_transformer = SetTransformer(
        n_inputs, c.set_transformer_n_layers, c.set_transformer_n_heads,
        c.set_transformer_n_dims, c.set_transformer_n_output_dims,
        c.n_obj_caps, layer_norm=True)
    self.object_capsules = ObjectCapsules(c, c.set_transformer_n_output_dims)
    # Upstream builds the posterior probe first ('classification_probe').
    self.posterior_probe = losses.ClassificationProbe(
        c.n_obj_caps, c.num_classes, name='classification_probe')
    self.prior_probe = losses.ClassificationProbe(
        c.n_obj_caps, c.num_classes, name='classification_probe_1')

  def __call__(self, images, labels=None, *, target=None, training=False,
               full=True) -> ScaeOutput:
    validate_images(images, self.config)
    if target is not None:
      validate_images(target, self.config, what='target')
    if labels is not None:
      validate_labels(labels, images, self.config)
    return self.forward(tf.cast(images, tf.float32), labels,
                        target=target, training=training, full=full)

  def forward(self, images, labels=None, *, target=None, training=False,
              full=False, noise_seed=None) -> ScaeOutput:
    """The SCAE graph: `encode` (the part capsule encoder, then the object
    capsule encoder and the part likelihood under the objects' votes), the
    part capsule decoder's image likelihood, the sparsity losses on the
    object presences and the probes.

    Args:
      images: [B, H, W, C] float32 in [0, 1].
      labels: [B] ints or None; enables the probes' cross-entropies.
      target: reconstruction target (defaults to the (prepped) images).
      training: adds the config's presence noise (part and object capsules).
      noise_seed: [2] ints; makes that noise a stateless function of the seed
        (training uses (run seed, step), so a resumed run replays it).
      full: also computes what only evaluation and plots need (winners, the
        mode and mean image, the three extra decoder calls of upstream).
    """
    c = self.config
    if target is None:
      target = images if c.prep == 'none' else normalized_sobel_edges(images)
    part, templates, obj = self.encode(
        images, training=training, noise_seed=noise_seed,
        full=full or c.vote_type != 'enc' or c.pres_type != 'enc')
    rec, rec_ll_per_pixel = self._image_likelihood(part, obj.likelihood,
                                                   target, full)
    mass_explained_by_capsule = posterior_presence(
        obj.likelihood.posterior_mixing_probs)
    fields = dict(
        part=part,
        **_object_capsule_fields(obj),
        **self._sparsity_losses(obj, mass_explained_by_capsule),
        **self._probes(obj.caps_presence_prob, mass_explained_by_capsule,
                       labels),
        rec_ll=math_ops.flat_reduce(rec_ll_per_pixel),
        rec_ll_per_pixel=rec_ll_per_pixel)
    if full:
      fields.update(self._evaluation_outputs(part, obj, rec, templates,
                                             target))
    return ScaeOutput(**fields)

  def _image_likelihood(self, part, likelihood, target, full):
    """The part capsule autoencoder's decoder: the templates, placed by
    the part poses and weighted by the part presences, as a per-pixel
    mixture, and the log-likelihood of `target` under it. Upstream may place
    them by the object capsules' winning votes instead (the config's
    vote_type / pres_type 'soft' or 'hard').

    Returns (the rendering, None unless `full`; [B, H, W, C] log-likelihoods).
    Without `full` only the likelihood is built, by the decoder's fused
    path (`TemplateDecoder.log_prob`), which the loss needs and the plots'
    mode and mean do not.
    """
    c = self.config
    vote = {'enc': part.pose, 'soft': likelihood.soft_winner,
            'hard': likelihood.winner}[c.vote_type]
    presence = {'enc': part.presence, 'soft': likelihood.soft_winner_pres,
                'hard': likelihood.winner_pres}[c.pres_type]
    if not full:
      return None, self.template_decoder.log_prob(vote, presence,
                                                  part.feature, target)
    rec = self.template_decoder(vote, presence, part.feature)
    return rec, rec.pdf.log_prob(target)

  def _sparsity_losses(self, obj, mass_explained_by_capsule):
    """The paper's sparsity losses on the object capsules' presences: on
    the prior presences, and on the posterior ones (the mass each capsule
    explains, as a share of the parts)."""
    c = self.config
    n_points = float(obj.likelihood.posterior_mixing_probs.shape[1])
    post_within, post_between = losses.sparsity_loss(
        c.posterior_sparsity_loss_type, mass_explained_by_capsule / n_points,
        num_classes=c.num_classes)
    prior_within, prior_between = losses.sparsity_loss(
        c.prior_sparsity_loss_type, obj.caps_presence_prob,
        num_classes=c.num_classes,
        within_example_constant=c.prior_within_example_constant)
    return dict(
        prior_within_sparsity_loss=prior_within,
        prior_between_sparsity_loss=prior_between,
        posterior_within_sparsity_loss=post_within,
        posterior_between_sparsity_loss=post_between)

  def _probes(self, caps_presence_prob, mass_explained_by_capsule, labels):
    """The linear probes that read the class from the prior and the
    posterior object presences (upstream's `probe.py`; their gradient stops
    at the features, so they never shape the capsules), with their
    cross-entropy and accuracy when `labels` are given."""
    # The posterior probe first, as upstream builds them: the order of their
    # first calls is the order of their variables' random initialisation.
    posterior = self.posterior_probe(mass_explained_by_capsule, labels)
    prior = self.prior_probe(caps_presence_prob, labels)
    fields = {f'{kind}_cls_{name}': value
              for kind, probe in (('prior', prior), ('posterior', posterior))
              for name, value in probe._asdict().items()}
    if labels is not None:
      fields['best_cls_acc'] = tf.maximum(prior.acc, posterior.acc)
    return fields

  def encode(self, images, *, training=False, noise_seed=None,
             full=False, gradient='code') -> Capsules:
    """Part capsules, Set Transformer, object capsules and the capsule
    likelihood of the part poses: the shared trunk of `forward` and
    `capsule_features` (arguments as `forward`'s; `full` adds the
    likelihood's winners; `gradient`: see `configs.GRADIENTS`, values equal
    either way)."""
    c = self.config
    if gradient not in GRADIENTS:
      raise ValueError(f'gradient must be one of {GRADIENTS}, got '
                       f'{gradient!r}.')
    stop_inpt = c.stop_grad_caps_inpt and gradient == 'code'
    stop_target = c.stop_grad_caps_target and gradient == 'code'
    part_seed = obj_seed = None
    if noise_seed is not None:
      part_seed, obj_seed = tf.unstack(
          tf.random.experimental.stateless_split(noise_seed, 2))
    part = self.part_encoder(images, noise=training, seed=part_seed)
    pose, pres = part.pose, part.presence

    input_pose = tf.concat([pose, 1. - pres[..., tf.newaxis]], -1)
    input_pres = pres
    templates = self.template_decoder.make_templates(part.feature)
    inpt_templates = templates
    if stop_inpt:
      input_pose = tf.stop_gradient(input_pose)
      input_pres = tf.stop_gradient(pres)
      inpt_templates = tf.stop_gradient(templates)
    target_pose, target_pres = pose, pres
    if stop_target:
      target_pose = tf.stop_gradient(target_pose)
      target_pres = tf.stop_gradient(target_pres)

    batch_size = tf.shape(images)[0]
    inpt_templates = tf.reshape(
        tf.broadcast_to(inpt_templates, tf.concat(
            [[batch_size], tf.shape(inpt_templates)[1:]], 0)),
        [batch_size, c.n_part_caps, -1])
    set_input = tf.concat([input_pose, part.feature, inpt_templates], -1)
    h = self.set_transformer(set_input, input_pres)

    obj = self.object_capsules(h, target_pose, target_pres, noise=training,
                               full=full, seed=obj_seed)
    return Capsules(part, templates, obj)

  def capsule_features(self, images, kind='posterior',
                       gradient='code') -> CapsuleFeatures:
    """The features of an attack target and its probe's prediction, equal
    to `forward(images, full=False, training=False)`'s: `caps_presence_prob`
    and `prior_cls_pred` ('prior'), or `posterior_presence` and
    `posterior_cls_pred` ('posterior'). `gradient` ('code' or 'full', see
    `configs.GRADIENTS`) chooses the image's gradient, never the values.

    Each attack iteration runs this under a gradient tape. The template
    decoder's image likelihood (the costliest part of the forward pass after
    the CNN), the sparsity losses and the other probe are not built at all:
    graph pruning would not remove the decoder's likelihood, whose fused
    kernel is a stateful call.
    """
    obj = self.encode(images, gradient=gradient).obj
    if kind == 'prior':
      features, probe = obj.caps_presence_prob, self.prior_probe
    elif kind == 'posterior':
      features = posterior_presence(obj.likelihood.posterior_mixing_probs)
      probe = self.posterior_probe
    else:
      raise ValueError(f'kind must be prior or posterior, got {kind!r}.')
    return CapsuleFeatures(features, probe(features).pred)

  def _evaluation_outputs(self, part, obj, rec: Rendering, templates, target):
    """Outputs the loss does not need: mode/mean images, winners, and the
    other three decoder calls of upstream (for plots)."""
    ll = obj.likelihood
    decode = self.template_decoder
    rec_mode = rec.pdf.mode()
    mse_per_pixel = tf.square(target - rec_mode)

    bottom_up = decode(part.pose, part.presence, part.feature)
    top_down = decode(ll.winner, part.presence, part.feature)

    # Upstream merges votes batch-major ([B * K]) but tiles the part presence
    # and features batch-wise (row i gets example i mod B). We reproduce that
    # pairing; it only affects this plotting output.
    n_caps = obj.vote.shape[1]
    merged_votes = tf.reshape(obj.vote, [-1] + obj.vote.shape[2:].as_list())
    merged_pres = tf.reshape(ll.vote_presence,
                             [-1, ll.vote_presence.shape[2]])
    per_caps = decode(merged_votes,
                      merged_pres * tf.tile(part.presence, [n_caps, 1]),
                      tf.tile(part.feature, [n_caps, 1, 1]))

    def summary(r):
      return RenderingSummary(r.transformed_templates, r.mixing_logits,
                              r.pdf.mode())

    return dict(
        winner=ll.winner,
        winner_pres=ll.winner_pres,
        soft_winner=ll.soft_winner,
        soft_winner_pres=ll.soft_winner_pres,
        is_from_capsule=ll.is_from_capsule,
        templates=templates,
        used_templates=rec.transformed_templates,
        rec_mode=rec_mode,
        rec_mean=rec.pdf.mean(),
        mse_per_pixel=mse_per_pixel,
        mse=math_ops.flat_reduce(mse_per_pixel),
        primary_caps_l1=math_ops.flat_reduce(part.presence),
        bottom_up_rec=summary(bottom_up),
        top_down_rec=summary(top_down),
        top_down_per_caps_rec=summary(per_caps),
    )

  def loss(self, out: ScaeOutput):
    return losses.total_loss(self.config, out)


def posterior_presence(posterior_mixing_probs):
  """[B, P, K] -> [B, K]: posterior object presence, the mixing
  probabilities summed over the parts (the mass each capsule explains)."""
  return tf.reduce_sum(posterior_mixing_probs, 1)


#: `ScaeOutput`'s fields that the object capsules and the part likelihood
#: under their votes hold under the same names.
_OBJECT_FIELDS = ('vote', 'scale', 'vote_presence_prob', 'pres_logit_per_caps',
                  'pres_logit_per_vote', 'dynamic_weights_l2',
                  'raw_caps_params', 'raw_caps_features', 'caps_presence_prob')
_LIKELIHOOD_FIELDS = ('vote_presence', 'log_prob', 'posterior_mixing_probs',
                      'mixing_logits', 'mixing_log_prob')


def _object_capsule_fields(obj: ObjectCapsuleOutput):
  """The object capsule autoencoder's outputs: the capsules' votes for the
  part poses and their presences, and the part likelihood under those
  votes."""
  return dict({name: getattr(obj, name) for name in _OBJECT_FIELDS},
              **{name: getattr(obj.likelihood, name)
                 for name in _LIKELIHOOD_FIELDS})


def normalized_sobel_edges(img):
  """Upstream's 'sobel' target: |sobel - median|, rescaled to [0, 1] per image
  and channel (used by the SVHN and CIFAR-10 configs)."""
  sobel = tf.reduce_sum(tf.image.sobel_edges(img), -1)
  median = tfp.stats.percentile(sobel, 50.0, axis=(1, 2), keepdims=True)
  sobel = tf.abs(sobel - median)
  smax = tf.reduce_max(sobel, (1, 2), keepdims=True)
  smin = tf.reduce_min(sobel, (1, 2), keepdims=True)
  return (sobel - smin) / (smax - smin + 1e-8)


def validate_images(images, config: ScaeConfig, what='images'):
  """Raises ValueError unless images is [B, canvas, canvas, C] floats in
  [0, 1] without NaN. Checks values only for concrete (eager) inputs."""
  expected = (f'a float array of shape [batch, {config.canvas_size}, '
              f'{config.canvas_size}, {config.n_channels}] with values in '
              '[0, 1]')
  dtype = getattr(images, 'dtype', None)
  if dtype is None:
    raise ValueError(f'{what}: expected {expected}, got {type(images)}.')
  dtype = tf.as_dtype(dtype)
  if not dtype.is_floating:
    raise ValueError(f'{what}: expected {expected}, got dtype {dtype.name} '
                     '(scale uint8 pixels by 1/255 first).')
  shape = tuple(images.shape)
  if (len(shape) != 4 or shape[1:] != (config.canvas_size, config.canvas_size,
                                       config.n_channels) or shape[0] == 0):
    raise ValueError(f'{what}: expected {expected}, got shape {list(shape)}.')
  if isinstance(images, tf.Tensor) and not tf.executing_eagerly():
    return
  values = np.asarray(images)
  if np.isnan(values).any():
    raise ValueError(f'{what}: expected {expected}, but it contains NaN.')
  lo, hi = float(values.min()), float(values.max())
  if lo < 0. or hi > 1.:
    raise ValueError(f'{what}: expected {expected}, got values in '
                     f'[{lo:g}, {hi:g}].')


def validate_labels(labels, images, config: ScaeConfig):
  """Raises ValueError unless labels are [B] integers in [0, num_classes)."""
  if isinstance(labels, tf.Tensor) and not tf.executing_eagerly():
    return
  labels_arr = np.asarray(labels)
  if labels_arr.ndim != 1 or labels_arr.shape[0] != images.shape[0]:
    raise ValueError(f'labels: expected shape [{images.shape[0]}], got '
                     f'{list(labels_arr.shape)}.')
  if not np.issubdtype(labels_arr.dtype, np.integer):
    raise ValueError(f'labels: expected integers, got {labels_arr.dtype}.')
  if labels_arr.size and (labels_arr.min() < 0
                          or labels_arr.max() >= config.num_classes):
    raise ValueError(f'labels: expected values in [0, {config.num_classes}), '
                     f'got [{labels_arr.min()}, {labels_arr.max()}].')
