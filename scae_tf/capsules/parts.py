"""Part capsules: the part capsule encoder and the template-based decoder.

Paper section 2.1 (PCAE). Upstream: `capsules/primary.py`
(`CapsuleImageEncoder` with `encoder_type='conv_att'`,
`TemplateBasedImageDecoder`).
"""

from typing import NamedTuple, Optional

import numpy as np
import sonnet as snt
import tensorflow as tf

from scae_tf.capsules import math_ops
from scae_tf.capsules import neural
from scae_tf.capsules.likelihoods import ImageMixture
from scae_tf.capsules.resampler import in_xla_context
from scae_tf.capsules.warping import warp_templates


class PartCapsules(NamedTuple):
  pose: tf.Tensor            # [B, P, 6] affine params, AffineGridWarper order
  feature: tf.Tensor         # [B, P, n_special_features]
  presence: tf.Tensor        # [B, P] in (0, 1)
  presence_logit: tf.Tensor  # [B, P]
  img_embedding: tf.Tensor   # [B, h, w, C] CNN output


class PartCNN(snt.Module):
  """The part encoder's ConvNet: 3x3 VALID convolutions, ReLU after each."""

  def __init__(self, in_channels, channels, strides, name='conv_net_2d'):
    super().__init__(name=name)
    self.strides = tuple(strides)
    self.kernels, self.biases = [], []
    for i, out_channels in enumerate(channels):
      fan_in = 3 * 3 * in_channels
      self.kernels.append(tf.Variable(neural.truncated_normal(fan_in)(
          [3, 3, in_channels, out_channels], tf.float32), name=f'w{i}'))
      self.biases.append(tf.Variable(tf.zeros([out_channels]), name=f'b{i}'))
      in_channels = out_channels

  def __call__(self, x):
    for w, b, stride in zip(self.kernels, self.biases, self.strides):
      x = tf.nn.relu(tf.nn.conv2d(x, w, stride, 'VALID') + b)
    return x


def cnn_output_size(canvas_size, strides):
  size = canvas_size
  for stride in strides:
    size = (size - 3) // stride + 1
  return size


class PartEncoder(snt.Module):
  """Image -> part capsules, with the 'conv_att' attention-pooled heads.

  Each capsule reads the CNN feature map through its own softmax attention
  over locations. Upstream reshapes the pooled [B, n_dims, n_caps] tensor to
  [B, n_caps, n_dims] (a reshape, not a transpose); we keep that layout
  because trained checkpoints depend on it.
  """

  def __init__(self, config, name='part_encoder'):
    super().__init__(name=name)
    c = config
    self.n_caps = c.n_part_caps
    self.splits = [c.n_part_caps_dims, c.n_part_special_features, 1]
    self.n_dims = sum(self.splits)
    self.noise_scale = c.part_encoder_noise_scale
    self.cnn = PartCNN(c.n_channels, c.part_cnn_channels, c.part_cnn_strides)
    size = cnn_output_size(c.canvas_size, c.part_cnn_strides)
    channels = c.part_cnn_channels[-1]
    self.embedding_bias = tf.Variable(tf.zeros([size, size, channels]),
                                      name='embedding_bias')
    n_out = self.n_dims * self.n_caps + self.n_caps
    self.head_w = tf.Variable(neural.truncated_normal(channels)(
        [1, 1, channels, n_out], tf.float32), name='head_w')
    self.head_b = tf.Variable(tf.zeros([n_out]), name='head_b')

  def __call__(self, images, noise=False, seed=None) -> PartCapsules:
    """`noise` adds U(-.5, .5) * noise_scale to the presence logits, drawn
    statelessly from `seed` ([2] ints) when given, so runs are replayable."""
    batch_size = tf.shape(images)[0]
    img_embedding = self.cnn(images)

    h = img_embedding + self.embedding_bias
    h = tf.nn.conv2d(h, self.head_w, 1, 'VALID') + self.head_b
    h = tf.reshape(h, [batch_size, -1, h.shape[-1]])
    h, a = tf.split(h, [self.n_dims * self.n_caps, self.n_caps], -1)
    h = tf.reshape(h, [batch_size, -1, self.n_dims, self.n_caps])
    a = tf.nn.softmax(a, 1)[:, :, tf.newaxis]
    h = tf.reduce_sum(h * a, 1)
    h = tf.reshape(h, [batch_size, self.n_caps, self.n_dims])

    pose, feature, pres_logit = tf.split(h, self.splits, -1)
    pres_logit = tf.squeeze(pres_logit, -1)
    if noise and self.noise_scale > 0.:
      shape = tf.shape(pres_logit)
      u = (tf.random.uniform(shape) if seed is None
           else tf.random.stateless_uniform(shape, seed))
      pres_logit += (u - .5) * self.noise_scale

    pres = tf.nn.sigmoid(pres_logit)
    pose = math_ops.geometric_transform(pose)
    return PartCapsules(pose, feature, pres, pres_logit, img_embedding)


