"""DDN, Decoupled Direction and Norm (Rony et al. 2019, "Decoupling
Direction and Norm for Efficient Gradient-Based L2 Adversarial Attacks and
Defenses", CVPR; Algorithm 1), written for TensorFlow and compiled as PGD
is in `attacks.pgd`: the whole attack is ONE call of a `tf.function` whose
steps are a `tf.range` loop, one forward pass with the input gradient per
step and one more to score the last point.

    from attacks import classifiers, ddn
    target = classifiers.make_classifier(model, 'PosL', gradient='full')
    attack = ddn.DDNAttack(target)           # preset 'ddn'
    result = attack(images, labels)          # as PGDAttack: [B, H, W, C], [B]
    result.adversarial, result.success, result.l2, result.clean_pred

Same attack as `attacks.foolbox_attacks.FoolboxAttack(target, 'ddn')`,
without its cost (there, Foolbox runs a Python loop and calls the model
under an eager tape: forward and backward as two graph calls, 1.66x a PGD
step; `benchmarks/foolbox_iteration.py` times both).

The loss is the cross-entropy of `foolbox_attacks.ClassifierLogits` (probe
logits; for k-means targets the per-class best cluster score times
`temperature`) on the true label. Untargeted, the attack ascends it. Per
sample, delta_0 = 0, epsilon_0 = init_epsilon; step k = 0 .. steps-1 at
x' = x + delta:
    g = grad_x' CE(x', y) / ||grad_x' CE(x', y)||_2
    if x' is adversarial: keep x' if its L2 is the smallest so far,
                          epsilon <- (1 - gamma) epsilon
    else:                 epsilon <- (1 + gamma) epsilon
    delta <- delta + alpha_k g
    delta <- epsilon delta / ||delta||_2         (onto the epsilon-sphere)
    delta <- clip(x + delta, 0, 1) - x           (into the box)
    (levels: x + delta rounded to the grid of `levels` values in [0, 1])
with alpha_k = min_step + (init_step - min_step) (1 + cos(pi k / steps)) / 2,
the cosine annealing of the paper (alpha_0 = init_step). The point reached
after the last step is scored too. "Adversarial" inside the loop is the
argmax of the logits, which is the classifier's prediction by construction
of `ClassifierLogits` (up to exact ties between clusters of different
classes); the prediction decides in the end (re-verification, below).

Zero gradient. Where the input gradient of the cross-entropy is exactly
zero (every component 0, e.g. a sigmoid saturated to exactly 0 / 1 in
float32, or a gradient that stops: an unconnected gradient counts as zero)
or not finite, the paper's g / ||g|| is undefined. The step is then taken
along a random unit direction, drawn from the attack's own
`tf.random.Generator` (seeded by `seed`; TF's global seed is never read or
set). Why not stand still: delta starts at 0, so a sample whose gradient
vanishes at x would never leave x (epsilon rescales a zero delta) and would
fail without having searched at all; a random step keeps DDN's norm control
(epsilon grows until a random point is adversarial, then shrinks), a random
search until the point reaches a region with a gradient. Foolbox's DDN also
steps randomly there. A gradient that is tiny but not zero keeps its
direction: it is normalised as (g / max|g|) / ||g / max|g|||
(`unit_directions`), since ||g|| itself underflows to 0 in float32 once
the components are below ~1e-19 (a nearly saturated sigmoid gives 1e-17 to
1e-25 on the toy of the tests), and a floor on ||g|| (as in `attacks.pgd`)
would shorten the step instead. The normal draw is made every step for the
whole batch (cheap next to a forward pass), so a sample's directions do not
depend on which other samples of the batch had a zero gradient.

Seeds: `reset_from_seed(seed)` (the config's when None) before each call:
a call is a deterministic function of (images, labels, seed), as
FoolboxAttack's calls are. Given the seed, the random directions depend
on the batch (its size and the sample's position).

Success and L2 are re-verified as FoolboxAttack does, by their common base
(`foolbox_attacks.VerifiedAttack.verify`): a fresh forward pass of the
classifier, `classifier(images)[1]`, on the kept images; a sample succeeds only if its
image is finite, in [0, 1] and misclassified; L2 recomputed in float32
numpy. Clean errors are successes at L2 0 with the clean image and are not
attacked. `callback(i, n)` is called once, (0, 1), after the compiled run
(as PGDAttack calls it after each compiled run).
"""

