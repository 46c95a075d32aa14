"""A checkpoint's attack from start to finish (`attacks.pipeline`,
`run/attack.py`): its files, its k-means checks, SIGKILL and resume, the
labels of modified presets, several attacks with their worst case and
sanity checks, and the settings each folder records."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from attacks import evasion, pgd, pipeline, protocol, registry, sanity
from attacks.run_spec import AttackRun
from conftest import REPO, data_path
from helpers import attack_run
from helpers.attack_files import assert_same_outputs
from helpers.attack_files import outputs
from helpers.attack_files import tiny_posk_checkpoint
from helpers.attack_toys import FakeAttack
from scae_tf import checkpoints, configs, data, files, kmeans, loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE


# --- a checkpoint, end to end ------------------------------------------------

def test_attack_checkpoint_end_to_end(tmp_path):
  data_dir = str(data_path('mnist'))
  tf.random.set_seed(0)
  model = SCAE(configs.tiny_config(canvas_size=40))
  prefix = checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'tiny'))
  # (Without the sanity checks: a single attack's are
  # test_a_list_of_attacks_runs_those_and_a_single_one_checks_in_place's.)
  settings = dict(dataset='mnist', data_dir=data_dir, num_samples=4,
                  batch_size=2, sanity=False,
                  overrides=dict(outer_iterations=1, inner_iterations=2))
  with pytest.raises(FileNotFoundError, match='run run/evaluate.py'):
    pipeline.attack_checkpoint(
        AttackRun(str(tmp_path), 'PosK', out_dir=str(tmp_path / 'none'),
                  **settings), progress=False)
  assert not (tmp_path / 'none').exists()

  km = KMeansClassifier(centers=np.eye(3, dtype=np.float32), metric='cosine',
                        feature='posterior', cluster_to_label=[3, 1, 7])
  km.save(loading.kmeans_path(prefix, 'posterior'))
  out = tmp_path / 'out'
  messages = []
  result = pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'posk', out_dir=str(out), **settings),
      progress=False, log=messages.append)
  assert 'records neither the checkpoint nor the data' in messages[0]
  saved = result['settings']
  assert (saved['classifier'], saved['config'], saved['split']) == (
      'PosK', 'tiny', 'test')
  assert saved['checkpoint_format'] == 'tf2'
  assert saved['kmeans'] == os.path.abspath(
      loading.kmeans_path(prefix, 'posterior'))
  assert saved['attack']['inner_iterations'] == 2
  assert result['summary']['num_samples'] == 4
  # The samples are the seed's draw; their clean predictions, the k-means
  # labels of the model's posterior presences.
  indices = np.random.default_rng(0).choice(10000, 4, replace=False)
  with np.load(out / 'l2.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    images, labels = data.load_split(data_dir, 'test')
    np.testing.assert_array_equal(z['labels'], labels[indices])
    features = kmeans.collect_features(
        model, data.preprocess(images[indices], 'resize'))
    np.testing.assert_array_equal(z['clean_pred'], km.predict(features))
  with pytest.raises(ValueError, match='exceeds the 10000 examples'):
    pipeline.attack_checkpoint(
        AttackRun(prefix, 'PriL', **dict(settings, num_samples=10001)),
        progress=False)


def test_attack_refuses_a_kmeans_of_another_checkpoint_or_data(tmp_path):
  prefixes = []
  for seed in (0, 1):
    tf.random.set_seed(seed)
    prefixes.append(checkpoints.save_tf2_checkpoint(
        SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / f'm{seed}')))
  fitted, attacked = prefixes
  km = KMeansClassifier(centers=np.eye(3, dtype=np.float32), metric='cosine',
                        feature='posterior', cluster_to_label=[3, 1, 7],
                        metadata=kmeans.fitted_on(fitted, 'mnist', 'resize',
                                                  'tiny'))
  path = km.save(str(tmp_path / 'km.npz'))
  km.save(loading.kmeans_path(fitted, 'posterior'))
  out = tmp_path / 'out'
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2, out_dir=str(out), sanity=False,
                  overrides=dict(outer_iterations=1, inner_iterations=1))
  with pytest.raises(kmeans.KMeansMismatchError, match=re.escape(
      f'k-means file {path} was fitted on checkpoint {fitted} ')):
    pipeline.attack_checkpoint(
        AttackRun(attacked, 'PosK', kmeans=path, **settings), progress=False)
  # The one beside the checkpoint is checked too.
  with pytest.raises(kmeans.KMeansMismatchError,
                     match='with preprocess resize, not pad_center'):
    pipeline.attack_checkpoint(
        AttackRun(fitted, 'PosK', preprocess='pad_center', **settings),
        progress=False)
  assert not out.exists()
  messages = []
  result = pipeline.attack_checkpoint(
      AttackRun(attacked, 'PosK', kmeans=path, allow_kmeans_mismatch=True,
                **settings), progress=False, log=messages.append)
  assert messages[0].startswith(f'warning: k-means file {path} was fitted '
                                f'on checkpoint {fitted} ')
  assert result['settings']['kmeans'] == path
  assert result['summary']['num_samples'] == 2


# --- fault injection: SIGKILL and resume -------------------------------------

@pytest.fixture
def killable_attack(tmp_path):
  """Runs tests/helpers/attack_run.py (a 3-batch PosK attack of a tiny
  checkpoint) as `run(out_dir, kill_at=-1)` -> (exit status, its stdout
  lines: the events of a finished run, `killed at <event>` of a killed
  one); `run.checkpoint` and `run.data_dir` are its arguments."""
  prefix = tiny_posk_checkpoint(tmp_path)
  script = os.path.join(REPO, 'tests', 'helpers', 'attack_run.py')
  data_dir = str(data_path('mnist'))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
      filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))

  def run(out_dir, kill_at=-1):
    done = subprocess.run(
        [sys.executable, script, prefix, data_dir, str(out_dir),
         str(kill_at)], env=env, capture_output=True, text=True, timeout=900,
        check=False)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode, done.stdout.splitlines()

  run.checkpoint, run.data_dir = prefix, data_dir
  return run


def test_attack_killed_in_a_save_and_between_saves_ends_bit_identical(
    tmp_path, killable_attack, monkeypatch, capsys):
  # The uninterrupted run in this process, instrumented as the helper does
  # (and undone after the test): one interpreter start and one autograph
  # conversion of the attack fewer; the killed and resumed runs are
  # processes of their own.
  monkeypatch.setattr(files, 'atomic_open', files.atomic_open)
  monkeypatch.setattr(evasion.CapsuleAttack, '__call__',
                      evasion.CapsuleAttack.__call__)
  capsys.readouterr()
  attack_run.main(killable_attack.checkpoint, killable_attack.data_dir,
                  str(tmp_path / 'full'), '-1')
  events = capsys.readouterr().out.splitlines()
  assert events.count('outer') == 9  # 3 batches x 3
  full = outputs(tmp_path / 'full')
  out = tmp_path / 'killed'
  # In the save of batch 1: written, not yet renamed.
  assert killable_attack(out, 'batches/batch_00001.npz written') == (
      -signal.SIGKILL, ['killed at batches/batch_00001.npz written'])
  assert sorted(os.listdir(out / 'batches'))[0] == 'batch_00000.npz'
  assert len(os.listdir(out / 'batches')) == 2
  # Between saves: after the first attack iteration of the resumed run.
  assert killable_attack(out, 'outer')[0] == -signal.SIGKILL
  status, resumed = killable_attack(out)
  assert status == 0
  # The last run attacked batches 1 and 2 only, and ends as the full run.
  assert resumed.count('outer') == 6
  assert_same_outputs(out, full)


@pytest.mark.slow
def test_attack_killed_at_20_random_points_ends_bit_identical(
    tmp_path, killable_attack):
  """SIGKILL at 20 events drawn with a fixed seed (in a save, or between
  saves), each run resuming the last; every run that finishes has written
  the files of an uninterrupted run."""
  status, events = killable_attack(tmp_path / 'full')
  assert status == 0
  full = outputs(tmp_path / 'full')
  rng = np.random.default_rng(20)
  out, killed_at, finished = tmp_path / 'killed', [], 0
  while len(killed_at) < 20:
    status, lines = killable_attack(out, int(rng.integers(len(events))))
    if status == 0:  # a resumed run has fewer events left than drawn
      assert_same_outputs(out, full)
      shutil.rmtree(out)
      finished += 1
    else:
      killed_at.append(lines[-1].split(' ')[-1])
  assert killable_attack(out)[0] == 0
  assert_same_outputs(out, full)
  assert finished >= 1
  # Kills fell in each stage of a save, and between saves.
  assert set(killed_at) == {'open', 'written', 'renamed', 'outer'}


# --- labels of modified presets (issue 25, item 2) ---------------------------

def test_a_run_labels_its_modified_presets_everywhere(tmp_path, monkeypatch):
  """Banner, summary files and plot titles of an attack run with the
  preset's settings overridden; the unmodified ones keep the bare name."""
  tf.random.set_seed(0)
  prefix = checkpoints.save_tf2_checkpoint(
      SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / 'tiny'))
  titles = []
  draw = protocol.plot_accuracy_vs_l2
  monkeypatch.setattr(protocol, 'plot_accuracy_vs_l2',
                      lambda *args: titles.append(args[4]) or draw(*args))
  messages = []
  out = tmp_path / 'out'
  run = AttackRun(prefix, 'PriL', dataset='mnist',
                  data_dir=str(data_path('mnist')), num_samples=2,
                  batch_size=2, attack='capsule,pgd_l2,ddn', sanity=False,
                  out_dir=str(out),
                  overrides=dict(outer_iterations=1, inner_iterations=2),
                  pgd_overrides=dict(steps=2, search_steps=1))
  pipeline.attack_checkpoint(run, progress=False, log=messages.append)
  capsule = 'paper_eval, modified: outer 1, inner 2'
  pgd_label = 'pgd_l2_min, modified: steps 2, search_steps 1'
  banners = [m for m in messages if m.startswith('checkpoint ')]
  assert [b.split('; attack ')[1].split(' gradient')[0] for b in banners] == [
      f'capsule ({capsule}, code', f'pgd_l2 ({pgd_label}, full',
      'ddn (ddn, full']
  for name, label in (('capsule', capsule), ('pgd_l2', pgd_label),
                      ('ddn', 'ddn')):
    md = (out / name / 'summary.md').read_text()
    assert f'| preset | {label} |' in md
  assert titles[:3] == [f'MNIST test, N = 2, preset {label}, classifier PriL'
                        for label in (capsule, pgd_label, 'ddn')]
  # The worst case's plot: no preset is common to all three.
  assert 'preset' not in titles[3]
  # Redrawn from the saved settings: the same label.
  pipeline.redraw_reports(str(out / 'pgd_l2'))
  assert titles[-1] == f'MNIST test, N = 2, preset {pgd_label}, classifier PriL'
  # The same command resumes (the label is no setting of its own).
  messages.clear()
  pipeline.attack_checkpoint(run, progress=False, log=messages.append)
  assert any(capsule in m for m in messages)


