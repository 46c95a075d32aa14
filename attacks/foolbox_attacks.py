"""Minimal-norm L2 attacks of Foolbox 3 on our attack targets: DDN (Rony et
al. 2019, "Decoupling Direction and Norm...") and FMN (Pintor et al. 2021,
"Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints").

    from attacks import classifiers, foolbox_attacks
    target = classifiers.make_classifier(model, 'PosL', gradient='full')
    attack = foolbox_attacks.FoolboxAttack(target, 'ddn')   # or 'fmn'
    result = attack(images, labels)   # as PGDAttack: [B, H, W, C], [B]
    result.adversarial, result.success, result.l2, result.clean_pred

The adapter: `ClassifierLogits(classifier)` maps images to [B, C] logits in
pure TF, and `foolbox_model(classifier)` wraps it as a
`foolbox.TensorFlowModel` with bounds (0, 1).
  PriL / PosL  the probe's logits through `margins.linear_probe` (the SCAE's
               probe stops its input gradient; its `linear` map does not).
  PriK / PosK  per class, the max over that class's clusters of the k-means
               scores (`tf_cluster_scores`: cosine similarity, larger =
               nearer), times `temperature`. A class without a cluster gets
               one below the row's smallest score (finite, never the
               argmax), as in `margins.kmeans_margin`.
The argmax of the logits is the classifier's own prediction (up to exact
ties between clusters of different classes).

Temperature (k-means only; probes' logits are used as they are): it does
not change the argmax, nor anything FMN does (FMN steps along the
normalised gradient of a logit difference, and its distance estimate
|z_y - z_j| / ||grad|| is scale-free). It only shapes DDN's cross-entropy:
in float32, softmax_y rounds to 1 once z_y leads the others by more than
~16.6, and the cross-entropy's gradient then loses its z_y term (at ~100
more it underflows to 0, where DDN steps in a random direction). Cosine
scores of the capsule features (non-negative) lie in [0, 1], so the default
10 keeps every margin below that (10 x 1 < 16.6) while still weighting the
nearest wrong classes most.

Success and L2 are ours, not Foolbox's: after Foolbox returns, our
classifier runs a fresh forward pass on the returned images. A sample counts
as a success only if its image is finite, within [0, 1] (up to `BOX_SLACK`,
float rounding of x + delta; the image is then clipped to the box and the
clipped image is the one judged and returned), and misclassified by the
classifier (prediction != label). L2 = ||x_adv - x||_2 recomputed in
float32 numpy. Clean errors (the classifier already misclassifies x) are
successes at L2 0 with the clean image and are not sent to Foolbox.

Foolbox 3.3.4's `L2FMNAttack.project` leaves the step unscaled (its factor
is min(1, norms / norms) = 1: epsilon is never used), so the stock attack is
normalised gradient ascent that never comes back towards the boundary. With
`fmn_projection='ball'` (default) the attack is `L2FMNOnBall`, the library's
class with `project` doing what Pintor et al.'s Algorithm 1 says: scale
delta onto the epsilon ball, delta * min(1, eps / ||delta||). 'foolbox'
runs the stock class.

Randomness (Foolbox 3.3.4, read from its source): FMN without an init
attack draws nothing. DDN draws a normal direction (`tf.random.normal`, the
global generator, a full image's worth each step) and uses it only where the
gradient is exactly zero (a flat target: saturated features, a 'code'
gradient that stops). Each call therefore sets TF's GLOBAL seed
(`tf.random.set_seed`) to `seed` (the config's when None) before running
Foolbox: a call is a deterministic function of (images, labels, seed), for
DDN and FMN alike. That reseeds the process's global generator (op-level
random ops that follow); `tf.random.Generator`s, as the other attacks use,
are not affected.

Cost: Foolbox (through eagerpy) runs its own Python loop with eager ops per
step; the model is one `tf.function` call (input signature: no retracing)
under Foolbox's GradientTape, which then runs the function's compiled
backward graph. One forward pass with the input gradient per step, as PGD,
but dearer: `benchmarks/foolbox_iteration.py` (mnist SCAE, PosL with the
true gradient, batch 100, 2 busy cores) measured 0.24 s a DDN or FMN step
against 0.14 s a compiled PGD step (x1.66). The overhead is TensorFlow's,
not Foolbox's: a `tf.function` under an eager tape runs its forward (which
must output every intermediate the backward needs) and its backward as two
graphs, 0.24 s, against 0.15 s for both in one compiled call; Foolbox's
eager per-step ops cost next to nothing.
`callback(i, n)` is called after each of the n = steps model calls (both
attacks call the model once per step).
"""

