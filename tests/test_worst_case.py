"""The per-sample worst case over several attacks (`attacks.worst_case`)
of known arrays."""

import numpy as np
import pytest

from attacks import worst_case


def test_worst_case_merge_of_known_arrays():
  inf = np.inf
  merged = worst_case.merge({
      'capsule': [0., 1.5, inf, 2.0, inf, 3.0],
      'pgd_l2': [0., 2.5, 1.0, 2.0, inf, inf],
      'margin_cw': [0., 1.7, 4.0, 0.5, inf, inf]})
  np.testing.assert_array_equal(merged.l2, [0., 1.5, 1.0, .5, inf, 3.0])
  np.testing.assert_array_equal(merged.winner, [0, 0, 1, 2, -1, 0])
  assert merged.names == ('capsule', 'pgd_l2', 'margin_cw')
  assert merged.wins() == dict(capsule=3, pgd_l2=1, margin_cw=1)
  with pytest.raises(ValueError, match='expected amounts of shape'):
    worst_case.merge({'a': [1., 2.], 'b': [1.]})
  with pytest.raises(ValueError, match='no NaN'):
    worst_case.merge({'a': [1., np.nan]})
  with pytest.raises(ValueError, match='at least one'):
    worst_case.merge({})


def test_worst_case_summary_of_known_arrays():
  inf = np.inf
  amounts = dict(capsule=np.array([0., 1.5, inf, 2.0, inf, 3.0]),
                 pgd_l2=np.array([0., 2.5, 1.0, 2.0, inf, inf]))
  merged = worst_case.merge(amounts)
  s = worst_case.summarize(merged, amounts, amounts['capsule'] > 0, 2.,
                           max_threshold=3.)
  # Worst case [0, 1.5, 1, 2, inf, 3]: > 2 for two of six samples.
  assert s['accuracy_at_threshold'] == pytest.approx(2 / 6)
  assert s['capsule_accuracy_at_threshold'] == pytest.approx(3 / 6)
  assert s['pgd_l2_accuracy_at_threshold'] == pytest.approx(3 / 6)
  assert s['strongest_at_threshold'] == 'tie: capsule, pgd_l2'
  # Ties (samples 0 and 3) go to the first attack; sample 4 to none.
  assert (s['capsule_wins'], s['pgd_l2_wins']) == (4, 1)
  assert s['pgd_l2_smaller_than_capsule'] == 1
  # Accuracies (capsule, pgd): t < 1: (5/6, 5/6); 1 <= t < 1.5: (5/6, 4/6);
  # 1.5 <= t < 2: (4/6, 4/6); 2 <= t < 2.5: (3/6, 3/6); 2.5 <= t < 3:
  # (3/6, 2/6); t = 3: (2/6, 2/6).
  assert s['strongest_by_threshold'] == (
      '0-0.75 tie; 1-1.25 pgd_l2; 1.5-2.25 tie; 2.5-2.75 pgd_l2; 3-3 tie')
