"""Checks 4 and 5 of `attacks.sanity` (noise control, minimal-norm strength)
on hand-made reports, and the noise control itself (`attacks.noise`) on a
classifier whose answer under noise is known."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import noise, pgd, sanity
from helpers.attack_toys import linear_problem, toy_target

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


# --- the report of attacks.sanity by hand, and its unbounded PGD -------------

def test_sanity_passes_a_consistent_report():
  correct = np.array([True, True, True, False])
  # PGD's failure is exempt from check 1 (it has a ceiling); its median
  # (1.5) is below the paper's attack's (2), as check 5 asks.
  amounts = dict(capsule=np.array([1., 2., 3., 0.]),
                 pgd_l2=np.array([.5, INF, 1.5, 0.]))
  report = sanity.check(amounts, correct, np.array([.4, 8., 2., 0.]), 40.,
                        curves=dict(capsule=[.75, .5, .25, 0.]),
                        unbounded_clean_correct=correct)
  assert report['ok'] and report['flags'] == []
  assert report['unbounded']['success_rates'] == dict(capsule=1.,
                                                      pgd_unbounded=1.)
  assert report['eps0']['accuracy_at_0'] == dict(
      capsule=.75, pgd_l2=.75, pgd_unbounded=.75)
  assert report['non_increasing']['unbounded_accuracy'] == 0.
  assert sanity.markdown(report).startswith('Sanity checks passed')


def test_sanity_flags_each_failure_by_hand():
  correct = np.array([True, True, True, False])
  amounts = dict(capsule=np.array([1., INF, 3., 0.]),      # fails sample 1
                 margin_cw=np.array([0., 2., 3., 0.]))     # 0 on a correct one
  unbounded = np.array([INF, 1., INF, 0.])                 # two survivors
  report = sanity.check(
      amounts, correct, unbounded, 40., curves=dict(capsule=[.75, .8, .5]),
      unbounded_clean_correct=np.array([True, True, False, False]),
      indices=np.array([70, 71, 72, 73]))
  assert not report['ok']
  assert report['unbounded']['success_rates'] == dict(
      capsule=pytest.approx(2 / 3), margin_cw=1., pgd_unbounded=pytest.approx(
          1 / 3))
  assert report['unbounded']['survivors'] == [70, 72]
  # Rising curve; unbounded accuracy .5 above capsule's .25 and cw's 0.
  assert report['non_increasing']['failing'] == ['capsule', 'capsule',
                                                 'margin_cw']
  assert report['eps0']['accuracy_at_0'] == dict(
      capsule=.75, margin_cw=.5, pgd_unbounded=.75)
  assert report['eps0']['clean_disagreements'] == 1
  flags = report['flags']
  assert len(flags) == 7, flags
  assert flags[0].startswith('capsule: its success rate without a budget is '
                             '66.67% < 100%')
  assert flags[1].startswith('PGD-L2 at eps = 40 (any image within reach) '
                             'left 2 of 3 correctly classified samples')
  assert 'margin_cw: robust accuracy at L2 = 0 is 0.5000, not the clean ' \
      'accuracy 0.7500.' in flags
  text = sanity.markdown(report)
  assert text.startswith('**Sanity checks FAILED**')
  assert text.count('\n- ') == 7


def test_sanity_flags_an_attack_that_missed_a_point_within_its_budget():
  correct = np.ones(4, bool)
  amounts = dict(capsule=np.array([3., 12., 1., INF]),
                 pgd_l2=np.array([INF, INF, .5, INF]))
  unbounded = np.array([9., 11., .6, 9.5])
  report = sanity.check(amounts, correct, unbounded, 40.,
                        ceilings=dict(pgd_l2=10.))
  # Samples 0 (capsule: 3) and 3 (unbounded PGD: 9.5) lie within 10;
  # sample 1's nearest known point (11) does not.
  assert report['non_increasing']['missed_within_budget'] == dict(pgd_l2=2)
  assert 'pgd_l2' in report['non_increasing']['failing']
  assert any(('pgd_l2 failed at its budget 10 on 2 samples that another '
              'attack broke within it (L2 3.00 to 9.50)') in flag
             for flag in report['flags'])
  within = sanity.check(amounts, correct, unbounded, 40.,
                        ceilings=dict(pgd_l2=2.))
  assert within['non_increasing']['missed_within_budget'] == {}


def test_unbounded_pgd_reaches_any_image():
  """The box diameter of 4 x 4 x 1 images is 4. The all-white image lies at
  the closed-form distance a = 0.5 sum(w) (about 2) from the toy's boundary
  (the box does not bind along -w): PGD at the diameter breaks it, PGD at
  0.9 a does not."""
  assert sanity.box_diameter((40, 40, 1)) == 40.
  config = sanity.unbounded_config((4, 4, 1), seed=2)
  assert (config.eps, config.steps, config.restarts, config.seed,
          config.schedule) == (4., sanity.UNBOUNDED_STEPS, 1, 2, 'apgd')
  _, w, near = linear_problem([.05], seed=3)
  x = np.concatenate([near, np.ones_like(near)])
  distance = .5 * w.sum()
  assert 1. < distance < 4. and (1. - distance * w >= 0.).all()
  labels = np.zeros(2, np.int64)
  target = toy_target(w, 'PriK')
  r = pgd.PGDAttack(target, config)(x, labels)
  np.testing.assert_array_equal(r.success, [True, True])
  assert r.l2[1] >= distance - 1e-4
  short = pgd.PGDAttack(target, config, eps=.9 * distance)(x, labels)
  np.testing.assert_array_equal(short.success, [True, False])