import dataclasses
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from attacks import settings
from attacks.evasion import ON_FAILURE
from attacks.foolbox_attacks import MinimalNormResult, VerifiedAttack
from attacks.pgd import l2_norms, per_sample
from scae_tf import interrupts


@dataclasses.dataclass(frozen=True)
class DDNConfig:
  """Settings of DDN (defaults: Rony et al.'s, as Foolbox's).

  steps: iterations (one forward pass with the input gradient each).
  init_epsilon: the first norm epsilon_0.
  gamma: epsilon's factor 1 -/+ gamma per step (below 1).
  init_step, min_step: the step alpha, cosine-annealed from init_step
    (alpha_0) to min_step over the steps.
  levels: None, or the number of grey levels (>= 2): each point is rounded
    to the grid {0, 1/(levels-1), ..., 1} (the paper's quantised attack;
    meant for images on that grid).
  temperature: scales the k-means logits (`ClassifierLogits`).
  on_failure: 'nan' or 'clean': `adversarial` where no success was found.
  seed: seeds the random directions taken where the gradient is zero
    (override per call; module doc).
  jit_compile: XLA-compile the attack loop.
  """
  steps: int = 100
  init_epsilon: float = 1.
  gamma: float = .05
  init_step: float = 1.
  min_step: float = .01
  levels: Optional[int] = None
  temperature: float = 10.
  on_failure: str = 'nan'
  seed: int = 0
  jit_compile: bool = False

  def __post_init__(self):
    settings.check_integer('steps', self.steps, 1)
    for name in ('init_epsilon', 'gamma', 'init_step', 'min_step',
                 'temperature'):
      settings.check_positive_number(name, getattr(self, name))
    if self.gamma >= 1:
      raise ValueError(f'gamma must be below 1, got {self.gamma!r}.')
    if self.min_step > self.init_step:
      raise ValueError(f'min_step ({self.min_step!r}) must not exceed '
                       f'init_step ({self.init_step!r}).')
    if self.levels is not None:
      settings.check_integer('levels', self.levels, 2)
    if self.on_failure not in ON_FAILURE:
      raise ValueError(f'on_failure={self.on_failure!r} is not one of '
                       f'{ON_FAILURE}.')
    settings.check_integer('seed', self.seed, 0)
    if not isinstance(self.jit_compile, bool):
      raise ValueError(f'jit_compile must be a bool, got '
                       f'{self.jit_compile!r}.')


PRESETS = {
    # Rony et al.'s settings: 100 steps, epsilon_0 = 1, gamma = .05, the step
    # annealed from 1 to .01.
    'ddn': DDNConfig(),
}


def get_config(preset='ddn', **overrides) -> DDNConfig:
  """The named preset (or a DDNConfig) with `overrides` applied."""
  return settings.preset_config(PRESETS, preset, DDNConfig, 'DDN', overrides)


def step_sizes(config: DDNConfig) -> np.ndarray:
  """[steps] float32 alpha_k = min + (init - min) (1 + cos(pi k / steps)) / 2
  for k = 0 .. steps - 1: alpha_0 = init_step, decreasing towards
  min_step."""
  k = np.arange(config.steps, dtype=np.float64)
  cosine = (1. + np.cos(math.pi * k / config.steps)) / 2.
  return (config.min_step + (config.init_step - config.min_step) * cosine
          ).astype(np.float32)


