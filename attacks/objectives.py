"""Loss terms, capsule subset and perturbation mask of the SCAE evasion attack.

Paper section 4 (Algorithm 1) as the fork's `attack_opt.py` computes it; see
`docs/code_vs_paper.md`, "The attack". Shapes: B examples, K object capsules,
P part capsules, images [B, H, W, C] in [0, 1]. All functions are pure
TensorFlow, usable eagerly and inside `tf.function`.
"""

import tensorflow as tf

from attacks.names import CAPSULE_LOSSES
from attacks.names import CONST_COUPLINGS
from attacks.names import SUBSET_RULES

#: The fork maps x to atanh((x - 0.5) / 0.5 * 0.999999): the factor keeps
#: atanh finite at x = 0 and x = 1 (paper footnote 1).
TANH_SQUEEZE = 0.999999

FEATURE_KINDS = ('prior', 'posterior')


def to_tanh_space(images):
  """[B, H, W, C] in [0, 1] -> w = atanh((x - 0.5) / 0.5 * 0.999999)."""
  images = tf.convert_to_tensor(images, tf.float32)
  return tf.atanh((images - 0.5) / 0.5 * TANH_SQUEEZE)


def from_tanh_space(w):
  """w -> 0.5 * (tanh(w) + 1), in [0, 1] for any w (the box constraint)."""
  return 0.5 * (tf.tanh(w) + 1.)


def adversarial_images(w, mask, p):
  """x_adv = 0.5 * (tanh(w + mask * p') + 1); all [B, H, W, C].

  The fork multiplies the optimised variable p' by the mask (not the paper's
  w + p'); with mask = 1 both agree.
  """
  return from_tanh_space(w + mask * p)


def _box_sum(images, radius):
  """Sum over the (2r+1)^2 neighbourhood, out-of-bounds cells adding 0."""
  channels = int(images.shape[-1])
  size = 2 * radius + 1
  kernel = tf.ones([size, size, channels, 1], images.dtype)
  return tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], 'SAME')


def blur_mask(images, radius: int = 1, times: int = 1):
  """The fork's `imblur(type='a')`: box average, [B, H, W, C] -> same shape.

  Each pixel becomes the mean of its (2r+1) x (2r+1) neighbourhood per
  channel; near the border only the in-bounds neighbours are averaged (a
  corner of a 3 x 3 box averages 4 pixels, an edge 6), i.e. no padding.
  Repeated `times` times. A pixel whose neighbourhood is all zero gets mask 0
  and can never be perturbed: the attack stays near the strokes.
  """
  if radius < 1 or times < 1:
    raise ValueError(f'radius and times must be >= 1, got {radius}, {times}.')
  x = tf.convert_to_tensor(images, tf.float32)
  # Number of in-bounds neighbours of every pixel (the same for all images).
  counts = _box_sum(tf.ones_like(x[:1]), radius)
  for _ in range(times):
    x = _box_sum(x, radius) / counts
  return x


def capsule_subset(clean_features, rule: str = 'batch'):
  """S as a 0/1 float mask [B, K] from the clean features [B, K].

  'batch' (the fork, the default): capsules whose clean feature exceeds the
  mean of the WHOLE batch tensor (`tf.reduce_mean(pres_clean)`).
  'example' (paper formula 4): exceeds the mean of its own example's K
  features.
  """
  if rule not in SUBSET_RULES:
    raise ValueError(f'subset rule must be one of {SUBSET_RULES}, got '
                     f'{rule!r}.')
  f = tf.convert_to_tensor(clean_features)
  axis = None if rule == 'batch' else -1
  mean = tf.reduce_mean(f, axis=axis, keepdims=True)
  return tf.cast(f > mean, f.dtype)


def capsule_loss(features, subset, feature_kind: str, n_part_caps: int,
                 form: str = 'squared'):
  """Per-example capsule loss f(x + p) WITHOUT the constant alpha: [B].

  features: [B, K] prior presences ('prior') or posterior masses, i.e.
  posterior mixing probabilities summed over the P parts ('posterior').
  'squared' (the fork): 0.5 * sum_{i in S} f_i^2, divided by P^2 for
  'posterior' (masses lie in [0, P]; `tf.nn.l2_loss(...) / P**2`).
  'sum' (paper formula 3): sum_{i in S} f_i, as written (no division).
  """
  if feature_kind not in FEATURE_KINDS:
    raise ValueError(f'feature_kind must be one of {FEATURE_KINDS}, got '
                     f'{feature_kind!r}.')
  if form not in CAPSULE_LOSSES:
    raise ValueError(f'capsule loss must be one of {CAPSULE_LOSSES}, got '
                     f'{form!r}.')
  selected = tf.convert_to_tensor(features) * subset
  if form == 'sum':
    return tf.reduce_sum(selected, -1)
  loss = 0.5 * tf.reduce_sum(tf.square(selected), -1)
  if feature_kind == 'posterior':
    loss = loss / float(n_part_caps) ** 2
  return loss


def perturbation_loss(x_adv, x):
  """0.5 * ||x_adv - x||^2 per example: [B, H, W, C] x 2 -> [B]."""
  return 0.5 * tf.reduce_sum(tf.square(x_adv - x), axis=[1, 2, 3])


def total_loss(capsule_losses, perturbation_losses, const,
               coupling: str = 'batch'):
  """The scalar the optimiser minimises, from [B] capsule / perturbation
  losses and the [B] constants alpha.

  'example' (paper formula 5): sum_b (alpha_b * f_b + 0.5 ||p_b||^2).
  'batch' (the fork, the default): the fork's loss is the vector
  `const * tf.nn.l2_loss(subset) + sum(p_loss)`, where `tf.nn.l2_loss` sums
  over the WHOLE batch, so entry b is alpha_b * sum_b' f_b' + sum_b' p_b';
  TF1 differentiates the sum of a vector loss, giving
  (sum_b alpha_b) * (sum_b f_b) + B * sum_b p_b. Every example's capsule term
  is thus weighted by the batch MEAN of alpha (relative to its perturbation
  term), whatever its own alpha: the per-example search on alpha only acts
  through that mean. Kept as the default because the paper's numbers come
  from it.
  """
  if coupling not in CONST_COUPLINGS:
    raise ValueError(f'const coupling must be one of {CONST_COUPLINGS}, got '
                     f'{coupling!r}.')
  if coupling == 'example':
    return tf.reduce_sum(const * capsule_losses + perturbation_losses)
  batch = tf.cast(tf.shape(perturbation_losses)[0], perturbation_losses.dtype)
  return (tf.reduce_sum(const) * tf.reduce_sum(capsule_losses)
          + batch * tf.reduce_sum(perturbation_losses))
