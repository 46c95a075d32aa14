"""reproduction/report.py: the robustness table from an attack stage's
worst case and noise control, on hand-made amounts with known answers."""

import json
import math

import numpy as np

from reproduction import records as records_lib
from reproduction import report

INF = np.inf


def _attack_folder(path, noise=None):
  """Four samples (the last a clean error); two attacks."""
  capsule = np.array([INF, 3.5, 0.7, 0.])
  pgd = np.array([2.5, INF, 0.4, 0.])
  np.savez(path / 'worst_case.npz', perturbation=np.minimum(capsule, pgd),
           names=np.array(['capsule', 'pgd_l2']),
           clean_correct=np.array([True, True, True, False]),
           perturbation_capsule=capsule, perturbation_pgd_l2=pgd)
  (path / 'sanity.json').write_text(json.dumps(dict(noise=noise)))
  return path


def test_budgets_are_a_half_and_the_integers_to_the_threshold():
  assert report.robustness_budgets(4.) == (0.5, 1., 2., 3., 4.)
  assert report.robustness_budgets(5.) == (0.5, 1., 2., 3., 4., 5.)


def test_rows_give_each_attack_the_worst_case_and_the_noise(tmp_path):
  folder = _attack_folder(tmp_path, noise=dict(threshold=4., accuracy=0.5,
                                              draws=2))
  rows = report.robustness(str(folder), report.robustness_budgets(4.))
  assert [r['attack'] for r in rows] == [
      'capsule', 'pgd_l2', 'worst case', 'Gaussian noise (2 draws)']
  assert all(r['clean'] == 75. for r in rows)
  # Accuracy at t: the share of samples whose amount exceeds t.
  assert rows[0]['accuracy'] == [75., 50., 50., 50., 25.]
  assert rows[1]['accuracy'] == [50., 50., 50., 25., 25.]
  assert rows[2]['accuracy'] == [50., 50., 50., 25., 0.]
  assert rows[3]['accuracy'] == [None, None, None, None, 50.]
  # Medians over the three correctly classified samples only.
  assert [r['median_l2'] for r in rows] == [3.5, 2.5, 2.5, None]


def test_a_minimal_norm_attack_that_broke_under_half_has_an_infinite_median():
  assert math.isinf(report.median_minimal_l2([INF, INF, 1.], [True] * 3))
  assert report.median_minimal_l2([0., 2., 1.], [False, True, True]) == 1.5


def test_a_folder_without_a_worst_case_gives_no_rows(tmp_path):
  assert report.robustness(str(tmp_path), (1.,)) is None


def test_the_markdown_table_has_a_line_per_row_and_the_noise_at_the_threshold(
    tmp_path):
  folder = _attack_folder(tmp_path, noise=dict(threshold=4., accuracy=0.5,
                                              draws=2))
  stage = records_lib.Stage('attack/hat/PosK', 'attack', (), {}, str(folder),
                            model='hat', classifier='PosK')
  text = report.robustness_markdown([stage], {stage.name: {}},
                                    (0.5, 1., 2., 3., 4.), 4.)
  assert '## Robustness of PosK under every attack (%)' in text
  assert ('| HAT-SCAE | worst case | 75.00 | 50.00 | 50.00 | 50.00 | 25.00 '
          '| 0.00 | 2.50 |') in text
  assert ('| HAT-SCAE | Gaussian noise (2 draws) | 75.00 |  |  |  |  | 50.00 '
          '|  |') in text
  assert 'PriK' not in text  # no attacked stage of PriK, so no table


def test_without_a_noise_control_there_is_no_noise_row(tmp_path):
  rows = report.robustness(str(_attack_folder(tmp_path)), (4.,))
  assert [r['attack'] for r in rows] == ['capsule', 'pgd_l2', 'worst case']