import dataclasses
from typing import Callable, Optional

import eagerpy as ep
import foolbox as fb
from foolbox.devutils import atleast_kd, flatten
import numpy as np
import tensorflow as tf

from attacks import settings
from attacks.classifiers import ModelClassifier
from attacks.evasion import ON_FAILURE, validate_inputs
from attacks.margins import linear_probe

ATTACKS = ('ddn', 'fmn')
FMN_PROJECTIONS = ('ball', 'foolbox')
#: How far outside [0, 1] a returned pixel may lie (float rounding of
#: x + (clip(x + delta) - x)) and still be clipped back and judged.
BOX_SLACK = 1e-6


class ClassifierLogits:
  """images [B, H, W, C] float32 -> logits [B, num_classes] of a
  `ModelClassifier`, in pure TF (module doc). `__call__` is a `tf.function`
  with an input signature; `logits` is the traceable body."""

  def __init__(self, classifier, temperature: float = 10.):
    if not isinstance(classifier, ModelClassifier):
      raise ValueError('Foolbox attacks need a ModelClassifier (attacks.'
                       'classifiers.make_classifier(model, "PosL")), got '
                       f'{type(classifier).__name__}.')
    settings.check_positive_number('temperature', temperature)
    self.classifier = classifier
    self.temperature = float(temperature)
    self.name = classifier.name
    self.image_shape = classifier.image_shape
    self.num_classes = classifier.num_classes
    km = classifier.kmeans
    self._probe = self._owns = None
    if km is None:
      self._probe = linear_probe(classifier.model, classifier.feature_kind)
    else:
      table = np.asarray(km.cluster_to_label, np.int64)
      if table.min() < 0 or table.max() >= self.num_classes:
        raise ValueError(f'The k-means maps clusters to labels in '
                         f'[{table.min()}, {table.max()}]; the classifier '
                         f'has {self.num_classes} classes.')
      # [k, C]: cluster j predicts class c.
      self._owns = tf.constant(
          table[:, None] == np.arange(self.num_classes)[None, :])
    h, w, c = self.image_shape
    self._compiled = tf.function(
        self.logits,
        input_signature=[tf.TensorSpec([None, h, w, c], tf.float32)])

  def logits(self, images):
    features, _ = self.classifier(images)
    if self._probe is not None:
      return self._probe(features)
    scores = self.classifier.kmeans.tf_cluster_scores(features)  # [B, k]
    floor = tf.stop_gradient(tf.reduce_min(scores, -1, keepdims=True) - 1.)
    grouped = tf.where(self._owns[tf.newaxis], scores[:, :, tf.newaxis],
                       floor[:, :, tf.newaxis])  # [B, k, C]
    return self.temperature * tf.reduce_max(grouped, 1)

  def __call__(self, images):
    return self._compiled(images)


def _device():
  return '/GPU:0' if tf.config.list_physical_devices('GPU') else '/CPU:0'


def foolbox_model(classifier, temperature: float = 10.):
  """`foolbox.TensorFlowModel` of `ClassifierLogits(classifier,
  temperature)` on images in [0, 1]."""
  return fb.TensorFlowModel(ClassifierLogits(classifier, temperature),
                            bounds=(0, 1), device=_device())


class L2FMNOnBall(fb.attacks.L2FMNAttack):
  """Foolbox's L2 FMN with its step projected onto the epsilon ball
  (module doc): x0 + delta * min(1, eps / ||delta||), delta = x - x0."""

  def project(self, x, x0, epsilon):
    delta = x - x0
    norms = ep.maximum(flatten(delta).norms.l2(axis=-1), 1e-12)
    factor = ep.minimum(1, epsilon / norms)
    return x0 + delta * atleast_kd(factor, x.ndim)


