"""PGD-L2 (Madry et al. 2018) on the margin of the deployed classifier, at a
fixed L2 budget or searching the smallest budget per sample.

    from attacks import classifiers, pgd
    target = classifiers.make_classifier(model, 'PosK', kmeans=clf)
    attack = pgd.PGDAttack(target, 'pgd_l2', eps=4.)
    result = attack(images, labels)   # as CapsuleAttack: [B, H, W, C], [B]
    result.adversarial, result.success, result.l2, result.margin

The loss is `attacks.margins` (positive = classified as the label), which
PGD lowers. One restart: a start, then `steps` steps
    x' <- P_box(P_ball(x' - step * g / ||g||_2)),  g = d margin / d x',
P_ball scaling x' - x back onto the eps-ball around x, P_box clipping to
[0, 1] (the clip keeps the point in the ball: x is in the box, so clipping
only shrinks every coordinate of x' - x). The first restart starts at x
itself (`zero_start`, the default of Madry et al.'s `robustness` library),
the others at x + delta_0, delta_0 uniform in the eps-ball. Why the clean
start: with a fixed step, the part of a random start orthogonal to the
best direction only shrinks through the projection, by about
exp(-0.6 * step_scale) over the steps spent on the sphere whatever their
number: on a linear classifier a random start ends ~2.5 % short of the
budget's best point, the clean start on it. Every point visited, the random
start included, is scored; per sample the best is kept over all steps and
restarts: a misclassified point beats a correctly classified one, and
among equals the more negative margin wins. The clean image itself is the
first candidate, so a clean error always comes back as a success (at a
fixed budget with its most negative margin found, as any success; in the
minimal-norm search as the clean image, L2 = 0).
Each restart is ONE call of a compiled `tf.function` whose steps are a
`tf.range` loop, as in `attacks.evasion`: one forward pass with the input
gradient per step (the cost of one capsule-attack step), one more at the
end.

Step size (`schedule`):
- 'fixed' (preset `pgd_l2`): `step_scale * eps / steps`, with step_scale =
  2.5 as in Madry et al.'s L2 attacks: the whole budget is crossed in 40 %
  of the steps, and the rest refine on the sphere.
- 'apgd' (preset `pgd_l2_min`): the schedule of APGD (Croce & Hein, 2020,
  "Reliable evaluation of adversarial robustness...", Algorithm 1), on the
  margin instead of their losses. The first step is 2 eps long; later steps
  mix the projected gradient step with the last move (momentum 0.75). At
  checkpoints `apgd_checkpoints(steps)` (after 22 % of the steps, then at
  shrinking intervals no shorter than 6 %), a sample halves its step and
  goes back to the lowest-margin point it has visited if, since the last
  checkpoint, its margin fell on fewer than 75 % of the steps, or if its
  step was not halved at the last checkpoint and its lowest margin has not
  improved since. Why for the search: the fixed step, 0.25 at its ceiling of
  10, stalled on the piecewise k-means margin of the shipped teacher, where
  PGD failed at 10 on samples other attacks broke within it (RESULTS.md,
  4.3); long first steps and halving only on stalls cross such
  plateaus at the same cost, one pass with the input gradient per step.

Minimal norm (`search_steps` > 0, preset `pgd_l2_min`): a binary search on
eps per sample. PGD first runs at eps = `eps` (the search's ceiling);
samples it cannot break there are failures (L2 = inf). Otherwise
hi = the L2 of the success found, lo = 0, and each of `search_steps`
rounds runs PGD at (lo + hi) / 2: a success sets hi to its L2 (at most that
eps), a failure sets lo to the eps. The result is the smallest successful
L2 seen; after n rounds it is within eps / 2^n of the smallest budget at
which this PGD succeeds (not necessarily the true minimum: PGD may miss).

Budgets: the paper reads robust accuracy at L2 = 4 (MNIST) and 5
(Fashion-MNIST), `attacks.protocol.PAPER_THRESHOLDS`; the `pgd_l2` preset
is MNIST's (override eps=5. for Fashion-MNIST). Pixels are in [0, 1].
"""

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from attacks import settings
from attacks.evasion import ON_FAILURE, validate_inputs
from attacks.margins import margin_target
from scae_tf import interrupts


SCHEDULES = ('fixed', 'apgd')
#: APGD's constants (Croce & Hein 2020, section 3.1): momentum, the share of
#: steps that must lower the margin between checkpoints, and the first step
#: as a multiple of eps.
APGD_MOMENTUM = .75
APGD_RHO = .75
APGD_FIRST_STEP = 2.


