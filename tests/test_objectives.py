"""The attack's objectives (`attacks.objectives`): the blurred-image mask,
the tanh change of variables, the capsule subset and the losses, by hand."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import objectives


def test_blur_mask_by_hand():
  img = np.arange(1., 10.).reshape(1, 3, 3, 1)
  # Corners average 4 in-bounds pixels, edges 6, the centre 9.
  expected = np.array([[3., 3.5, 4.], [4.5, 5., 5.5], [6., 6.5, 7.]])
  got = objectives.blur_mask(img).numpy()
  np.testing.assert_allclose(got[0, :, :, 0], expected, rtol=1e-6)
  # Channels are blurred independently; `times` repeats the blur.
  two = np.concatenate([img, 10. - img], -1)
  got2 = objectives.blur_mask(two).numpy()
  np.testing.assert_allclose(got2[0, :, :, 1], 10. - expected, rtol=1e-6)
  twice = objectives.blur_mask(img, times=2).numpy()
  np.testing.assert_allclose(
      twice, objectives.blur_mask(got).numpy(), rtol=1e-6)
  assert twice[0, 0, 0, 0] == pytest.approx((3 + 3.5 + 4.5 + 5) / 4)


def test_blur_mask_matches_loops_and_zero_regions():
  rng = np.random.default_rng(1)
  img = rng.uniform(size=(2, 5, 6, 1)) * (rng.uniform(size=(2, 5, 6, 1)) > .5)
  ref = np.zeros_like(img)
  for i in range(5):
    for j in range(6):
      box = img[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      ref[:, i, j] = box.mean(axis=(1, 2))
  np.testing.assert_allclose(objectives.blur_mask(img).numpy(), ref,
                             rtol=1e-5, atol=1e-7)
  stroke = np.zeros((1, 6, 6, 1), np.float32)
  stroke[0, 1, 1] = 1.
  mask = objectives.blur_mask(stroke).numpy()[0, :, :, 0]
  assert (mask[:3, :3] > 0).all() and (mask[3:, :] == 0).all() \
      and (mask[:, 3:] == 0).all()


def test_tanh_space_round_trip_and_box():
  x = np.array([0., .25, .5, 1.], np.float32).reshape(1, 2, 2, 1)
  w = objectives.to_tanh_space(x)
  assert np.isfinite(w.numpy()).all()  # the 0.999999 factor
  np.testing.assert_allclose(objectives.from_tanh_space(w).numpy(), x,
                             atol=1e-6)
  big = objectives.from_tanh_space(tf.constant([-1e4, -3., 0., 3., 1e4]))
  assert (big.numpy() >= 0).all() and (big.numpy() <= 1).all()


def test_capsule_subset_rules():
  f = tf.constant([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
  # Batch mean 2.1 / 6 = 0.35; row means 0.5 and 0.2.
  np.testing.assert_array_equal(objectives.capsule_subset(f).numpy(),
                                [[1, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(
      objectives.capsule_subset(f, 'example').numpy(), [[1, 0, 0], [0, 1, 0]])
  with pytest.raises(ValueError, match='subset rule'):
    objectives.capsule_subset(f, 'global')


def test_capsule_and_perturbation_losses_by_hand():
  f = tf.constant([[0.9, 0.1, 0.5], [2.0, 3.0, 1.0]])
  s = tf.constant([[1., 0., 1.], [0., 1., 1.]])
  prior = objectives.capsule_loss(f, s, 'prior', n_part_caps=4).numpy()
  np.testing.assert_allclose(prior, [0.5 * (0.81 + 0.25), 0.5 * (9. + 1.)])
  post = objectives.capsule_loss(f, s, 'posterior', n_part_caps=4).numpy()
  np.testing.assert_allclose(post, prior / 16.)
  plain = objectives.capsule_loss(f, s, 'posterior', 4, form='sum').numpy()
  np.testing.assert_allclose(plain, [1.4, 4.0])
  x = np.zeros((2, 2, 2, 1), np.float32)
  x_adv = x.copy()
  x_adv[0, 0, 0, 0], x_adv[1, 1, 1, 0], x_adv[1, 0, 1, 0] = 0.3, 0.4, 0.2
  p = objectives.perturbation_loss(tf.constant(x_adv), tf.constant(x))
  np.testing.assert_allclose(p.numpy(), [0.5 * .09, 0.5 * .2], rtol=1e-6)
  c_loss, p_loss = tf.constant([1., 2.]), tf.constant([.5, .25])
  const = tf.constant([10., 100.])
  # Per example: 10 * 1 + .5 + 100 * 2 + .25.
  assert objectives.total_loss(c_loss, p_loss, const, 'example').numpy() \
      == pytest.approx(210.75)
  # The fork's batch-coupled loss: (10 + 100) * (1 + 2) + 2 * (.5 + .25).
  assert objectives.total_loss(c_loss, p_loss, const).numpy() \
      == pytest.approx(331.5)
