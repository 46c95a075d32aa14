"""Checks 4 and 5 of `attacks.sanity` (noise control, minimal-norm strength)
on hand-made reports, and the noise control itself (`attacks.noise`) on a
classifier whose answer under noise is known."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import noise, sanity

INF = np.inf


def test_an_attack_weaker_than_noise_is_flagged():
  correct = np.ones(4, bool)
  amounts = dict(capsule=np.array([5., 6., 1., 7.]),  # 3 of 4 survive L2 4
                 pgd_l2=np.array([1., 1., 1., 5.]))   # 1 of 4
  # Noise: samples 0 and 1 survive both draws, 2 fails one, 3 both.
  noise_correct = np.array([[1, 1], [1, 1], [1, 0], [0, 0]], bool)
  report = sanity.check(amounts, correct, noise_correct=noise_correct,
                        threshold=4.)
  assert report['noise'] == dict(threshold=4., accuracy=.5, draws=2,
                                 weaker_than_noise=['capsule'])
  assert ('capsule leaves 75.00% accuracy at L2 <= 4, more than random noise '
          'of that norm (50.00%): weaker than noise on these samples.'
          ) in report['flags']
  assert not any(f.startswith('pgd_l2 leaves') for f in report['flags'])
  skipped = sanity.check(amounts, correct)
  assert skipped['noise'] is None


def test_a_minimal_norm_attack_beaten_by_another_is_flagged():
  correct = np.array([True, True, True, False])
  amounts = dict(capsule=np.array([2., 2., 2., 0.]),
                 pgd_l2=np.array([1., 3., 3., 0.]),   # median 3
                 ddn=np.array([.5, 1., .5, 0.]),      # median .5, the best
                 margin_cw=np.array([1., 1., INF, 0.]))  # median 1
  report = sanity.check(amounts, correct)
  assert report['medians']['values'] == dict(capsule=2., pgd_l2=3., ddn=.5,
                                             margin_cw=1.)
  # The paper's attack is no minimal-norm attack: never flagged by check 5.
  assert report['medians']['beaten'] == dict(pgd_l2='ddn', margin_cw='ddn')
  assert ("pgd_l2: median L2 3.000 is above ddn's 0.500 on the same samples"
          in ' '.join(report['flags']))


class MeanThreshold:
  """Predicts 1 where the image's mean exceeds 0.5, else 0."""

  def __call__(self, images):
    mean = tf.reduce_mean(images, [1, 2, 3])
    return mean[:, None], tf.cast(mean > .5, tf.int64)


def test_noisy_images_have_the_norm_at_most_and_are_reproducible():
  images = np.full((3, 20, 20, 1), .5, np.float32)
  images[2] = 1.
  # Mid-grey at L2 1: a pixel's noise has std 0.05, ten of them below the
  # clip: the norm is the threshold's. The white image loses the half of
  # its noise that points up.
  x = noise.noisy_images(images, 1., np.random.default_rng(1))
  norms = np.sqrt(((x - images) ** 2).sum((1, 2, 3)))
  np.testing.assert_allclose(norms[:2], 1., rtol=1e-5)
  assert .5 < norms[2] < .85
  assert x.min() >= 0. and x.max() <= 1.
  np.testing.assert_array_equal(
      x, noise.noisy_images(images, 1., np.random.default_rng(1)))
  assert not np.array_equal(x[0], x[1])  # each image its own draw


def test_noise_control_by_hand():
  # Far from the boundary (mean .9): noise of L2 1 over 400 pixels moves the
  # mean by ~0.0025 at most one way: never flipped. On the boundary (mean
  # just above .5): flipped about half the time. A clean error is never
  # counted correct.
  images = np.concatenate([np.full((4, 20, 20, 1), .9, np.float32),
                           np.full((40, 20, 20, 1), .5 + 1e-6, np.float32),
                           np.full((1, 20, 20, 1), .1, np.float32)])
  labels = np.array([1] * 44 + [1])
  correct = noise.noise_control(MeanThreshold(), images, labels, 1., draws=3,
                                seed=0, batch_size=7)
  assert correct.shape == (45, 3)
  assert correct[:4].all()
  assert not correct[44].any()
  assert .25 < correct[4:44].mean() < .75
  np.testing.assert_array_equal(correct, noise.noise_control(
      MeanThreshold(), images, labels, 1., draws=3, seed=0))
  assert noise.accuracy(correct) == correct.all(1).mean()
  with pytest.raises(ValueError, match='draws must be'):
    noise.noise_control(MeanThreshold(), images, labels, 1., draws=0)