def test_worst_case_names_its_runs_relative_to_itself(tmp_path):
  """worst_case.json lists the attacks' folders relative to the file (as
  sanity.json does), not as paths of the machine that ran them."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(4, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 4)
  out = tmp_path / 'all'
  folders = []
  for name in ('capsule', 'pgd_l2'):
    folder = str(out / name)
    settings = dict(classifier='PosK', dataset='mnist', num_samples=4,
                    **({} if name == 'capsule' else dict(attack_name=name)))
    protocol.check_settings(folder, settings)
    results = protocol.run_protocol(FakeAttack(), images, labels, folder,
                                    batch_size=2, progress=False)
    protocol.write_outputs(folder, results, settings, 4., 5.)
    folders.append(os.path.abspath(folder))
  pipeline.write_worst_case(str(out), folders, 4., 5.)
  saved = json.loads((out / 'worst_case.json').read_text())
  assert saved['runs'] == ['capsule', 'pgd_l2']


# --- several attacks, run/attack.py ------------------------------------------

@pytest.mark.parametrize('settings,error', [
    (dict(attack='pgd_linf'), "unknown attack='pgd_linf'"),
    (dict(attack='pgd_l2', eps=0.), 'eps must be a positive number'),
    (dict(attack='all', eps=-4.), 'eps must be a positive number'),
    (dict(attack='capsule', eps=float('nan')), 'eps must be a positive'),
    (dict(attack='pgd_l2', pgd_overrides=dict(steps=0)),
     'steps must be a positive integer'),
    (dict(attack='pgd_l2', pgd_preset='pgd_linf'), 'Unknown PGD preset'),
    (dict(attack='pgd_l2', gradient='true'), "unknown gradient='true'"),
    (dict(attack='pgd_l2', quantize='16bit'), "unknown quantize='16bit'"),
])
def test_bad_attack_settings_fail_before_the_model_loads(tmp_path, settings,
                                                         error):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=error):
    pipeline.attack_checkpoint(
        AttackRun(str(tmp_path / 'no_checkpoint'), 'PosK', out_dir=str(out),
                  **settings), progress=False)
  assert not out.exists()


def test_the_script_refuses_an_unknown_attack_with_one_line(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
      filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'run', 'attack.py'),
       f'--checkpoint={tmp_path}', '--attack=fgsm',
       f'--out_dir={tmp_path / "out"}'],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      "error: unknown attack='fgsm'; expected one of capsule, pgd_l2, "
      'margin_cw, ddn, fmn, all.')
  assert not (tmp_path / 'out').exists()


def test_pgd_settings_of_a_run():
  entry = registry.ATTACKS['pgd_l2']
  pgd_run = lambda **fields: AttackRun('ckpt', attack='pgd_l2', **fields)
  _, fixed = entry.configs(pgd_run(pgd_preset='pgd_l2', seed=3), 5.)
  assert (fixed.eps, fixed.seed, fixed.search_steps) == (5., 3, 0)
  _, search = entry.configs(pgd_run(pgd_preset='pgd_l2_min'), 5.)
  assert search.eps == pgd.PRESETS['pgd_l2_min'].eps
  assert entry.configs(pgd_run(eps=7., pgd_overrides=dict(steps=3)), 5.)[1] \
      == dataclasses.replace(pgd.PRESETS['pgd_l2_min'], eps=7., steps=3)


def _tiny_checkpoint(tmp_path):
  tf.random.set_seed(0)
  return checkpoints.save_tf2_checkpoint(
      SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / 'tiny'))


def test_kmeans_pgd_without_a_fitted_kmeans_fails_before_attacking(tmp_path):
  _tiny_checkpoint(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(FileNotFoundError, match='run run/evaluate.py'):
    pipeline.attack_checkpoint(
        AttackRun(str(tmp_path), 'PriK', attack='pgd_l2', dataset='mnist',
                  data_dir=str(data_path('mnist')), num_samples=2,
                  out_dir=str(out)), progress=False)
  assert not out.exists()


def test_attack_all_runs_each_on_the_same_samples_and_merges(tmp_path):
  prefix = _tiny_checkpoint(tmp_path)
  KMeansClassifier(np.eye(3, dtype=np.float32), 'cosine', 'posterior',
                   [3, 1, 7]).save(loading.kmeans_path(prefix, 'posterior'))
  out = tmp_path / 'all'
  result = pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PosK', attack='all', dataset='mnist',
                data_dir=str(data_path('mnist')), num_samples=4,
                batch_size=2,
                overrides=dict(outer_iterations=1, inner_iterations=2),
                pgd_overrides=dict(steps=2, search_steps=1),
                out_dir=str(out)), progress=False)
  assert sorted(result['runs']) == ['capsule', 'ddn', 'fmn', 'margin_cw',
                                    'pgd_l2']
  pgd_settings = result['runs']['pgd_l2']['settings']
  assert pgd_settings['attack_name'] == 'pgd_l2'
  assert pgd_settings['attack']['steps'] == 2
  assert 'attack_name' not in result['runs']['capsule']['settings']
  # The paper's attack differentiates the training graph, the adaptive ones
  # the classifier.
  assert {n: r['settings']['gradient'] for n, r in result['runs'].items()
          } == dict(capsule='code', pgd_l2='full', margin_cw='full',
                    ddn='full', fmn='full')
  cw_settings = result['runs']['margin_cw']['settings']
  assert (cw_settings['preset'], cw_settings['attack']['inner_iterations'],
          cw_settings['attack']['use_mask']) == ('margin_cw', 2, False)
  amounts = {}
  for name in ('capsule', 'pgd_l2', 'margin_cw', 'ddn', 'fmn'):
    with np.load(out / name / 'l2.npz') as z:
      amounts[name] = z['perturbation']
      indices = z['indices']
  with np.load(out / 'worst_case.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    np.testing.assert_array_equal(
        z['perturbation'], np.minimum.reduce(list(amounts.values())))
    np.testing.assert_array_equal(z['perturbation_pgd_l2'],
                                  amounts['pgd_l2'])
  assert result['summary']['num_samples'] == 4
  for name in ('pgd_l2', 'margin_cw', 'ddn', 'fmn'):
    assert result['summary'][f'{name}_smaller_than_capsule'] == int(
        np.sum(amounts[name] < amounts['capsule']))
  assert (out / 'accuracy_vs_l2.png').exists()
  with open(out / 'worst_case.json') as f:
    saved = json.load(f)
  assert saved['summary'] == json.loads(json.dumps(result['summary']))
  # The sanity checks: PGD at the canvas's diameter on the same samples,
  # with the run's PGD steps, and the report of attacks.sanity on the files.
  with np.load(out / 'sanity_unbounded' / 'l2.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    unbounded, clean_correct = z['perturbation'], z['clean_correct']
  with open(out / 'sanity_unbounded' / 'settings.json') as f:
    unbounded_settings = json.load(f)
  assert (unbounded_settings['attack']['eps'],
          unbounded_settings['attack']['steps'],
          unbounded_settings['attack_name'],
          unbounded_settings['gradient']) == (40., 2, 'sanity_unbounded',
                                              'full')
  curves = {}
  for name in amounts:
    with open(out / name / 'robust_accuracy.json') as f:
      curves[name] = json.load(f)['accuracy']
  with np.load(out / 'noise_control.npz') as z:
    np.testing.assert_array_equal(z['indices'], indices)
    noise_correct = z['correct']
  assert noise_correct.shape == (4, 2)
  expected = sanity.check(amounts, clean_correct, unbounded, 40., curves,
                          clean_correct, indices, dict(pgd_l2=10.),
                          noise_correct, 4.)
  assert result['sanity'] == expected
  with open(out / 'sanity.json') as f:
    assert json.load(f)['flags'] == expected['flags']
  assert (out / 'sanity.md').read_text() == sanity.markdown(expected)


def test_a_list_of_attacks_runs_those_and_a_single_one_checks_in_place(
    tmp_path):
  _tiny_checkpoint(tmp_path)
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2,
                  overrides=dict(outer_iterations=1, inner_iterations=1),
                  pgd_overrides=dict(steps=1, search_steps=1))
  two = pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='pgd_l2,capsule',
                out_dir=str(tmp_path / 'two'), **settings), progress=False)
  assert sorted(two['runs']) == ['capsule', 'pgd_l2']
  assert sorted(p.name for p in (tmp_path / 'two').iterdir()
                if p.is_dir()) == ['capsule', 'pgd_l2', 'sanity_unbounded']
  one = pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='pgd_l2',
                out_dir=str(tmp_path / 'one'), **settings), progress=False)
  assert (tmp_path / 'one' / 'l2.npz').exists()
  assert (tmp_path / 'one' / 'sanity_unbounded' / 'l2.npz').exists()
  assert one['sanity'] == json.loads(
      (tmp_path / 'one' / 'sanity.json').read_text(),
      object_hook=lambda d: {k: v for k, v in d.items()
                             if k not in ('runs', 'unbounded_run')})
  skipped = pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='pgd_l2', sanity=False,
                gradient='code', out_dir=str(tmp_path / 'skipped'),
                **settings), progress=False)
  assert skipped['sanity'] is None
  assert skipped['settings']['gradient'] == 'code'  # --gradient overrides
  assert not (tmp_path / 'skipped' / 'sanity_unbounded').exists()


def test_overwrite_removes_every_output_of_the_previous_run(tmp_path):
  _tiny_checkpoint(tmp_path)
  out = tmp_path / 'out'
  settings = dict(dataset='mnist', data_dir=str(data_path('mnist')),
                  num_samples=2, batch_size=2, sanity=False, out_dir=str(out),
                  overrides=dict(outer_iterations=1, inner_iterations=1),
                  pgd_overrides=dict(steps=1, search_steps=1))
  pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='pgd_l2', **settings),
      progress=False)
  assert (out / 'settings.json').exists() and (out / 'batches').is_dir()
  (out / 'notes.txt').write_text('mine')
  pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='capsule,pgd_l2',
                overwrite=True, **settings), progress=False)
  # (the folder's lock file, .lock, stays: it is not a result)
  left = sorted(p.name for p in out.iterdir() if p.name != '.lock')
  assert left == ['accuracy_vs_l2.png', 'capsule', 'notes.txt', 'pgd_l2',
                  'worst_case.json', 'worst_case.md', 'worst_case.npz'], left
  # And back: the single run in place again, the two subfolders gone.
  pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='pgd_l2', overwrite=True,
                **settings), progress=False)
  left = sorted(p.name for p in out.iterdir() if p.name != '.lock')
  assert left == ['accuracy_vs_l2.png', 'adversarial.npz', 'batches',
                  'l2.npz', 'notes.txt',
                  'robust_accuracy.json', 'settings.json', 'summary.json',
                  'summary.md'], left


def test_quantized_runs_count_only_what_survives_the_rounding(tmp_path):
  _tiny_checkpoint(tmp_path)
  out = tmp_path / 'q'
  result = pipeline.attack_checkpoint(
      AttackRun(str(tmp_path), 'PriL', attack='pgd_l2', quantize='8bit',
                dataset='mnist', data_dir=str(data_path('mnist')),
                num_samples=4, batch_size=2, sanity=False,
                pgd_overrides=dict(steps=2, search_steps=1),
                out_dir=str(out)), progress=False)
  assert result['settings']['quantize'] == '8bit'
  summary = result['summary']
  with np.load(out / 'l2.npz') as z:
    before, after = z['success_unquantized'], z['success']
    correct = z['clean_correct']
    kept = np.load(out / 'adversarial.npz')['adversarial'][after & correct]
  assert summary['quantized_successes_before'] == int(before[correct].sum())
  assert summary['quantized_successes_after'] == int(after[correct].sum())
  assert not (after & ~before).any()
  # What counts lies on the 8-bit grid.
  np.testing.assert_allclose(kept * 255., np.round(kept * 255.), atol=1e-4)


# --- the settings a run records ----------------------------------------------

#: The runs of tests/golden/attack_settings.json (on the tiny PosK checkpoint).
GOLDEN_RUNS = dict(
    all=dict(classifier='PosK', attack='all', num_samples=4, batch_size=2,
             overrides=dict(outer_iterations=1, inner_iterations=2),
             pgd_overrides=dict(steps=2, search_steps=1)),
    pgd_fixed_quantized=dict(
        classifier='pril', attack='pgd_l2', pgd_preset='pgd_l2', eps=3.,
        quantize='8bit', sanity=False, gradient='code', seed=2,
        split='test', num_samples=2, batch_size=2,
        pgd_overrides=dict(steps=2, restarts=1)),
    shard=dict(classifier='PosK', attack='capsule,margin_cw', shard=(0, 2),
               num_samples=4, batch_size=2, threshold=3., plot_max=5.,
               overrides=dict(outer_iterations=1, inner_iterations=1,
                              use_mask=False),
               pgd_overrides=dict(steps=1)),
    paper_train=dict(classifier='PosL', attack='capsule',
                     preset='paper_train', sanity=False, num_samples=2,
                     batch_size=2,
                     overrides=dict(outer_iterations=1, inner_iterations=1,
                                    optimizer='sign', learning_rate=1.)),
)


@pytest.mark.parametrize('name', sorted(GOLDEN_RUNS))
def test_a_run_records_the_settings_runs_before_it_recorded(tmp_path, name):
  """A run resumes only if the settings it records equal the saved ones
  byte for byte: those of the runs in tests/golden/attack_settings.json,
  written by attack_checkpoint before AttackRun, as check_settings and the
  shard's record write them."""
  with open(REPO / 'tests' / 'golden' / 'attack_settings.json') as f:
    golden = json.load(f)['runs'][name]
  data_dir = os.path.abspath(data_path('mnist'))
  prefix = tiny_posk_checkpoint(tmp_path)
  run = AttackRun(prefix, data_dir=data_dir, out_dir=str(tmp_path / name),
                  **GOLDEN_RUNS[name])
  plan = pipeline.resolve(run)
  folders = pipeline.run_folders(plan.out_dir, plan.attacks, run.sanity)
  for attack, folder in folders.items():
    protocol.check_settings(folder, plan.settings(attack))
  if run.shard is not None:
    files.write_json(os.path.join(plan.out_dir, pipeline.SHARD_FILE),
                     pipeline.shard_record(run), sort_keys=True)
  written = {}
  for path in golden:
    text = (tmp_path / name / path).read_text()
    written[path] = text.replace(str(tmp_path), '<root>').replace(
        data_dir, '<data>')
  assert written == golden
  assert sorted(os.path.relpath(os.path.join(f, 'settings.json'),
                                plan.out_dir) for f in folders.values()
                ) == sorted(p for p in golden if p != 'shard.json')
