"""The defence code's robustness protocol (`attacks.protocol`): its numbers
by hand, a run that resumes, refuses other settings and writes its
outputs, the reports and the progress bar; with `FakeAttack`
(helpers/attack_toys.py) for an attack."""

import functools
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from attacks import pipeline, protocol
from conftest import REPO
from helpers.attack_toys import FakeAttack


def test_protocol_numbers_by_hand():
  correct = np.array([True, True, False, True, True])
  success = np.array([True, False, True, True, True])
  l2 = np.array([1.5, 9., 0.3, 4.0, 4.5])
  p = protocol.protocol_l2(correct, success, l2)
  np.testing.assert_array_equal(p, [1.5, np.inf, 0., 4.0, 4.5])
  assert protocol.accuracy_at(p, 0.) == pytest.approx(0.8)  # clean accuracy
  assert protocol.accuracy_at(p, 4.) == pytest.approx(0.4)  # > 4: inf, 4.5
  assert protocol.accuracy_at(p, np.inf) == 0.
  curve = protocol.robust_accuracy_curve(p, 5., step=0.5)
  assert curve['thresholds'][:3] == [0., 0.5, 1.]
  assert curve['accuracy'][0] == pytest.approx(.8)
  assert curve['accuracy'][3] == pytest.approx(.6)   # t = 1.5: 1.5 is not > t
  assert curve['accuracy'][-1] == pytest.approx(.2)
  s = protocol.summarize(p, correct, 4.)
  assert s['clean_accuracy'] == pytest.approx(.8)
  assert s['attack_success_rate'] == pytest.approx(3 / 4)
  assert s['success_rate_incl_clean_errors'] == pytest.approx(4 / 5)
  assert s['mean_l2'] == pytest.approx(np.mean([1.5, 4., 4.5]))
  assert s['std_l2'] == pytest.approx(np.std([1.5, 4., 4.5]))
  assert s['mean_l2_incl_clean_errors'] == pytest.approx(10. / 4)
  assert s['accuracy_at_threshold'] == pytest.approx(.4)
  assert s['robust_accuracy_unbounded'] == pytest.approx(.2)
  assert '| accuracy at L2 <= 4 | 0.4000 |' in protocol.markdown_table(s)