@dataclasses.dataclass(frozen=True)
class FoolboxConfig:
  """Settings of a Foolbox minimal-norm attack.

  attack: 'ddn' (`foolbox.attacks.DDNAttack`) or 'fmn'
    (`foolbox.attacks.L2FMNAttack`, see fmn_projection).
  steps: the attack's iterations (one forward pass with gradient each).
  init_epsilon: DDN's first norm.
  gamma: DDN: the norm's factor 1 -/+ gamma per step; FMN: the first
    factor, cosine-annealed to 0.001 (Foolbox's default 0.05 for both).
  max_stepsize, min_stepsize: FMN's step, cosine-annealed from max to min
    (None: max / 100, Foolbox's default). DDN's is fixed by Foolbox (1 to
    0.01).
  fmn_projection: 'ball' (the paper's projection, `L2FMNOnBall`) or
    'foolbox' (the library's class as it is; module doc).
  temperature: scales the k-means logits (module doc); probes unaffected.
  on_failure: 'nan' or 'clean': `adversarial` where no success was found.
  seed: the global TF seed set before each call (override per call; only
    DDN draws, module doc).
  Settings of the other attack are ignored.
  """
  attack: str
  steps: int = 100
  init_epsilon: float = 1.
  gamma: float = .05
  max_stepsize: float = 1.
  min_stepsize: Optional[float] = None
  fmn_projection: str = 'ball'
  temperature: float = 10.
  on_failure: str = 'nan'
  seed: int = 0

  def __post_init__(self):
    settings.check_choices(self, dict(attack=ATTACKS,
                                      fmn_projection=FMN_PROJECTIONS,
                                      on_failure=ON_FAILURE))
    settings.check_integer('steps', self.steps, 1)
    for name in ('init_epsilon', 'gamma', 'max_stepsize', 'temperature'):
      settings.check_positive_number(name, getattr(self, name))
    if self.gamma >= 1:
      raise ValueError(f'gamma must be below 1, got {self.gamma!r}.')
    if self.min_stepsize is not None:
      settings.check_positive_number('min_stepsize', self.min_stepsize)
    settings.check_integer('seed', self.seed, 0)


PRESETS = {
    # Rony et al.'s settings as Foolbox's defaults.
    'ddn': FoolboxConfig('ddn'),
    # Foolbox's defaults, the step projected onto the ball.
    'fmn': FoolboxConfig('fmn'),
}


def get_config(preset='ddn', **overrides) -> FoolboxConfig:
  """The named preset (or a FoolboxConfig) with `overrides` applied."""
  return settings.preset_config(PRESETS, preset, FoolboxConfig, 'Foolbox',
                                overrides)


def make_foolbox_attack(config: FoolboxConfig):
  """The Foolbox attack object of `config`."""
  if config.attack == 'ddn':
    return fb.attacks.DDNAttack(init_epsilon=config.init_epsilon,
                                steps=config.steps, gamma=config.gamma)
  kind = (L2FMNOnBall if config.fmn_projection == 'ball'
          else fb.attacks.L2FMNAttack)
  return kind(steps=config.steps, max_stepsize=config.max_stepsize,
              min_stepsize=config.min_stepsize, gamma=config.gamma)


@dataclasses.dataclass(frozen=True)
class MinimalNormResult:
  """What a `VerifiedAttack` (FMN and DDN of Foolbox, our DDN) returns
  (numpy arrays).

  adversarial: [B, H, W, C] float32, the returned image (clipped to the
    box); NaN (on_failure='nan') or the clean image ('clean') where the
    attack failed; the clean image for clean errors.
  success: [B] bool, our classifier misclassifies `adversarial` (module
    doc: re-verified).
  l2: [B] float32 ||adversarial - x||_2, inf where it failed, 0 for clean
    errors.
  clean_pred: [B] int64 the classifier's prediction on the clean images.
  """
  adversarial: np.ndarray
  success: np.ndarray
  l2: np.ndarray
  clean_pred: np.ndarray


FoolboxResult = MinimalNormResult