def unit_directions(grad, noise):
  """[B, H, W, C] grad / ||grad||_2 per sample, and noise / ||noise||_2
  where grad is exactly zero or not finite (module doc). Computed as
  s = grad / max|grad|, then s / ||s||: ||s|| is in [1, sqrt(H W C)], so
  a tiny gradient (its squares below float32's smallest normal, e.g.
  through a nearly saturated sigmoid) or a huge one keeps its direction
  instead of coming out shorter than one or zero."""
  peak = tf.reduce_max(tf.abs(grad), [1, 2, 3])
  scaled = grad / per_sample(tf.where(peak > 0., peak, 1.))
  norm = l2_norms(scaled)
  # norm >= 1 for a finite non-zero gradient; 0 for zero, NaN otherwise.
  flat = ~(norm >= .5)
  noise_unit = noise / per_sample(tf.maximum(l2_norms(noise), 1e-12))
  return tf.where(per_sample(flat), noise_unit,
                  scaled / per_sample(tf.where(flat, 1., norm)))


DDNResult = MinimalNormResult


class DDNAttack(VerifiedAttack):
  """DDN on a `ModelClassifier`, compiled loop (module doc).

  attack = DDNAttack(classifier, preset='ddn', **overrides)
  result = attack(images, labels, seed=None, callback=None)

  `overrides` are `DDNConfig` fields.
  """

  def __init__(self, classifier, preset='ddn', **overrides):
    super().__init__(classifier, get_config(preset, **overrides))
    self._rng = tf.random.Generator.from_seed(self.config.seed)
    self._alphas = tf.constant(step_sizes(self.config))
    h, w, c = self.image_shape
    self._run = tf.function(
        self._run_impl, jit_compile=self.config.jit_compile,
        input_signature=[tf.TensorSpec([None, h, w, c], tf.float32),
                         tf.TensorSpec([None], tf.int64)])

  def _run_impl(self, x, labels):
    """DDN on images x [B, H, W, C] with labels [B]: (best image, best L2
    [B], inf where no adversarial point was visited)."""
    cfg = self.config
    levels = cfg.levels

    def record(x_adv, logits, best):
      """Folds x_adv into the best; returns (adversarial [B], best)."""
      b_img, b_l2 = best
      adv = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int64), labels)
      l2 = l2_norms(x_adv - x)
      better = adv & (l2 < b_l2)
      return adv, (tf.where(per_sample(better), x_adv, b_img),
                   tf.where(better, l2, b_l2))

    batch = tf.shape(x)[0]
    best = (x, tf.fill([batch], np.float32(np.inf)))
    epsilon = tf.fill([batch], np.float32(cfg.init_epsilon))
    delta = tf.zeros_like(x)
    x_adv = x
    k = tf.constant(0)
    # A signal ends the loop early (scae_tf.interrupts).
    while interrupts.keep_going(k < cfg.steps, after=best[1]):
      with tf.GradientTape() as tape:
        tape.watch(x_adv)
        logits = self.logits.logits(x_adv)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, logits))
      grad = tape.gradient(
          loss, x_adv,
          unconnected_gradients=tf.UnconnectedGradients.ZERO)
      adv, best = record(x_adv, logits, best)
      unit = unit_directions(grad, self._rng.normal(tf.shape(x)))
      epsilon *= tf.where(adv, 1. - cfg.gamma, 1. + cfg.gamma)
      delta += self._alphas[k] * unit
      delta *= per_sample(epsilon / tf.maximum(l2_norms(delta), 1e-12))
      x_adv = tf.clip_by_value(x + delta, 0., 1.)
      if levels is not None:
        x_adv = tf.round(x_adv * (levels - 1.)) / (levels - 1.)
      delta = x_adv - x
      k += 1
    _, best = record(x_adv, self.logits.logits(x_adv), best)
    return best

  def _search(self, images, labels, seed, callback):
    self._rng.reset_from_seed(seed)
    kept, kept_l2 = (t.numpy() for t in self._run(tf.constant(images),
                                                  tf.constant(labels)))
    interrupts.check()  # a signal may have cut the run short
    if callback is not None:
      callback(0, 1)
    return np.where(np.isfinite(kept_l2)[:, None, None, None], kept, np.nan)
