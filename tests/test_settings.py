"""The labels of modified presets (`attacks.settings`, issue 25 item 2): a
preset whose settings were overridden is never named alone, in the
settings or in the reports."""

import json

import numpy as np

from attacks import evasion, protocol


def test_a_modified_preset_is_never_labelled_by_its_name_alone(tmp_path,
                                                               monkeypatch):
  from attacks import settings as settings_lib  # pylint: disable=g-import-not-at-top
  paper = evasion.get_config('paper_eval', seed=3)
  changed = settings_lib.changed_settings(
      paper, paper.replace(inner_iterations=10, outer_iterations=2,
                           learning_rate=1.))
  # In the config's field order; a value equal to the preset's is no change.
  assert changed == dict(outer_iterations=2, inner_iterations=10)
  assert settings_lib.preset_label('paper_eval', changed) == \
      'paper_eval, modified: outer 2, inner 10'
  assert settings_lib.preset_label('pgd_l2_min', dict(
      steps=10, search_steps=2)) == \
      'pgd_l2_min, modified: steps 10, search_steps 2'
  assert settings_lib.preset_label('paper_eval', {}) == 'paper_eval'
  # The reports: summary.md, the plot's title.
  settings = dict(dataset='mnist', split='test', num_samples=5,
                  preset='paper_eval', modified=changed, classifier='PosK')
  label = 'paper_eval, modified: outer 2, inner 10'
  assert protocol.plot_title([settings]) == \
      f'MNIST test, N = 5, preset {label}, classifier PosK'
  # Runs that share the preset but not its changes share no label.
  assert protocol.plot_title([settings, dict(settings, modified=None)]) == \
      'MNIST test, N = 5, classifier PosK'
  drawn = []
  monkeypatch.setattr(protocol, 'plot_accuracy_vs_l2',
                      lambda *args: drawn.append(args))
  p = np.array([0., 1., np.inf])
  protocol.write_reports(str(tmp_path), p, p > 0, settings, 4., 5.)
  assert label in drawn[0][4]
  assert f'| preset | {label} |' in (tmp_path / 'summary.md').read_text()
  assert json.loads((tmp_path / 'summary.json').read_text())['settings'][
      'modified'] == changed
