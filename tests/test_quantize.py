"""The 8-bit threat model (`attacks.quantize`): rounding to k / 255 and the
re-verification of every successful image, on a classifier whose answer is
known by hand."""

import types

import numpy as np
import pytest
import tensorflow as tf

from attacks import quantize


def test_quantize_rounds_to_the_grid():
  x = np.array([0., .49 / 255, .51 / 255, 1. / 255, .2, 1.], np.float32)
  q = quantize.quantize(x, 256)
  np.testing.assert_allclose(q * 255., [0, 0, 1, 1, 51, 255], atol=1e-4)
  assert q.dtype == np.float32


class MeanAbove:
  """Predicts 1 where the image's mean exceeds `level`, else 0."""

  def __init__(self, level):
    self.level = level

  def __call__(self, images):
    mean = tf.reduce_mean(images, [1, 2, 3])
    return mean[:, None], tf.cast(mean > self.level, tf.int64)


class Fixed:
  """An 'attack' returning the images it was built with."""

  def __init__(self, adversarial, success, l2, clean_pred):
    self.config = types.SimpleNamespace()
    self.result = types.SimpleNamespace(adversarial=adversarial,
                                        success=success, l2=l2,
                                        clean_pred=clean_pred)

  def __call__(self, images, labels, seed=None, callback=None):
    return self.result


def test_surviving_successes_are_rounded_and_measured_again():
  # Label 0 everywhere; the classifier says 1 above a mean of 0.5.
  clean = np.full((4, 2, 2, 1), 100. / 255, np.float32)
  clean[2] = 200. / 255                      # a clean error
  adv = clean.copy()
  adv[0] += .3 / 255 + 128. / 255 - 100. / 255  # mean 128.3/255 > .5
  adv[1] = 140.4 / 255                       # far above: survives as 140
  adv[3] = np.nan                            # the attack failed
  success = np.array([True, True, True, False])
  l2 = np.array([np.sqrt(4) * 28.3 / 255, np.sqrt(4) * 40.4 / 255, 0.,
                 np.inf], np.float32)
  attack = quantize.QuantizedAttack(
      Fixed(adv, success, l2, np.array([0, 0, 1, 0])), MeanAbove(.5))
  r = attack(clean, np.zeros(4, np.int64))
  # 128.3 rounds to 128 (mean 0.502 > .5) and 140.4 to 140: both still
  # class 1. The clean error and the failure stay as they were.
  np.testing.assert_array_equal(r.success_unquantized, success)
  np.testing.assert_array_equal(r.success, [True, True, True, False])
  np.testing.assert_allclose(r.l2[1], 2 * 40. / 255, rtol=1e-5)
  np.testing.assert_allclose(r.adversarial[1], 140. / 255, rtol=1e-6)
  assert r.l2[2] == 0. and np.isinf(r.l2[3])
  np.testing.assert_array_equal(r.adversarial[2], adv[2])


def test_a_perturbation_below_half_a_grey_level_does_not_survive():
  # Mean 127.6 / 255 = 0.5004 > .5 flips the label; saved, it is 128 / 255
  # = 0.50196: still flipped. At 127.4 / 255 it rounds to 127 / 255 =
  # 0.498: back to the clean label, dropped.
  clean = np.full((2, 2, 2, 1), 127. / 255, np.float32)
  adv = clean.copy()
  adv[0] = 127.6 / 255
  adv[1] = 127.4 / 255
  success = np.array([True, True])
  attack = quantize.QuantizedAttack(
      Fixed(adv, success, np.full(2, .01, np.float32), np.zeros(2, int)),
      MeanAbove(127.3 / 255))
  r = attack(clean, np.zeros(2, np.int64))
  np.testing.assert_array_equal(r.success, [True, False])
  np.testing.assert_allclose(r.l2[0], 2 * 1. / 255, rtol=1e-5)
  assert np.isinf(r.l2[1]) and np.isnan(r.adversarial[1]).all()
  with pytest.raises(KeyError):
    quantize.LEVELS['16bit']  # pylint: disable=pointless-statement