def test_run_protocol_resumes_and_writes_outputs(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(7, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 7)
  out = str(tmp_path / 'run')
  settings = dict(classifier='PosK', dataset='mnist', num_samples=7)
  protocol.check_settings(out, settings)
  fake = FakeAttack()
  first = protocol.run_protocol(fake, images, labels, out, batch_size=3,
                                indices=np.arange(10, 17), progress=False)
  assert fake.calls == 3
  os.remove(protocol.batch_path(out, 1))
  again = protocol.run_protocol(fake, images, labels, out, batch_size=3,
                                indices=np.arange(10, 17), progress=False)
  assert fake.calls == 4  # only the removed batch was recomputed
  for key in ('perturbation', 'success', 'clean_pred'):
    np.testing.assert_array_equal(first[key], again[key])
  wrong = np.arange(7)
  with pytest.raises(protocol.SettingsMismatchError):
    protocol.run_protocol(fake, images, labels, out, batch_size=3,
                          indices=wrong, progress=False)
  with pytest.raises(protocol.SettingsMismatchError, match='num_samples'):
    protocol.check_settings(out, dict(settings, num_samples=8))
  # Clean errors (every third sample) get amount 0 and their clean image.
  errors = ~first['clean_correct']
  assert (first['perturbation'][errors] == 0).all()
  np.testing.assert_array_equal(first['adversarial'][errors], images[errors])
  summary = protocol.write_outputs(out, first, settings, 4., 5.)
  for name in ('l2.npz', 'adversarial.npz', 'summary.json', 'summary.md',
               'robust_accuracy.json', 'accuracy_vs_l2.png'):
    assert os.path.exists(os.path.join(out, name)), name
  with open(os.path.join(out, 'summary.json')) as f:
    assert json.load(f)['summary'] == summary
  arrays, saved = protocol.load_results(out)
  np.testing.assert_array_equal(arrays['perturbation'], first['perturbation'])
  assert saved == settings
  # The command line overlays several result folders in one plot.
  other = str(tmp_path / 'other')
  protocol.check_settings(other, settings)
  protocol.write_outputs(other, dict(first, perturbation=first['perturbation']
                                     * 2), settings, 4., 5.)
  table = pipeline.compare_runs([out, other], str(tmp_path / 'both'),
                                labels=['a', 'b'])
  assert table.splitlines()[0] == (
      '| run | clean accuracy | accuracy at L2 <= 4 |')
  assert table.splitlines()[2:] == [
      f'| a | {protocol.accuracy_at(first["perturbation"], 0.):.4f} | '
      f'{protocol.accuracy_at(first["perturbation"], 4.):.4f} |',
      f'| b | {protocol.accuracy_at(first["perturbation"], 0.):.4f} | '
      f'{protocol.accuracy_at(first["perturbation"] * 2, 4.):.4f} |']
  assert (tmp_path / 'both' / 'compare.md').read_text() == table + '\n'
  with pytest.raises(ValueError, match='one label per compared folder'):
    pipeline.compare_runs([out, other], str(tmp_path / 'x'), labels=['a'])
  assert pipeline.thresholds('fashion_mnist') == (5., 6.)
  assert pipeline.thresholds('cifar', 2., 3.) == (2., 3.)
  with pytest.raises(ValueError, match="unknown dataset='cifar'"):
    pipeline.thresholds('cifar')
  # The reports are redrawn from the saved results alone.
  os.remove(os.path.join(out, 'summary.json'))
  assert pipeline.redraw_reports(out, threshold=4.) == summary
  with open(os.path.join(out, 'summary.json')) as f:
    assert json.load(f)['summary'] == summary
  # The script: the comparison, without TensorFlow.
  cmp_dir = str(tmp_path / 'cmp')
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'run', 'attack.py'), '--plot_only',
       f'--compare={out},{other}', '--labels=a,b', f'--out_dir={cmp_dir}'],
      capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  assert os.path.exists(os.path.join(cmp_dir, 'accuracy_vs_l2.png'))
  assert done.stdout == table + '\n'


def test_overwrite_removes_the_old_runs_outputs_first(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(5, 4, 4, 1)).astype(np.float32)
  out = tmp_path / 'run'
  old = dict(classifier='PosK', dataset='mnist', num_samples=5, seed=0)
  protocol.check_settings(str(out), old)
  results = protocol.run_protocol(FakeAttack(), images, rng.integers(0, 10, 5),
                                  str(out), batch_size=2, progress=False)
  protocol.write_outputs(str(out), results, old, 4., 5.)
  (out / 'notes.txt').write_text('not written by the attack')
  killed_writes = [out / 'summary.json.0123456789ab.tmp',
                   out / 'batches' / 'batch_00003.npz.ba9876543210.tmp']
  for path in killed_writes:
    path.write_bytes(b'half')
  # Another seed with --overwrite, interrupted straight after the check.
  protocol.check_settings(str(out), dict(old, seed=1), overwrite=True)
  assert sorted(os.listdir(out)) == ['batches', 'notes.txt', 'settings.json']
  assert os.listdir(out / 'batches') == []
  assert json.loads((out / 'settings.json').read_text())['seed'] == 1
  # --plot_only then finds no finished run, instead of drawing the seed-0
  # numbers under seed 1.
  with pytest.raises(FileNotFoundError, match='no finished run'):
    pipeline.redraw_reports(str(out))
  assert not (out / 'summary.json').exists()


def test_a_run_removes_the_writes_a_kill_left_unfinished(tmp_path):
  out = tmp_path / 'run'
  (out / 'batches').mkdir(parents=True)
  settings = dict(classifier='PosK', seed=0)
  killed = out / 'settings.json.0123456789ab.tmp'
  killed.write_bytes(b'{')
  protocol.check_settings(str(out), settings)  # a fresh start
  assert not killed.exists()
  killed_writes = [out / 'l2.npz.0123456789ab.tmp',
                   out / 'batches' / 'batch_00000.npz.ba9876543210.tmp']
  kept = [out / 'notes.0123456789ab.tmp', out / 'batches' / 'notes.txt']
  for path in killed_writes + kept:
    path.write_bytes(b'half')
  protocol.check_settings(str(out), settings)  # a resumed run
  assert [p.exists() for p in killed_writes + kept] == [False, False, True,
                                                        True]