def apgd_checkpoints(steps: int):
  """The steps after which APGD may halve its step: p_0 = 0, p_1 = .22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - .03, .06), in whole steps (each
  interval at least one step) while below `steps`. 100 steps: 22, 41, 57,
  70, 80, 87, 93, 99."""
  first = max(int(.22 * steps), 1)
  shrink, least = max(int(.03 * steps), 1), max(int(.06 * steps), 1)
  points, interval = [], first
  at = first
  while at < steps:
    points.append(at)
    interval = max(interval - shrink, least)
    at += interval
  return points


@dataclasses.dataclass(frozen=True)
class PGDConfig:
  """Settings of PGD-L2.

  eps: the L2 budget; with search_steps > 0 the ceiling of the search.
  steps: PGD steps per restart.
  restarts: random starts per budget.
  step_scale: step = step_scale * eps / steps.
  search_steps: 0 = fixed budget; else rounds of the binary search on eps.
  zero_start: the first restart starts at the clean image, not at random.
  schedule: 'fixed' (step_scale * eps / steps) or 'apgd' (module doc;
    step_scale unused).
  on_failure: 'nan' or 'clean': `adversarial` where no success was found.
  seed: seeds the random starts of an attack object (override per call).
  jit_compile: XLA-compile the restart loop (in `__call__`, and nested in
    the caller's graph in `in_graph`).
  """
  eps: float
  steps: int
  restarts: int
  step_scale: float = 2.5
  search_steps: int = 0
  zero_start: bool = True
  schedule: str = 'fixed'
  on_failure: str = 'nan'
  seed: int = 0
  jit_compile: bool = False

  def __post_init__(self):
    for name in ('eps', 'step_scale'):
      settings.check_positive_number(name, getattr(self, name))
    for name, least in (('steps', 1), ('restarts', 1), ('search_steps', 0)):
      settings.check_integer(name, getattr(self, name), least)
    settings.check_choices(self, dict(schedule=SCHEDULES,
                                      on_failure=ON_FAILURE))


PRESETS = {
    # MNIST's threshold; Madry et al.'s step rule.
    'pgd_l2': PGDConfig(eps=4., steps=100, restarts=5),
    # Ceiling 10 (well above both thresholds); 10 rounds: within 0.01. APGD's
    # schedule: the fixed step stalled at this ceiling (module doc).
    'pgd_l2_min': PGDConfig(eps=10., steps=100, restarts=1, search_steps=10,
                            schedule='apgd'),
}


def get_config(preset='pgd_l2', **overrides) -> PGDConfig:
  """The named preset (or a PGDConfig) with `overrides` applied."""
  return settings.preset_config(PRESETS, preset, PGDConfig, 'PGD', overrides)


@dataclasses.dataclass(frozen=True)
class PGDResult:
  """What `PGDAttack.__call__` returns (numpy arrays).

  adversarial: [B, H, W, C] float32, the kept image; NaN (on_failure='nan')
    or the clean image ('clean') where no success was found.
  success: [B] bool, the classifier misclassifies `adversarial`.
  l2: [B] float32 ||adversarial - x||_2, inf where it failed, 0 for clean
    errors.
  clean_pred: [B] int64 the target's prediction on the clean images.
  margin: [B] float32 the margin at the kept point (negative = misclassified),
    at the most negative point found where the attack failed.
  """
  adversarial: np.ndarray
  success: np.ndarray
  l2: np.ndarray
  clean_pred: np.ndarray
  margin: np.ndarray


def per_sample(v):
  """[B] -> [B, 1, 1, 1], to scale images."""
  return v[:, tf.newaxis, tf.newaxis, tf.newaxis]


def l2_norms(d):
  """[B] L2 norm of each [H, W, C] slice of d."""
  return tf.sqrt(tf.reduce_sum(tf.square(d), [1, 2, 3]))


def project(x_adv, x, eps):
  """x_adv moved onto the eps-ball around x ([B] radii), then into
  [0, 1]."""
  delta = x_adv - x
  norm = l2_norms(delta)
  scale = tf.minimum(1., eps / tf.maximum(norm, 1e-12))
  return tf.clip_by_value(x + per_sample(scale) * delta, 0., 1.)


def random_start(rng: tf.random.Generator, x, eps):
  """x + a point uniform in the eps-ball (radius eps * U^(1/D) in D
  dimensions along a uniform direction), clipped to [0, 1]."""
  direction = rng.normal(tf.shape(x))
  direction /= per_sample(tf.maximum(l2_norms(direction), 1e-12))
  dims = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
  radius = eps * rng.uniform(tf.shape(eps)) ** (1. / dims)
  return tf.clip_by_value(x + per_sample(radius) * direction, 0., 1.)


