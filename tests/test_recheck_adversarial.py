"""benchmarks/recheck_adversarial.py: the re-check's bookkeeping on a toy
classifier with a closed-form answer (the label is 1 when the image's mean
pixel exceeds 0.5)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'benchmarks'))
import recheck_adversarial  # pylint: disable=g-import-not-at-top,wrong-import-position


def _predict(images):
  return (images.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)


def test_recheck_counts_only_recorded_successes_and_recomputes_l2():
  clean = np.full((4, 2, 2, 1), 0.4, np.float32)   # all predicted 0
  labels = np.zeros(4, np.int64)
  adversarial = clean.copy()
  adversarial[0] = 0.6    # flips: L2 = sqrt(4 * 0.2^2) = 0.4
  adversarial[1] = 0.45   # a recorded success that does not flip: L2 0.1
  adversarial[2] = np.nan  # a failure, stored as NaN
  recorded = dict(success=np.array([True, True, False, True]),
                  clean_correct=np.array([True, True, True, False]),
                  clean_pred=np.zeros(4, np.int64),
                  attack_l2=np.array([0.4, 0.1, np.inf, 0.]))
  out = recheck_adversarial.recheck(_predict, adversarial, clean, labels,
                                    recorded)
  assert out['samples'] == 4
  assert out['clean_predictions_equal_recorded']
  assert out['recorded_successes'] == 2  # sample 3 was a clean error
  assert out['misclassified_on_recheck'] == 0.5
  np.testing.assert_allclose(out['median_l2_recomputed'], 0.25, rtol=1e-6)
  np.testing.assert_allclose(out['median_l2_recorded'], 0.25)
  assert out['images_in_box']


def test_recheck_reports_clean_predictions_that_differ_from_the_record():
  clean = np.full((2, 2, 2, 1), 0.7, np.float32)  # predicted 1
  recorded = dict(success=np.array([False, False]),
                  clean_correct=np.array([True, True]),
                  clean_pred=np.array([1, 0]), attack_l2=np.full(2, np.inf))
  out = recheck_adversarial.recheck(_predict, clean.copy(), clean,
                                    np.ones(2, np.int64), recorded)
  assert not out['clean_predictions_equal_recorded']
  assert out['recorded_successes'] == 0
  assert out['misclassified_on_recheck'] is None
