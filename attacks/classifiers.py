"""The four attack targets of the paper: PriK, PosK, PriL, PosL.

An attack target maps images [B, H, W, C] to
  (features [B, K] that the capsule loss decreases, predictions [B] int64)
in pure TensorFlow (it runs inside the attack's compiled loop):

  PriK  k-means on the prior presences  `caps_presence_prob`
  PosK  k-means on the posterior masses `posterior_mixing_probs` summed over
        the parts (`posterior_presence`)
  PriL  the prior linear probe          `prior_cls_pred`
  PosL  the posterior linear probe      `posterior_cls_pred`

The first three letters fix the capsule loss (fork: `classifier[:3]`), the
last one the prediction. Any model with a `config` (canvas_size,
n_channels, n_part_caps, n_obj_caps, num_classes) and either the SCAE's
lean `capsule_features(images, kind)` or its `forward(images, full=False,
training=False)` outputs plugs in through `ModelClassifier`, the tests' toy
models included; other targets subclass `CapsuleClassifier`.
"""

from typing import Optional, Tuple

import tensorflow as tf

from attacks.names import classifier_name
from attacks.names import CLASSIFIERS
from scae_tf import loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.configs import GRADIENTS


class CapsuleClassifier:
  """Base class of attack targets.

  Attributes:
    name: a label for reports.
    feature_kind: 'prior' or 'posterior' (which capsule loss applies).
    image_shape: (H, W, C) of the accepted images.
    num_classes: labels lie in [0, num_classes).
    n_part_caps: P, the posterior capsule loss divides by P^2.
  """

  def __init__(self, name: str, feature_kind: str,
               image_shape: Tuple[int, int, int], num_classes: int,
               n_part_caps: int = 1):
    if feature_kind not in ('prior', 'posterior'):
      raise ValueError(f'feature_kind must be prior or posterior, got '
                       f'{feature_kind!r}.')
    self.name = name
    self.feature_kind = feature_kind
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = int(num_classes)
    self.n_part_caps = int(n_part_caps)

  def __call__(self, images):
    """images [B, H, W, C] float32 -> (features [B, K], int64 preds [B])."""
    raise NotImplementedError


def feature_kind_of(name: str) -> str:
  return 'prior' if classifier_name(name).startswith('Pri') else 'posterior'


class ModelClassifier(CapsuleClassifier):
  """One of PriK / PosK / PriL / PosL on an SCAE-like model.

  model: has `config` and either `capsule_features(images, kind)` returning
    (features [B, K], the probe's prediction [B]) as `SCAE` does, or
    `forward(images, full=False, training=False)` returning
    `caps_presence_prob` [B, K], `posterior_mixing_probs` [B, P, K],
    `prior_cls_pred` and `posterior_cls_pred` [B].
    Build the SCAE with `config.without_noise()` for attacks: with noise on,
    every forward pass draws new presence noise.
  kmeans: a `scae_tf.kmeans.KMeansClassifier` (anything with `feature`,
    `n_features` and `tf_predict`), required for PriK / PosK; its feature
    kind must match the target's.
  """

  def __init__(self, model, name: str, kmeans=None, gradient: str = 'code'):
    name = classifier_name(name)
    if gradient not in GRADIENTS:
      raise ValueError(f'Unknown gradient {gradient!r}; expected one of '
                       f'{", ".join(GRADIENTS)}.')
    kind = feature_kind_of(name)
    c = model.config
    if name.endswith('K'):
      if kmeans is None:
        raise ValueError(f'Classifier {name} needs a k-means classifier '
                         '(kmeans=KMeansClassifier.load(path)).')
      if kmeans.feature != kind:
        raise ValueError(f'Classifier {name} needs a k-means classifier on '
                         f'{kind} features, got one on {kmeans.feature} '
                         'features.')
      if kmeans.n_features != c.n_obj_caps:
        raise ValueError(f'The k-means classifier has {kmeans.n_features} '
                         f'features; the model has {c.n_obj_caps} object '
                         'capsules.')
    super().__init__(name, kind, (c.canvas_size, c.canvas_size, c.n_channels),
                     c.num_classes, c.n_part_caps)
    self.model = model
    self.kmeans = kmeans if name.endswith('K') else None
    self.gradient = gradient

  def __call__(self, images):
    features, probe_pred = capsule_features(self.model, images,
                                            self.feature_kind, self.gradient)
    pred = (self.kmeans.tf_predict(features) if self.kmeans is not None
            else probe_pred)
    return features, tf.cast(pred, tf.int64)


def capsule_features(model, images, kind, gradient='code'):
  """(features [B, K], probe prediction [B]) of `kind` on `model`: its lean
  `capsule_features` where it has one, else read off its forward pass (a
  model without one has no stop-gradients to remove: its one gradient is
  both 'code' and 'full')."""
  if hasattr(model, 'capsule_features'):
    return tuple(model.capsule_features(images, kind, gradient=gradient))
  out = model.forward(images, full=False, training=False)
  if kind == 'prior':
    return out.caps_presence_prob, out.prior_cls_pred
  return (tf.reduce_sum(out.posterior_mixing_probs, 1),
          out.posterior_cls_pred)


def make_classifier(model, name: str, kmeans=None,
                    gradient: str = 'code') -> ModelClassifier:
  """`ModelClassifier(model, name, kmeans, gradient)`: the attack target
  `name` on `model` (kmeans only for PriK / PosK; a path is loaded), whose
  input gradient is the training graph's ('code') or the true one
  ('full', `scae_tf.configs.GRADIENTS`)."""
  if isinstance(kmeans, str):
    kmeans = KMeansClassifier.load(kmeans)
  return ModelClassifier(model, name, kmeans, gradient)


def kmeans_path_beside(checkpoint_prefix: str, name: str,
                       metric: str = 'cosine') -> Optional[str]:
  """Where `run/evaluate.py` saves the k-means of a checkpoint that `name`
  uses (`scae_tf.loading.kmeans_path`; None for PriL/PosL)."""
  name = classifier_name(name)
  if not name.endswith('K'):
    return None
  return loading.kmeans_path(checkpoint_prefix, feature_kind_of(name), metric)