def orthogonal_templates(n_templates, template_size, n_channels):
  """Upstream's template init: rows of a random orthogonal matrix in [0, 1].

  Draws from NumPy's global RNG, as upstream does (seed it to reproduce).
  """
  shape = [1, n_templates, template_size, template_size, n_channels]
  n_elems = int(np.prod(shape[2:]))
  n = max(n_templates, n_elems)
  q = np.linalg.qr(np.random.uniform(size=[n, n]))[0]
  q = q[:n_templates, :n_elems].reshape(shape).astype(np.float32)
  return (q - q.min()) / (q.max() - q.min())


class TemplateDecoder(snt.Module):
  """Learned templates, affinely warped by the part poses into an image.

  Renders a per-pixel mixture (paper eq. 2): each template, colourised by a
  per-capsule MLP on the special features, is one component; a constant
  background is the last one. Mixing logits are the warped alpha channel
  plus log part presence.
  """

  def __init__(self, config, name='template_decoder'):
    super().__init__(name=name)
    c = config
    self.canvas_shape = (c.canvas_size, c.canvas_size)
    self.n_channels = c.n_channels
    self.colorize = c.colorize_templates
    self.use_alpha_channel = c.use_alpha_channel
    self.template_nonlin = math_ops.nonlinearity(c.template_nonlin)
    self.color_nonlin = math_ops.nonlinearity(c.color_nonlin)
    # Upstream shifts relu1 colours so that they start near saturation.
    self.color_offset = .99 if c.color_nonlin == 'relu1' else 0.

    self.template_logits = tf.Variable(
        orthogonal_templates(c.n_part_caps, c.template_size, c.n_channels),
        name='templates')
    if self.use_alpha_channel:
      self.templates_alpha = tf.Variable(
          tf.zeros([1, c.n_part_caps, c.template_size, c.template_size, 1]),
          name='templates_alpha')
      self.bg_mixing_logit = tf.Variable([0.], name='bg_mixing_logit')
    else:
      self.temperature_logit = neural.glorot_uniform([1], 'temperature_logit')
    if self.colorize:
      self.color_mlp = neural.MLP(c.n_part_special_features,
                                  [32, c.n_channels])
    self.bg_value = neural.glorot_uniform([1], 'bg_value')

  def make_templates(self, template_feature=None):
    """[1, K, h, w, C] templates, or [B, K, h, w, C] colourised by features."""
    templates = self.template_nonlin(self.template_logits)
    color = self.template_color(template_feature)
    if color is not None:
      templates = templates * color[:, :, tf.newaxis, tf.newaxis]
    return templates

  def template_color(self, template_feature):
    """[B, K, C] per-example template colours, or None (no colourising)."""
    if template_feature is None or not self.colorize:
      return None
    color = self.color_mlp(template_feature)
    return self.color_nonlin(color + self.color_offset)

  def __call__(self, pose, presence, template_feature=None) -> 'Rendering':
    """Renders part capsules.

    Args:
      pose: [B, K, 6] affine parameters.
      presence: [B, K] part presence probabilities.
      template_feature: [B, K, F] special features, or None.
    """
    return self._compose(self._warp(pose),
                         self.template_color(template_feature), presence)

  def log_prob(self, pose, presence, template_feature, target):
    """[B, H, W, C] per-pixel log-likelihood of `target` (the training path).

    The same computation as `self(...).pdf.log_prob(target)`, but everything
    after the warp runs as one XLA cluster: it is a chain of cheap elementwise
    ops over [B, K + 1, H, W] tensors, which XLA fuses into a few loops
    instead of materialising each intermediate (3x faster, forward and
    backward, on CPU). The warp itself stays outside: see resampler.py.
    """
    return self._fused_log_prob(self._warp(pose),
                                self.template_color(template_feature),
                                presence, target)

  @snt.once
  def _build_fused(self):
    self._fused = tf.function(
        lambda warped, color, presence, target: self._compose(
            warped, color, presence).pdf.log_prob(target),
        jit_compile=True, autograph=False)

  def _fused_log_prob(self, warped, color, presence, target):
    if in_xla_context():
      # Already one XLA cluster. A nested compiled function would hand its
      # shape tensors to its gradient as call outputs, which XLA must then
      # treat as compile-time constants: the images and every upstream
      # weight become constants and each step recompiles (~20 s).
      return self._compose(warped, color, presence).pdf.log_prob(target)
    self._build_fused()
    return self._fused(warped, color, presence, target)

  def _warp(self, pose):
    """[B, K, H, W, C (+1 alpha)] templates (and alpha) warped onto the canvas.

    Templates and alpha are shared by all examples and share the warp, so we
    warp one [K, h, w, C + 1] stack with all B * K poses. The per-example
    colour multiplies the result (`_compose`): resampling is linear, so this
    equals warping colourised templates as upstream does, up to rounding.
    """
    batch_size = tf.shape(pose)[0]
    n_templates = pose.shape[1]
    channels = [self.template_nonlin(self.template_logits)]
    if self.use_alpha_channel:
      channels.append(self.templates_alpha)
    stacked = tf.concat(channels, -1)[0]
    warped = warp_templates(stacked, tf.reshape(pose, [-1, 6]),
                            self.canvas_shape)
    return tf.reshape(warped, tf.concat(
        [[batch_size, n_templates], self.canvas_shape, [stacked.shape[-1]]],
        0))

  def _compose(self, warped, color, presence) -> 'Rendering':
    """Warped templates, colours [B, K, C] or None, background -> mixture."""
    batch_size = tf.shape(warped)[0]
    transformed_templates = warped[..., :self.n_channels]
    if color is not None:
      transformed_templates *= color[:, :, None, None]
    bg_image = tf.zeros_like(transformed_templates[:, :1]) + tf.nn.sigmoid(
        self.bg_value)
    components = tf.concat([transformed_templates, bg_image], 1)

    if self.use_alpha_channel:
      template_mixing_logits = warped[..., self.n_channels:]
      bg_mixing_logit = tf.zeros_like(template_mixing_logits[:, :1]) + (
          tf.nn.softplus(self.bg_mixing_logit))
      mixing_logits = tf.concat([template_mixing_logits, bg_mixing_logit], 1)
    else:
      temperature = tf.nn.softplus(self.temperature_logit + .5) + 1e-4
      mixing_logits = components / temperature

    presence = tf.concat([presence, tf.ones([batch_size, 1])], 1)
    mixing_logits += math_ops.safe_log(presence)[..., None, None, None]

    return Rendering(
        transformed_templates=transformed_templates,
        mixing_logits=mixing_logits[:, :-1],
        pdf=ImageMixture(mixing_logits, components))


class Rendering(NamedTuple):
  transformed_templates: tf.Tensor  # [B, K, H, W, C]
  mixing_logits: tf.Tensor          # [B, K, H, W, 1], background excluded
  pdf: Optional[ImageMixture]       # mixture over the K templates + background
