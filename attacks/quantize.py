"""The 8-bit threat model: adversarial images as a user saves them.

An attack's images are float32. Saved as 8-bit images (PNG), every pixel
is rounded to the grid k / 255, and a minimal perturbation, much of it on
background pixels below half a grey level, may not survive the rounding.
`--quantize=8bit` (run/attack.py) rounds every successful image to the grid,
runs the classifier again on it and counts it only if it is still
misclassified, with its L2 recomputed from the rounded image:

    attack = QuantizedAttack(PGDAttack(target, 'pgd_l2_min'), target)
    result = attack(images, labels)  # the inner attack's result, rounded
    result.success_unquantized       # [B] bool: before the rounding

Clean errors keep their clean image and L2 0: nothing was perturbed. The
clean images themselves are not rounded (the `resize` preprocessing puts
them off the grid); the L2 is measured from them, as for every attack.
"""

import dataclasses

import numpy as np

#: --quantize values: no rounding, or to 256 grey levels.
QUANTIZE = ('none', '8bit')
LEVELS = {'8bit': 256}


def quantize(images, levels: int):
  """images in [0, 1] rounded to the grid k / (levels - 1); float32."""
  top = float(levels - 1)
  return (np.round(np.asarray(images, np.float64) * top) / top).astype(
      np.float32)


@dataclasses.dataclass(frozen=True)
class QuantizedResult:
  """An attack's result after the rounding: the fields of every attack's
  result, and `success_unquantized` [B] bool, the inner attack's success."""
  adversarial: np.ndarray
  success: np.ndarray
  l2: np.ndarray
  clean_pred: np.ndarray
  success_unquantized: np.ndarray


class QuantizedAttack:
  """`attack` (any of attacks/: called with (images, labels, seed,
  callback)), its successful images rounded to `levels` grey levels and
  re-verified by `classifier` (images -> (features, predictions))."""

  def __init__(self, attack, classifier, levels: int = LEVELS['8bit']):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.attack = attack
    self.levels = int(levels)
    self.config = attack.config
    self._predict = tf.function(lambda x: classifier(x)[1])

  def __call__(self, images, labels, seed=None, callback=None
               ) -> QuantizedResult:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    result = self.attack(images, labels, seed=seed, callback=callback)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    success, l2 = result.success.copy(), result.l2.copy()
    adversarial = result.adversarial.copy()
    # Clean errors (L2 0) were not perturbed: nothing to save differently.
    moved = np.flatnonzero(success & (l2 > 0))
    if moved.size:
      rounded = quantize(adversarial[moved], self.levels)
      pred = self._predict(tf.constant(rounded)).numpy()
      kept = pred != labels[moved]
      success[moved] = kept
      adversarial[moved] = np.where(kept[:, None, None, None], rounded,
                                    np.nan)
      l2[moved] = np.where(kept, np.sqrt(np.sum(np.square(
          rounded - images[moved]).reshape(moved.size, -1), 1,
                                               dtype=np.float32)), np.inf)
    return QuantizedResult(adversarial=adversarial, success=success,
                           l2=l2.astype(np.float32),
                           clean_pred=result.clean_pred,
                           success_unquantized=result.success)
