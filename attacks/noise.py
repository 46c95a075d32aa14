"""The random-noise control of a robustness report.

Gaussian noise, scaled per image to L2 = the report's threshold and clipped
to [0, 1], is the weakest "attack" of that budget: it looks nowhere. An
attack that leaves more accuracy at the threshold than noise does is weaker
than noise on those samples, and a report that takes it as the measure of
robustness overstates it (`attacks.sanity`, check 4).

    correct = noise.noise_control(classifier, images, labels, threshold=4.,
                                  draws=2, seed=0)   # [N, draws] bool
    noise.accuracy(correct)  # share correct under every draw

Clipping only shrinks each pixel's change, so the clipped image lies within
L2 = threshold of the clean one (at most the threshold, never above). A
sample counts as robust to noise when the classifier is right on the clean
image and on every draw.
"""

import numpy as np

#: Draws per sample: the issue's minimum, enough to make the control a
#: little stronger than one draw at no real cost (a forward pass each).
DEFAULT_DRAWS = 2


def noisy_images(images, threshold: float, rng: np.random.Generator):
  """images [N, H, W, C] + Gaussian noise of L2 norm `threshold` per image,
  clipped to [0, 1]; float32."""
  images = np.asarray(images, np.float32)
  noise = rng.standard_normal(images.shape)
  norms = np.sqrt((noise ** 2).reshape(len(images), -1).sum(1))
  noise *= threshold / np.maximum(norms, 1e-12)[:, None, None, None]
  return np.clip(images + noise, 0., 1.).astype(np.float32)


def noise_control(classifier, images, labels, threshold: float,
                  draws: int = DEFAULT_DRAWS, seed: int = 0,
                  batch_size: int = 100) -> np.ndarray:
  """[N, draws] bool: `classifier` (images -> (features, predictions), as
  `attacks.classifiers`) is right on draw d of sample i, and on the clean
  sample. The draws are a function of `seed` alone."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if draws < 1:
    raise ValueError(f'draws must be >= 1, got {draws}.')
  if not threshold > 0:
    raise ValueError(f'threshold must be positive, got {threshold}.')
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int64)
  rng = np.random.default_rng([seed, 2])
  predict = tf.function(lambda x: classifier(x)[1])

  def right(x):
    return np.concatenate([
        predict(tf.constant(x[i:i + batch_size])).numpy()
        for i in range(0, len(x), batch_size)]) == labels

  clean = right(images)
  return np.stack([clean & right(noisy_images(images, threshold, rng))
                   for _ in range(draws)], 1)


def accuracy(correct) -> float:
  """Share of samples right under every draw of `noise_control`."""
  correct = np.asarray(correct, bool)
  return float(correct.all(1).mean()) if correct.size else float('nan')