def test_accuracy_plot_says_what_it_shows(tmp_path, monkeypatch):
  settings = dict(dataset='fashion_mnist', split='train', num_samples=5,
                  preset='paper_eval', classifier='PosK',
                  config='fashion_mnist')
  title = 'Fashion-MNIST train, N = 5, preset paper_eval, classifier PosK'
  assert protocol.plot_title([settings]) == title
  # A comparison's title keeps what its runs share.
  assert protocol.plot_title([settings, dict(settings, classifier='PriK')]) \
      == 'Fashion-MNIST train, N = 5, preset paper_eval'
  assert protocol.plot_title([{}]) is None
  p = np.array([0., 1., 2., 5.5, np.inf])
  fig = protocol.accuracy_vs_l2_figure([('SCAE', p)], 6., 5., title)
  ax = fig.axes[0]
  assert ax.get_title() == title
  legend = ax.get_legend()
  assert [t.get_text() for t in legend.get_texts()] == [
      'SCAE: accuracy 0.400 at L2 \u2264 5', 'reported threshold: L2 = 5']
  assert list(ax.lines[-1].get_xdata()) == [5., 5.]
  assert ax.get_xlabel().endswith('(pixel values in [0, 1])')
  assert ax.get_ylabel() == 'Accuracy under attacks of L2 \u2264 t'
  bottom, top = ax.get_ylim()
  assert bottom < 0 and top > 1  # a curve at 0 or 1 is not under the frame
  fig.canvas.draw()
  # Below the axes, the legend covers no curve.
  assert legend.get_window_extent().y1 < ax.get_window_extent().y0
  # The reports draw it with the run's settings.
  drawn = []
  monkeypatch.setattr(protocol, 'plot_accuracy_vs_l2',
                      lambda *args: drawn.append(args))
  protocol.write_reports(str(tmp_path), p, p > 0, settings, 5., 6.)
  assert [(a[0][0][0], a[3], a[4]) for a in drawn] == [
      ('PosK, config fashion_mnist', 5., title)]


def test_progress_bar_counts_whole_images(tmp_path, monkeypatch, capsys):
  # Batches of 2, 2 and 1 images, 3 outer iterations each: a bar counting
  # fractions would show 2/3 of an image after the first iteration.
  import tqdm  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tqdm, 'tqdm', functools.partial(tqdm.tqdm,
                                                      mininterval=0))
  images = np.random.default_rng(0).uniform(size=(5, 4, 4, 1))
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # tqdm's clamping warning included
    protocol.run_protocol(FakeAttack(outer=3), images, np.zeros(5, np.int64),
                          str(tmp_path), batch_size=2, progress=True)
  shown = re.findall(r'\| *([^ |]+)/5 \[', capsys.readouterr().err)
  assert set(shown) == {'0', '1', '2', '3', '4', '5'}, shown
  counts = [int(c) for c in shown]
  assert counts == sorted(counts) and counts[-1] == 5


def test_a_run_saved_before_the_labels_resumes_and_gets_its_label(tmp_path):
  out = str(tmp_path / 'run')
  old = dict(classifier='PosK', preset='paper_eval',
             attack=dict(outer_iterations=2))
  protocol.check_settings(out, old)
  new = dict(old, modified=dict(outer_iterations=2))
  protocol.check_settings(out, new)  # no SettingsMismatchError
  assert json.loads(open(os.path.join(out, 'settings.json')).read()) == new
  with pytest.raises(protocol.SettingsMismatchError,
                     match=r'attack.outer_iterations: 2 -> 3'):
    protocol.check_settings(out, dict(new, attack=dict(outer_iterations=3)))