class PGDAttack:
  """Batched PGD-L2 on a margin target, compiled inner loop.

  attack = PGDAttack(classifier, preset='pgd_l2', **overrides)
  result = attack(images, labels, seed=None, callback=None)

  `classifier`: a `ModelClassifier` (its margin comes from
  `attacks.margins`) or a margin target. `overrides` are `PGDConfig`
  fields. `callback(i, n)` is called after each of the n PGD runs (restarts,
  times search rounds + 1).
  """

  def __init__(self, classifier, preset='pgd_l2', **overrides):
    self.config = get_config(preset, **overrides)
    self.target = margin_target(classifier)
    self.name = self.target.name
    self._rng = tf.random.Generator.from_seed(self.config.seed)
    h, w, c = self.target.image_shape
    img = tf.TensorSpec([None, h, w, c], tf.float32)
    vec = tf.TensorSpec([None], tf.float32)
    labels = tf.TensorSpec([None], tf.int64)
    flags = tf.TensorSpec([None], tf.bool)
    self._score = tf.function(self.target, input_signature=[img, labels])
    self._restart = tf.function(
        self._restart_impl, jit_compile=self.config.jit_compile,
        input_signature=[img, labels, vec, img, vec, flags, img, vec])
    # Inside a caller's graph (`in_graph`): XLA around the restart only.
    self._restart_in_graph = (
        tf.function(self._restart_impl, jit_compile=True)
        if self.config.jit_compile else self._restart_impl)

  def _restart_impl(self, x, labels, eps, start, best_margin, best_success,
                    best_img, best_l2):
    """PGD from `start` at budgets eps [B]; folds every point visited into
    the best (margin, success, image, l2) so far and returns them."""
    cfg = self.config
    apgd = cfg.schedule == 'apgd'
    step = eps * (APGD_FIRST_STEP if apgd else cfg.step_scale / cfg.steps)
    # window[k]: the steps since the last checkpoint if k is one, else 0.
    window, last = np.zeros(cfg.steps, np.float32), 0
    for k in apgd_checkpoints(cfg.steps) if apgd else ():
      window[k], last = k - last, k
    window = tf.constant(window)

    def record(x_adv, margin, pred, best):
      b_margin, b_success, b_img, b_l2 = best
      success = tf.not_equal(pred, labels)
      better = (success & ~b_success) | (
          tf.equal(success, b_success) & (margin < b_margin))
      return (tf.where(better, margin, b_margin),
              b_success | success,
              tf.where(per_sample(better), x_adv, b_img),
              tf.where(better, l2_norms(x_adv - x), b_l2))

    best = (best_margin, best_success, best_img, best_l2)
    x_adv = x_prev = start
    # APGD's state: the lowest-margin point visited and its gradient (a
    # halving steps from there), the margin falls since the last checkpoint,
    # and what that checkpoint saw.
    inf = tf.fill(tf.shape(eps), np.inf)
    low_margin, low_img, low_grad = inf, start, tf.zeros_like(start)
    prev_margin, last_low = inf, inf
    falls = tf.zeros_like(eps)
    halved_last = tf.zeros_like(eps, tf.bool)
    k = tf.constant(0)
    # A signal ends the loop early (scae_tf.interrupts).
    while interrupts.keep_going(k < cfg.steps, after=best[0]):
      with tf.GradientTape() as tape:
        tape.watch(x_adv)
        margin, pred = self.target(x_adv, labels)
      grad = tape.gradient(margin, x_adv)
      best = record(x_adv, margin, pred, best)
      if apgd:
        falls += tf.cast((margin < prev_margin) & (k > 0), tf.float32)
        prev_margin = margin
        last_low = tf.where(tf.equal(k, 0), margin, last_low)
        lower = margin < low_margin
        low_margin = tf.where(lower, margin, low_margin)
        low_img = tf.where(per_sample(lower), x_adv, low_img)
        low_grad = tf.where(per_sample(lower), grad, low_grad)
        check = window[k] > 0
        halve = check & ((falls < APGD_RHO * window[k]) | (
            ~halved_last & (low_margin >= last_low)))
        step = tf.where(halve, step / 2., step)
        x_adv = tf.where(per_sample(halve), low_img, x_adv)
        grad = tf.where(per_sample(halve), low_grad, grad)
        halved_last = tf.where(check, halve, halved_last)
        last_low = tf.where(check, low_margin, last_low)
        falls = tf.where(check, tf.zeros_like(falls), falls)
      unit = grad / per_sample(tf.maximum(l2_norms(grad), 1e-12))
      x_next = project(x_adv - per_sample(step) * unit, x, eps)
      if apgd:
        # The first step is the projected gradient step alone.
        a = tf.where(k > 0, APGD_MOMENTUM, 1.)
        x_next = project(x_adv + a * (x_next - x_adv) +
                         (1. - a) * (x_adv - x_prev), x, eps)
      x_prev, x_adv = x_adv, x_next
      k += 1
    margin, pred = self.target(x_adv, labels)
    return record(x_adv, margin, pred, best)

  def in_graph(self, images, labels, rng: tf.random.Generator):
    """PGD at the fixed budget `eps` as traceable TF ops, for use inside a
    compiled training step (a margin-trained defence's adversarial
    batches).

    images [B, H, W, C] float32 in [0, 1] and labels [B] int64 are tensors
    (not validated); the random starts come from `rng`, which the caller
    keeps in its checkpoint. Given a generator in the same state, success
    and l2 equal `__call__(images, labels, seed=...)`'s, and so does the
    image wherever the attack succeeded.
    Returns (kept [B, H, W, C], success [B] bool, l2 [B], inf where it
    failed). `kept` is the most adverse point found in the ball for every
    example, whether or not it is misclassified (Madry et al.'s adversarial
    training trains on it either way), whatever `on_failure` says.
    """
    if self.config.search_steps:
      raise ValueError('in_graph runs PGD at a fixed budget; the minimal-norm '
                       f'search (search_steps={self.config.search_steps}) '
                       'is for evaluation.')
    x = tf.convert_to_tensor(images, tf.float32)
    y = tf.cast(labels, tf.int64)
    clean_margin, clean_pred = self.target(x, y)
    best = (clean_margin, tf.not_equal(clean_pred, y), x,
            tf.zeros_like(clean_margin))
    eps = tf.fill(tf.shape(clean_margin), float(self.config.eps))
    _, success, kept, l2 = self._budget(x, y, eps, best, rng, lambda: None,
                                        self._restart_in_graph)
    # A training step whose attack a signal cut short stops there.
    return interrupts.guard(kept, success, tf.where(success, l2, np.inf))

  def _budget(self, x, labels, eps, best, rng, tick, restart=None):
    """All restarts at budgets eps [B]; returns the updated best. `restart`:
    the compiled restart (default) or, inside a caller's graph, its
    traceable body."""
    restart = restart or self._restart
    for i in range(self.config.restarts):
      start = x if i == 0 and self.config.zero_start else random_start(
          rng, x, eps)
      best = restart(x, labels, eps, start, *best)
      tick()
    return best

  def __call__(self, images, labels, seed: Optional[int] = None,
               callback: Optional[Callable[[int, int], None]] = None
               ) -> PGDResult:
    cfg = self.config
    images, labels = validate_inputs(images, labels, self.target.image_shape,
                                     self.target.num_classes)
    rng = self._rng if seed is None else tf.random.Generator.from_seed(seed)
    x, y = tf.constant(images), tf.constant(labels)
    runs = cfg.restarts * (1 + cfg.search_steps)
    done = [0]

    def tick():
      interrupts.check()  # after a restart a signal may have cut short
      if callback is not None:
        callback(done[0], runs)
      done[0] += 1

    clean_margin, clean_pred = self._score(x, y)
    best = (clean_margin, tf.not_equal(clean_pred, y), x,
            tf.zeros_like(clean_margin))
    ceiling = tf.fill(tf.shape(clean_margin), float(cfg.eps))
    best = self._budget(x, y, ceiling, best, rng, tick)
    if cfg.search_steps:
      best = self._search(x, y, tf.not_equal(clean_pred, y), best, rng, tick)
    margin, success, img, l2 = (t.numpy() for t in best)
    fill = np.nan if cfg.on_failure == 'nan' else images
    return PGDResult(
        adversarial=np.where(success[:, None, None, None], img,
                             fill).astype(np.float32),
        success=success,
        l2=np.where(success, l2, np.inf).astype(np.float32),
        clean_pred=clean_pred.numpy().astype(np.int64),
        margin=margin.astype(np.float32))

  def _search(self, x, y, clean_wrong, best, rng, tick):
    """Binary search on eps per sample (module doc), from the best of the
    run at the ceiling. Keeps the smallest-L2 success."""
    margin, success, img, l2 = best
    hi = tf.where(clean_wrong, 0., tf.where(success, l2, np.inf))
    img = tf.where(per_sample(clean_wrong), x, img)
    lo = tf.zeros_like(hi)
    for _ in range(self.config.search_steps):
      # Samples already decided (failed at the ceiling) run at eps 0.
      eps = tf.where(tf.math.is_finite(hi), (lo + hi) / 2., 0.)
      fresh = (margin, tf.zeros_like(success), x, tf.zeros_like(l2))
      r_margin, r_success, r_img, r_l2 = self._budget(x, y, eps, fresh, rng,
                                                      tick)
      smaller = r_success & (r_l2 < hi)
      lo = tf.where(r_success, lo, eps)
      hi = tf.where(smaller, r_l2, hi)
      margin = tf.where(smaller, r_margin, margin)
      img = tf.where(per_sample(smaller), r_img, img)
    return margin, tf.math.is_finite(hi), img, hi
