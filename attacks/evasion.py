"""The evasion attack on SCAE classifiers (paper section 4, Algorithm 1;
Appendix A, Algorithm 5), as the fork's `attack_opt.py` runs it.

    from attacks import classifiers, evasion
    target = classifiers.make_classifier(model, 'PosK', kmeans=clf)
    attack = evasion.CapsuleAttack(target, preset='paper_eval')
    result = attack(images, labels)  # [B, H, W, C] in [0, 1]; [B] ints
    result.adversarial  # [B, H, W, C] float32; NaN (or clean) where it failed
    result.success      # [B] bool
    result.l2           # [B] float32 ||x_adv - x||_2, inf where it failed

Per call: the clean pass fixes the capsule subset S, the clean prediction
and the mask; then `outer_iterations` times: draw p' ~ U[0, 1), reset the
optimiser, run `inner_iterations` optimiser steps on
    alpha * capsule_loss(x_adv) + 0.5 * ||x_adv - x||^2,
    x_adv = 0.5 * (tanh(atanh((x - .5) / .5 * 0.999999) + mask * p') + 1),
checking success after every step and keeping, per example, the successful
x_adv of smallest L2; then update alpha per example (x10 until the first
success, then bisection). Each outer iteration is ONE call of a compiled
`tf.function` whose inner loop is a `tf.while_loop`: no host round trip per
step; all per-example bookkeeping is tensors.

One loop iteration does one forward pass with the input gradient at p'_j
(which also gives the predictions at p'_j, i.e. the success test of the
previous step) and one optimiser update; a final forward pass tests the last
step. That is exactly the fork's schedule (it tests p'_1 .. p'_n, never the
random start p'_0) with n + 1 forward passes instead of the fork's 2n.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from attacks import objectives
from attacks import settings
from attacks.classifiers import CapsuleClassifier, make_classifier
from attacks.names import SUCCESS_RULES
from attacks.optimizers import OPTIMIZERS, make_optimizer
from scae_tf import interrupts

ON_FAILURE = ('nan', 'clean')


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """Settings of the attack. Defaults are the fork's behaviour.

  optimizer: 'adam' (TF1 Adam, .9 / .999 / 1e-8), 'rmsprop' (TF1 RMSProp,
    momentum .9, epsilon 1e-6, mean square starting at 1) or 'sign' (paper
    formula 9: p' -= learning_rate * sign(grad)).
  learning_rate: the optimiser's rate; beta of formula (9) for 'sign'.
  outer_iterations: binary-search steps on alpha (fresh p' and optimiser).
  inner_iterations: optimiser steps per outer iteration.
  const_init: alpha's initial value (the paper's 100).
  use_mask: multiply p' by the blurred clean image (fork); False = paper.
  mask_radius, mask_times: the blur (`imblur` defaults 1, 1: 3 x 3, once).
  subset: 'batch' (fork: above the whole batch's mean presence) or
    'example' (paper formula 4).
  capsule_loss: 'squared' (fork: 0.5 sum_S f^2, / P^2 for posterior) or
    'sum' (paper formula 3).
  const_coupling: 'batch' (fork: the batch's alphas are summed, see
    `objectives.total_loss`) or 'example' (each example its own alpha).
  success: 'label' (fork: prediction != true label) or 'clean_prediction'
    (paper: != prediction on the clean image).
  on_failure: 'nan' (evaluation) or 'clean' (training data): what
    `adversarial` holds for examples with no success.
  seed: seeds the p' draws of an attack object (override per call).
  target: the classifier the preset is meant for (informational;
    `make_attack` uses it when no classifier is named).
  jit_compile: XLA-compile each inner iteration (forward, input gradient,
    bookkeeping, step), called from an uncompiled loop, in `__call__` and
    in `in_graph` (nested in the caller's uncompiled graph). Whether it
    pays depends on the CPU (RESULTS.md, Speed): off by default.
  """
  optimizer: str
  learning_rate: float
  outer_iterations: int
  inner_iterations: int
  const_init: float = 100.
  use_mask: bool = True
  mask_radius: int = 1
  mask_times: int = 1
  subset: str = 'batch'
  capsule_loss: str = 'squared'
  const_coupling: str = 'batch'
  success: str = 'label'
  on_failure: str = 'nan'
  seed: int = 0
  target: Optional[str] = None
  jit_compile: bool = False

  def __post_init__(self):
    choices = dict(optimizer=tuple(OPTIMIZERS),
                   subset=objectives.SUBSET_RULES,
                   capsule_loss=objectives.CAPSULE_LOSSES,
                   const_coupling=objectives.CONST_COUPLINGS,
                   success=SUCCESS_RULES, on_failure=ON_FAILURE)
    settings.check_choices(self, choices)
    for name in ('outer_iterations', 'inner_iterations', 'mask_radius',
                 'mask_times'):
      settings.check_integer(name, getattr(self, name))
    for name in ('learning_rate', 'const_init'):
      settings.check_positive_number(name, getattr(self, name))

  def replace(self, **changes) -> 'AttackConfig':
    return settings.replace_fields(self, 'attack', changes)


#: The fork's `AttackerOPT.OptimizerConfigs` ([outer, inner, lr, optimizer]).
#: paper_eval = 'Adam_fast' (paper Table 4, section 6.2); paper_train =
#: 'FGSM_normal' (Appendix A), which the defences run against PosL and whose
#: failed examples stay clean (`nan_if_fail=False`).
PRESETS = {
    'paper_eval': AttackConfig('adam', 1.0, 9, 300),
    'paper_train': AttackConfig('sign', 1.0, 5, 30, on_failure='clean',
                                target='PosL'),
    'adam_normal': AttackConfig('adam', 0.1, 9, 1000),
    'adam_complex': AttackConfig('adam', 0.01, 9, 2000),
    'rmsprop_fast': AttackConfig('rmsprop', 0.1, 9, 300),
    'rmsprop_normal': AttackConfig('rmsprop', 0.1, 9, 1000),
    'rmsprop_complex': AttackConfig('rmsprop', 0.1, 9, 2000),
    'fgsm_fast': AttackConfig('sign', 2.5, 3, 10, on_failure='clean',
                              target='PosL'),
}


def get_config(preset='paper_eval', **overrides) -> AttackConfig:
  """The named preset (or an AttackConfig) with `overrides` applied."""
  return settings.preset_config(PRESETS, preset, AttackConfig, 'attack',
                                overrides)


@dataclasses.dataclass(frozen=True)
class AttackResult:
  """What `CapsuleAttack.__call__` returns (numpy arrays).

  adversarial: [B, H, W, C] float32, the smallest-L2 successful image, NaN
    (on_failure='nan') or the clean image ('clean') where none succeeded.
  success: [B] bool.
  l2: [B] float32 ||adversarial - x||_2, inf where it failed.
  clean_pred: [B] int64 the target's prediction on the clean images.
  const_history: [outer_iterations, B] alpha used at each outer iteration.
  hit_history: [outer_iterations, B] bool, any inner step succeeded.
  """
  adversarial: np.ndarray
  success: np.ndarray
  l2: np.ndarray
  clean_pred: np.ndarray
  const_history: np.ndarray
  hit_history: np.ndarray


def update_const(const, lower, upper, hit):
  """One per-example step of the search on alpha, all [B]:
  hit -> upper = const, else lower = const; then const * 10 while upper is
  still infinite, else (lower + upper) / 2. Returns (const, lower, upper)."""
  upper = tf.where(hit, const, upper)
  lower = tf.where(hit, lower, const)
  const = tf.where(tf.math.is_inf(upper), const * 10., (lower + upper) / 2.)
  return const, lower, upper


def validate_inputs(images, labels, image_shape, num_classes):
  """Checks images [B, H, W, C] (finite floats in [0, 1]) and labels [B]
  (integers in [0, num_classes)); returns them as float32 / int64 numpy."""
  want = f'float images of shape [B, {", ".join(map(str, image_shape))}] ' \
         'with values in [0, 1]'
  if images is None or not hasattr(images, 'shape'):
    raise ValueError(f'images: expected {want}, got {type(images).__name__}.')
  images = np.asarray(images)
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'images: expected {want}, got dtype {images.dtype} '
                     '(scale uint8 pixels by 1/255 first).')
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape) \
      or images.shape[0] == 0:
    raise ValueError(f'images: expected {want}, got shape '
                     f'{list(images.shape)}.')
  if not np.isfinite(images).all():
    raise ValueError(f'images: expected {want}, but they contain NaN or inf.')
  lo, hi = float(images.min()), float(images.max())
  if lo < 0. or hi > 1.:
    raise ValueError(f'images: expected {want}, got values in '
                     f'[{lo:g}, {hi:g}].')
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise ValueError(f'labels: expected shape [{images.shape[0]}], got '
                     f'{list(labels.shape)}.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels: expected integers, got dtype {labels.dtype}.')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels: expected values in [0, {num_classes}), got '
                     f'[{labels.min()}, {labels.max()}].')
  return images.astype(np.float32), labels.astype(np.int64)


class CapsuleAttack:
  """Batched, in-graph evasion attack on a `CapsuleClassifier`.

  attack = CapsuleAttack(classifier, preset='paper_eval', **overrides)
  result = attack(images, labels, seed=None, callback=None)

  `overrides` are `AttackConfig` fields. `callback(i, n)` is called after
  each outer iteration i (0-based) of n, e.g. to advance a progress bar.
  """

  def __init__(self, classifier: CapsuleClassifier, preset='paper_eval',
               **overrides):
    if not isinstance(classifier, CapsuleClassifier):
      raise ValueError('classifier must be a CapsuleClassifier (e.g. '
                       'attacks.classifiers.make_classifier(model, "PosK", '
                       f'kmeans)), got {type(classifier).__name__}.')
    self.config = get_config(preset, **overrides)
    self.classifier = classifier
    self._optimizer = make_optimizer(self.config.optimizer,
                                     self.config.learning_rate)
    self._rng = tf.random.Generator.from_seed(self.config.seed)
    h, w, c = classifier.image_shape
    img = tf.TensorSpec([None, h, w, c], tf.float32)
    vec = tf.TensorSpec([None], tf.float32)
    self._prepare = tf.function(self._prepare_impl, input_signature=[img])
    # XLA (jit_compile) goes around one inner iteration only, inside
    # `_outer_impl`: compiled as a whole, the loop ran 1.58x slower than its
    # iteration compiled alone and called from an uncompiled loop (RESULTS,
    # the attack iteration's profile), and a training step around it loses
    # with XLA.
    self._outer = tf.function(
        self._outer_impl,
        input_signature=[img, img, img, tf.TensorSpec([None, None]),
                         tf.TensorSpec([None], tf.int64), vec, vec, img, img])

  # --- compiled pieces -------------------------------------------------------

  def _prepare_impl(self, x):
    """Clean pass: (w [B,H,W,C], mask [B,H,W,C], subset [B,K],
    clean_pred [B])."""
    cfg = self.config
    features, pred = self.classifier(x)
    subset = objectives.capsule_subset(features, cfg.subset)
    if cfg.use_mask:
      mask = objectives.blur_mask(x, cfg.mask_radius, cfg.mask_times)
    else:
      mask = tf.ones_like(x)
    return objectives.to_tanh_space(x), mask, subset, pred

  def _outer_impl(self, x, w, mask, subset, target, const, best_l2, best_img,
                  p):
    """One outer iteration from p = p'_0: inner_iterations optimiser steps.
    Returns (best_l2 [B], best_img [B,H,W,C], hit [B] bool)."""
    cfg, opt = self.config, self._optimizer

    def forward(p):
      x_adv = objectives.adversarial_images(w, mask, p)
      features, pred = self._features(x_adv, target)
      return x_adv, features, pred, objectives.perturbation_loss(x_adv, x)

    def record(active, x_adv, pred, p_loss, hit, best_l2, best_img):
      # The L2 norm from the same float32 sum as the loss: sqrt(2 * p_loss).
      l2 = tf.sqrt(2. * p_loss)
      # A non-finite loss (the fork stops the batch's inner loop there) never
      # counts as a success.
      ok = active & tf.not_equal(pred, target) & tf.math.is_finite(l2)
      better = ok & (l2 < best_l2)
      best_l2 = tf.where(better, l2, best_l2)
      best_img = tf.where(better[:, None, None, None], x_adv, best_img)
      return hit | ok, best_l2, best_img

    def iteration(j, p, state, hit, best_l2, best_img):
      with tf.GradientTape() as tape:
        tape.watch(p)
        x_adv, features, pred, p_loss = forward(p)
        c_loss = self._attack_loss(features, subset)
        loss = objectives.total_loss(c_loss, p_loss, const,
                                     cfg.const_coupling)
      grad = tape.gradient(loss, p)
      # This pass is at p'_j: it tests the previous step (not p'_0, the
      # random start, which the fork never tests).
      hit, best_l2, best_img = record(j > 0, x_adv, pred, p_loss, hit,
                                      best_l2, best_img)
      p, state = opt.apply(p, grad, state)
      return p, state, hit, best_l2, best_img

    if cfg.jit_compile:
      iteration = tf.function(iteration, jit_compile=True)
    hit = tf.zeros_like(target, tf.bool)
    state = opt.init(p)
    j = tf.constant(0)
    # A signal ends the loop early (scae_tf.interrupts); the results of a
    # loop cut short are then never used.
    while interrupts.keep_going(j < cfg.inner_iterations, after=best_l2):
      p, state, hit, best_l2, best_img = iteration(j, p, state, hit, best_l2,
                                                   best_img)
      j += 1
    x_adv, _, pred, p_loss = forward(p)
    hit, best_l2, best_img = record(tf.constant(True), x_adv, pred, p_loss,
                                    hit, best_l2, best_img)
    return best_l2, best_img, hit

  # Hooks of the loss, which `attacks.margin_cw` replaces.

  def _features(self, x_adv, target):
    """(what the attack loss reads, predictions [B]) at x_adv."""
    del target  # the capsule loss does not depend on the label
    return self.classifier(x_adv)

  def _attack_loss(self, features, subset):
    """[B] the loss weighted by alpha: the capsule loss."""
    clf = self.classifier
    return objectives.capsule_loss(features, subset, clf.feature_kind,
                                   clf.n_part_caps, self.config.capsule_loss)

  def _search(self, x, labels, rng, prepare, outer, after=None):
    """The attack's one set-up and search, in `__call__` (compiled pieces,
    eager) as in `in_graph` (their bodies, traced into the caller's graph):
    the clean pass `prepare`, then `outer_iterations` calls of `outer` from
    fresh p' ~ U[0, 1) drawn from `rng`, each followed by `after(i, alpha,
    hit)` and the update of alpha. Returns (clean_pred [B], best_l2 [B],
    best_img [B, H, W, C])."""
    cfg = self.config
    w, mask, subset, clean_pred = prepare(x)
    target = (tf.cast(labels, tf.int64) if cfg.success == 'label'
              else clean_pred)
    batch = tf.shape(x)[0]
    const = tf.fill([batch], tf.constant(cfg.const_init, tf.float32))
    lower = tf.zeros([batch])
    upper = tf.fill([batch], tf.constant(np.inf, tf.float32))
    best_l2 = tf.fill([batch], tf.constant(np.inf, tf.float32))
    best_img = tf.zeros_like(x)
    for i in range(cfg.outer_iterations):
      p = rng.uniform(tf.shape(x), dtype=tf.float32)
      best_l2, best_img, hit = outer(x, w, mask, subset, target, const,
                                     best_l2, best_img, p)
      if after is not None:
        after(i, const, hit)
      const, lower, upper = update_const(const, lower, upper, hit)
    return clean_pred, best_l2, best_img

  def in_graph(self, images, labels, rng: tf.random.Generator):
    """The whole attack as traceable TF ops, for use inside a compiled
    training step (the defences' adversarial batches, Algorithm 5).

    images [B, H, W, C] float32 in [0, 1] and labels [B] int64 are tensors
    (not validated); the p' draws come from `rng`, which the caller keeps
    in its checkpoint. Given a generator in the same state, the result
    equals `__call__(images, labels, seed=...)`'s.
    Returns (adversarial, success [B] bool, l2 [B]); `adversarial` holds
    the clean image where the attack failed, whatever `on_failure` says.
    """
    x = tf.convert_to_tensor(images, tf.float32)
    _, best_l2, best_img = self._search(x, labels, rng, self._prepare_impl,
                                        self._outer_impl)
    success = tf.math.is_finite(best_l2)
    adversarial = tf.where(success[:, None, None, None], best_img, x)
    # A training step whose attack a signal cut short stops there.
    return interrupts.guard(adversarial, success, best_l2)

  # --- public API -------------------------------------------------------------

  def __call__(self, images, labels, seed: Optional[int] = None,
               callback: Optional[Callable[[int, int], None]] = None
               ) -> AttackResult:
    cfg, clf = self.config, self.classifier
    images, labels = validate_inputs(images, labels, clf.image_shape,
                                     clf.num_classes)
    rng = self._rng if seed is None else tf.random.Generator.from_seed(seed)
    consts, hits = [], []

    def after(i, const, hit):
      interrupts.check()  # an outer iteration a signal may have cut short
      consts.append(const.numpy())
      hits.append(hit.numpy())
      if callback is not None:
        callback(i, cfg.outer_iterations)

    clean_pred, best_l2, best_img = self._search(
        tf.constant(images), labels, rng, self._prepare, self._outer, after)
    l2 = best_l2.numpy()
    success = np.isfinite(l2)
    fill = np.nan if cfg.on_failure == 'nan' else images
    adversarial = np.where(success[:, None, None, None], best_img.numpy(),
                           fill).astype(np.float32)
    return AttackResult(adversarial=adversarial, success=success,
                        l2=l2.astype(np.float32),
                        clean_pred=clean_pred.numpy().astype(np.int64),
                        const_history=np.stack(consts),
                        hit_history=np.stack(hits))


def make_attack(model, preset='paper_eval', classifier: Optional[str] = None,
                kmeans=None, **overrides) -> CapsuleAttack:
  """CapsuleAttack on `model` against `classifier` (default: the preset's
  target, e.g. PosL for paper_train)."""
  config = get_config(preset, **overrides)
  name = classifier or config.target
  if name is None:
    raise ValueError(f'Preset {preset!r} names no target classifier; pass '
                     'classifier=PriK|PosK|PriL|PosL.')
  return CapsuleAttack(make_classifier(model, name, kmeans), config)