class VerifiedAttack:
  """A minimal-norm attack on a `ModelClassifier` that searches through
  `ClassifierLogits` and counts only what a fresh forward pass of the
  classifier confirms (module doc).

  attack = Subclass(classifier, preset, **overrides)
  result = attack(images, labels, seed=None, callback=None)

  Subclasses resolve their config and give `_search(images, labels, seed,
  callback)`, which attacks the correctly classified inputs and returns
  their images ([n, H, W, C], NaN where it found none).
  """

  def __init__(self, classifier, config):
    self.config = config
    self.logits = ClassifierLogits(classifier, self.config.temperature)
    self.classifier = classifier
    self.name = classifier.name
    self.image_shape = classifier.image_shape
    self.num_classes = classifier.num_classes
    h, w, c = self.image_shape
    self._predict = tf.function(
        lambda x: classifier(x)[1],
        input_signature=[tf.TensorSpec([None, h, w, c], tf.float32)])

  def _search(self, images, labels, seed, callback):
    raise NotImplementedError

  def predict(self, images: np.ndarray) -> np.ndarray:
    """[B] int64 our classifier's prediction (a fresh forward pass)."""
    return self._predict(tf.constant(images, tf.float32)).numpy().astype(
        np.int64)

  def verify(self, images: np.ndarray, labels: np.ndarray, returned):
    """(success [B], image [B, H, W, C], l2 [B]) of the images the search
    returned for (images, labels): module doc."""
    adv = np.asarray(returned, np.float32).reshape(images.shape)
    flat = adv.reshape(len(adv), -1)
    finite = np.isfinite(flat).all(1)
    with np.errstate(invalid='ignore'):
      in_box = finite & (flat >= -BOX_SLACK).all(1) & (
          flat <= 1. + BOX_SLACK).all(1)
    adv = np.where(in_box[:, None, None, None], np.clip(adv, 0., 1.),
                   images).astype(np.float32)
    success = in_box & (self.predict(adv) != labels)
    diff = (adv - images).reshape(len(adv), -1)
    l2 = np.sqrt(np.sum(np.square(diff), 1, dtype=np.float32),
                 dtype=np.float32)
    return success, adv, l2

  def __call__(self, images, labels, seed: Optional[int] = None,
               callback: Optional[Callable[[int, int], None]] = None
               ) -> MinimalNormResult:
    cfg = self.config
    images, labels = validate_inputs(images, labels, self.image_shape,
                                     self.num_classes)
    clean_pred = self.predict(images)
    success = clean_pred != labels
    adv = images.copy()
    l2 = np.where(success, 0., np.inf).astype(np.float32)
    todo = np.flatnonzero(~success)
    if todo.size:
      returned = self._search(images[todo], labels[todo],
                              cfg.seed if seed is None else seed, callback)
      ok, img, dist = self.verify(images[todo], labels[todo], returned)
      success[todo], adv[todo], l2[todo] = ok, img, np.where(ok, dist,
                                                             np.inf)
    failed = ~success
    adv[failed] = np.nan if cfg.on_failure == 'nan' else images[failed]
    return MinimalNormResult(adversarial=adv, success=success,
                             l2=l2.astype(np.float32),
                             clean_pred=clean_pred)


class FoolboxAttack(VerifiedAttack):
  """DDN or FMN of Foolbox on a `ModelClassifier`, with our interface.

  attack = FoolboxAttack(classifier, preset='ddn', **overrides)
  result = attack(images, labels, seed=None, callback=None)

  `overrides` are `FoolboxConfig` fields. Success and L2 are re-verified
  with our classifier (module doc).
  """

  def __init__(self, classifier, preset='ddn', **overrides):
    super().__init__(classifier, get_config(preset, **overrides))
    self.model = fb.TensorFlowModel(self._model_call, bounds=(0, 1),
                                    device=_device())
    self.attack = make_foolbox_attack(self.config)
    self._tick = None

  def _model_call(self, images):
    out = self.logits(images)
    if self._tick is not None:
      self._tick()
    return out

  def _run_foolbox(self, images: np.ndarray, labels: np.ndarray
                   ) -> np.ndarray:
    """Foolbox's raw (unclipped) minimal-norm images for correctly
    classified inputs."""
    x = tf.constant(images)
    criterion = fb.criteria.Misclassification(tf.constant(labels))
    raw, _, _ = self.attack(self.model, x, criterion, epsilons=None)
    return raw.numpy()

  def _search(self, images, labels, seed, callback):
    steps, calls = self.config.steps, [0]

    def tick():
      if callback is not None and calls[0] < steps:
        callback(calls[0], steps)
      calls[0] += 1

    tf.random.set_seed(seed)
    self._tick = tick
    try:
      return self._run_foolbox(images, labels)
    finally:
      self._tick = None
