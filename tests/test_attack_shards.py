"""An attack split by sample into shards, and their merge: the files of the
unsharded run (`attacks.pipeline.merge_shards`, `run/attack.py --shards
--shard --merge`, `run/reproduce.py --shards`)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest

from attacks import ddn, evasion, foolbox_attacks, margin_cw, pgd, pipeline
from attacks import protocol
from attacks.run_spec import AttackRun
from conftest import DATA_DIR
from conftest import data_path
from conftest import REPO
from helpers.attack_files import assert_same_outputs
from helpers.attack_files import outputs
from helpers.attack_files import tiny_posk_checkpoint
from reproduction import executors
from reproduction import scales
from reproduction import stages
from test_early_flag_checks import ENV
from test_early_flag_checks import PROBE
from test_reproduction import _tiny_scale

# 6 samples, 2 a batch: shard 0 of 2 attacks batches 0 and 2, shard 1 batch 1.
SETTINGS = dict(dataset='mnist', num_samples=6, batch_size=2,
                overrides=dict(outer_iterations=1, inner_iterations=2),
                pgd_overrides=dict(steps=1, search_steps=1))


class SeededAttack:
  """Stands for every attack class: its result follows from the images,
  the batch's seed and the attack's settings, as a real attack's does, in
  a millisecond instead of seconds of tracing per attack and run."""

  def __init__(self, target, config):
    del target
    self.salt = zlib.crc32(repr(config).encode())

  def __call__(self, images, labels, seed=None, callback=None):
    del callback
    rng = np.random.default_rng([seed, self.salt])
    n = len(images)
    success = rng.random(n) < .7
    adversarial = np.clip(images + rng.normal(size=images.shape) * .05, 0., 1.
                          ).astype(np.float32)
    l2 = np.sqrt(np.sum((adversarial - images) ** 2, axis=(1, 2, 3)))
    return types.SimpleNamespace(
        adversarial=adversarial, success=success, l2=l2.astype(np.float32),
        clean_pred=(labels + (rng.random(n) < .25)) % 10)


ATTACK_CLASSES = ((evasion, 'CapsuleAttack'), (pgd, 'PGDAttack'),
                  (margin_cw, 'MarginCWAttack'), (ddn, 'DDNAttack'),
                  (foolbox_attacks, 'FoolboxAttack'))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  data_path('mnist')
  return tiny_posk_checkpoint(tmp_path_factory.mktemp('model'))


def _whole_and_shards(checkpoint, root, **settings):
  """The unsharded run in root/whole, its 2 shards in root/shard<i>."""
  pipeline.attack_checkpoint(
      AttackRun(checkpoint, 'PosK', out_dir=str(root / 'whole'), **SETTINGS,
                **settings), progress=False)
  return [pipeline.attack_checkpoint(AttackRun(
      checkpoint, 'PosK', out_dir=str(root / f'shard{i}'), shard=(i, 2),
      **SETTINGS, **settings), progress=False) for i in range(2)]


def _with_stand_ins(checkpoint, root, **settings):
  """`_whole_and_shards` with stand-ins for the attacks (the real ones:
  below, on the paper's)."""
  with pytest.MonkeyPatch.context() as patch:
    for module, name in ATTACK_CLASSES:
      patch.setattr(module, name, SeededAttack)
    return root, _whole_and_shards(checkpoint, root, **settings)


@pytest.fixture(scope='module')
def all_attacks(checkpoint, tmp_path_factory):
  """--attack=all with the sanity checks: every attack in its folder."""
  return _with_stand_ins(checkpoint, tmp_path_factory.mktemp('all'),
                         attack='all')


@pytest.fixture(scope='module')
def one_attack(checkpoint, tmp_path_factory):
  """One attack, in out_dir itself."""
  return _with_stand_ins(checkpoint, tmp_path_factory.mktemp('one'),
                         attack='pgd_l2', sanity=False)


def test_shards_attack_their_batches_and_record_the_shard(all_attacks,
                                                          checkpoint):
  root, shards = all_attacks
  assert [s['batches'] for s in shards] == [[0, 2], [1]]
  assert [s['summary'] for s in shards] == [None, None]
  for i, batches in enumerate(([0, 2], [1])):
    for name in pipeline.SINGLE_ATTACKS + (pipeline.UNBOUNDED,):
      folder = root / f'shard{i}' / name
      assert protocol.batch_numbers(str(folder)) == batches
      settings = json.loads((folder / 'settings.json').read_text())
      assert settings['shard'] == dict(index=i, count=2)
      assert not (folder / 'l2.npz').exists()
    record = json.loads((root / f'shard{i}' / 'shard.json').read_text())
    assert (record['index'], record['count']) == (i, 2)
    assert record['arguments']['attack'] == 'all'
    assert record['arguments']['checkpoint'] == checkpoint
  assert sorted(os.listdir(root / 'shard0')) == sorted(
      pipeline.SINGLE_ATTACKS + (pipeline.UNBOUNDED, 'shard.json', '.lock'))


@pytest.mark.parametrize('run,files', [
    ('all_attacks', {'worst_case.npz', 'sanity.json', 'noise_control.npz',
                     'fmn/l2.npz', 'sanity_unbounded/summary.json'}),
    ('one_attack', {'l2.npz', 'summary.json', 'accuracy_vs_l2.png'})])
def test_two_shards_merge_to_the_files_of_one_run(request, tmp_path, run,
                                                  files):
  root, _ = request.getfixturevalue(run)
  merged = tmp_path / 'merged'
  result = pipeline.merge_shards([str(root / 'shard1'), str(root / 'shard0')],
                                 str(merged), progress=False)
  whole = outputs(root / 'whole')
  # Every attack's folder, the worst case, the sanity checks and the noise
  # control: the same bytes (the arrays of the .npz files equal).
  assert files < set(whole)
  assert_same_outputs(merged, whole)
  assert result['summary'] == json.loads(
      (root / 'whole' / ('worst_case.json' if run == 'all_attacks'
                         else 'summary.json')).read_text())['summary']


# 35 s on the 2 busy cores, three traces of the attack; a shard is a run
# resumed with some of its batches missing, and the resumed runs of the
# real attacks end bit-identical in the default suite (tests/test_pipeline.py).
@pytest.mark.slow
def test_the_papers_attack_in_two_shards_merges_to_its_unsharded_run(
    checkpoint, tmp_path):
  """The real attack, one run in out_dir (without the sanity checks: the
  layout of their folder is the test above's)."""
  _whole_and_shards(checkpoint, tmp_path, attack='capsule', sanity=False)
  pipeline.merge_shards([str(tmp_path / 'shard0'), str(tmp_path / 'shard1')],
                        str(tmp_path / 'merged'), progress=False)
  assert_same_outputs(tmp_path / 'merged', outputs(tmp_path / 'whole'))


def _edit_json(path, change):
  with open(path) as f:
    content = json.load(f)
  change(content)
  with open(path, 'w') as f:
    json.dump(content, f)


def test_merges_of_other_or_incomplete_shards_are_refused_writing_nothing(
    all_attacks, checkpoint, tmp_path):
  root, _ = all_attacks
  shard0, shard1 = (str(shutil.copytree(root / f'shard{i}',
                                        tmp_path / f'shard{i}'))
                    for i in range(2))
  other = str(shutil.copytree(root / 'shard1', tmp_path / 'other'))
  _edit_json(os.path.join(other, 'shard.json'),
             lambda r: r['arguments'].update(num_samples=8, seed=1))
  of_three = str(shutil.copytree(root / 'shard1', tmp_path / 'of_three'))
  _edit_json(os.path.join(of_three, 'shard.json'),
             lambda r: r.update(count=3))
  lacking = str(shutil.copytree(root / 'shard1', tmp_path / 'lacking'))
  os.remove(protocol.batch_path(os.path.join(lacking, 'pgd_l2'), 1))
  out = tmp_path / 'merged'
  for dirs, message in [
      ([shard0], 'shard 1 of 2 missing: the merge needs all 2 shards.'),
      ([shard0, shard0], f'shard 0 of 2 given twice: {shard0} and {shard0}.'),
      ([shard0, other], f'{other} and {shard0} are shards of different runs '
                        '(arguments.num_samples: 6 -> 8; arguments.seed: 0 '
                        '-> 1).'),
      ([shard0, of_three], f'{of_three} and {shard0} are shards of different '
                           'runs (count: 2 -> 3).'),
      ([shard0, lacking], f'{lacking}/pgd_l2: shard 1 of 2 lacks batches [1]; '
                          'run the shard to its end before merging.'),
      ([shard0, str(root / 'whole')], f'{root / "whole"} holds no shard of '
                                      'an attack (shard.json not found'),
  ]:
    with pytest.raises(pipeline.ShardMismatchError) as refused:
      pipeline.merge_shards(dirs, str(out), progress=False)
    assert str(refused.value).startswith(message)
    assert not out.exists()
  with pytest.raises(pipeline.ShardMismatchError,
                     match='the merge writes into .*shard0, a shard'):
    pipeline.merge_shards([shard0, shard1], shard0, progress=False)
  # A shard's folder is its own.
  with pytest.raises(protocol.SettingsMismatchError,
                     match=r'shard0 holds a run with other settings \(index: '
                           r'0 -> 1\)'):
    pipeline.attack_checkpoint(
        AttackRun(checkpoint, 'PosK', out_dir=shard0, shard=(1, 2),
                  attack='all', **SETTINGS), progress=False)
  # A folder holding another run keeps it.
  shutil.copytree(root / 'whole', out)
  _edit_json(out / 'ddn' / 'settings.json', lambda s: s.update(seed=1))
  before = outputs(out)
  with pytest.raises(protocol.SettingsMismatchError,
                     match=r'merged/ddn holds a run with other settings '
                           r'\(seed: 1 -> 0\); use another --out_dir or '
                           r'--overwrite\.'):
    pipeline.merge_shards([shard0, shard1], str(out), progress=False)
  assert_same_outputs(out, before)


ATTACK = '--checkpoint={tmp}/no_model '


@pytest.mark.parametrize('flags,message', [
    (ATTACK + '--shards=2 --shard=2',
     'shard must be 0 to 1 (one of shards=2), got 2.'),
    (ATTACK + '--shards=0 --shard=0', 'shards must be positive, got 0.'),
    (ATTACK + '--shards=2', '--shards=2 needs --shard, the shard this '
                            'process attacks (0 to 1).'),
    (ATTACK + '--shards=4 --shard=0 --num_samples=6 --batch_size=2',
     'shards=4 exceeds the 3 batches of the run (6 samples, 2 a batch): a '
     'shard would attack none.'),
    (ATTACK + '--merge={shard0} --num_samples=6',
     "--merge takes the run's settings from the shards: drop --checkpoint, "
     '--num_samples.'),
    ('--merge={shard0}', 'shard 1 of 2 missing: the merge needs all 2 '
                         'shards.'),
])
def test_the_script_refuses_bad_shards_with_one_line_before_tensorflow(
    all_attacks, tmp_path, flags, message):
  root, _ = all_attacks
  argv = (f'--out_dir={tmp_path}/out ' + flags.format(
      tmp=tmp_path, shard0=root / 'shard0')).split()
  # The early flag checks' runner (tests/helpers/forked_scripts.py): the
  # script in a child that reports whether it imported TensorFlow.
  request = [os.path.join(REPO, 'run', 'attack.py'), argv, str(tmp_path)]
  done = subprocess.run(
      [sys.executable, '-c', PROBE], input=json.dumps(request) + '\n',
      env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120,
      check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  ready, (status, _, stderr, tf_imported) = map(json.loads,
                                               done.stdout.splitlines())
  assert ready == 'ready'
  assert status == 1, stderr[-2000:]
  said = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert said == [f'error: {message}'], stderr[-2000:]
  assert 'Traceback' not in stderr
  assert tf_imported is False
  assert not (tmp_path / 'out').exists()


# --- run/reproduce.py --shards ----------------------------------------------

def test_a_sharded_plan_has_the_shard_stages_and_their_merge():
  plan = stages.plan('mnist', 'cpu', '/w', shards=2)
  by_name = {s.name: s for s in plan}
  names = [s.name for s in plan]
  whole = by_name['attack/hat/PosK']
  start = names.index('kmeans/hat')
  assert names[start:start + 7] == [
      'kmeans/hat', 'attack/hat/PriK/shard0of2', 'attack/hat/PriK/shard1of2',
      'attack/hat/PriK', 'attack/hat/PosK/shard0of2',
      'attack/hat/PosK/shard1of2', 'attack/hat/PosK']
  unsharded = {s.name: s for s in stages.plan('mnist', 'cpu', '/w')}
  # The merge has the unsharded stage's name, folder and settings.
  assert (whole.kind, whole.needs) == ('attack_merge', (
      'attack/hat/PosK/shard0of2', 'attack/hat/PosK/shard1of2'))
  assert (whole.output, whole.settings) == (
      unsharded['attack/hat/PosK'].output,
      unsharded['attack/hat/PosK'].settings)
  shard = by_name['attack/hat/PosK/shard1of2']
  assert (shard.kind, shard.needs, shard.part_of) == (
      'attack_shard', ('kmeans/hat',), 'attack/hat/PosK')
  assert shard.settings == dict(whole.settings, shard=1, shards=2)
  assert shard.output == '/w/attacks/shards/hat_PosK/1of2'
  assert 'attack/hat/PosK' in by_name['report'].needs
  assert not any('shard' in n for n in by_name['report'].needs)
  # 200 samples in batches of 100: one each, half the unsharded stage's
  # time (every attack of 'all' is timed since the campaign's first
  # attack, 0f06fe5); the merge only copies.
  assert shard.estimate_s == unsharded['attack/hat/PosK'].estimate_s / 2
  assert whole.estimate_s == 0.
  with pytest.raises(ValueError, match='shards=3 exceeds the 2 batches'):
    stages.plan('mnist', 'cpu', '/w', shards=3)
  assert [s.name for s in stages.select(plan, ['attack/ad/PriK'])] == [
      'teacher', 'train/ad', 'kmeans/ad', 'attack/ad/PriK/shard0of2',
      'attack/ad/PriK/shard1of2', 'attack/ad/PriK']
  assert stages.redone(plan, ['attack/ad/PriK']) == {
      'attack/ad/PriK/shard0of2', 'attack/ad/PriK/shard1of2',
      'attack/ad/PriK', 'report'}


def test_shards_run_before_their_merge_and_plans_take_each_others_attacks(
    tmp_path, monkeypatch):
  """With stand-in runners: the stage graph's skip, refusal and redo for
  the shard and merge stages."""
  workdir = str(tmp_path)
  # 200 samples in batches of 40: 5 batches, for 2 or 3 shards.
  scale = dataclasses.replace(scales.get_scale('cpu'),
                              attack_overrides=dict(batch_size=40))
  ran = []

  def runner(stage, workdir, redo, progress, log):
    ran.append(stage.name)
    return stage.output

  monkeypatch.setattr(stages, '_RUNNERS', {k: runner for k in stages.KINDS})
  plan = lambda shards=1, scale=scale: stages.select(
      stages.plan('mnist', scale, workdir, shards=shards), ['attack/ad/PosK'])
  sharded = plan(2)
  run = lambda plan, **kw: executors.run(plan, workdir, log=lambda m: None,
                                         **kw)
  records = run(sharded)
  assert ran == ['teacher', 'train/ad', 'kmeans/ad', 'attack/ad/PosK/shard0of2',
                 'attack/ad/PosK/shard1of2', 'attack/ad/PosK']
  assert records['attack/ad/PosK']['kind'] == 'attack_merge'
  ran.clear()
  run(sharded)
  run(plan())
  assert ran == []  # the merged attack is the unsharded one's
  # Once the attack is done, however it was, shards have nothing to do.
  in_three = plan(3)
  assert executors.describe(in_three, workdir).splitlines()[3].split()[:2] \
      == ['attack/ad/PosK/shard0of3', 'merged']
  assert run(in_three)['attack/ad/PosK/shard2of3']['status'] == 'merged'
  assert ran == []
  # Redoing the attack attacks again, in shards; redoing a shard merges
  # again.
  run(sharded, redo=['attack/ad/PosK'])
  assert ran == ['attack/ad/PosK/shard0of2', 'attack/ad/PosK/shard1of2',
                 'attack/ad/PosK']
  ran.clear()
  run(sharded, redo=['attack/ad/PosK/shard1of2'])
  assert ran == ['attack/ad/PosK/shard1of2', 'attack/ad/PosK']
  # A shard finished with other settings is refused, naming them.
  ran.clear()
  with pytest.raises(stages.StageMismatchError,
                     match=r'attack/ad/PosK/shard0of2 \(num_samples: 200 -> '
                           r'300\); attack/ad/PosK/shard1of2 \(num_samples: '
                           r'200 -> 300\); attack/ad/PosK \(num_samples'):
    run(plan(2, dataclasses.replace(scale, num_samples=300)))
  assert ran == []


def test_a_sharded_protocol_ends_with_the_unsharded_ones_attack_files(
    checkpoint, tmp_path, monkeypatch):
  """The stage runners: an adopted tiny teacher, its k-means, its PosK
  attack in 2 shards and their merge; then the unsharded plan takes the
  attack as done, and redone gives the same files."""
  for module, name in ATTACK_CLASSES:
    monkeypatch.setattr(module, name, SeededAttack)
  monkeypatch.setenv('SCAE_DATA_DIR', str(DATA_DIR))
  scale = dataclasses.replace(_tiny_scale(num_samples=4), defences=())
  workdir = str(tmp_path / 'w')
  sharded = stages.plan('mnist', scale, workdir, dict(teacher=checkpoint),
                        shards=2)
  executors.write_plan(workdir, sharded, scale='tiny', dataset='mnist',
                       deviation='a smoke test', adopted={}, command='test')
  records = executors.run(sharded, workdir, progress=False,
                          log=lambda msg: None)
  assert [r['status'] for r in records.values()] == ['adopted'] + [
      'done'] * 5
  attack = os.path.join(workdir, 'attacks', 'teacher_PosK')
  assert protocol.batch_numbers(os.path.join(
      workdir, 'attacks', 'shards', 'teacher_PosK', '1of2', 'pgd_l2')) == [1]
  merged = outputs(attack)
  assert 'worst_case.npz' in merged
  unsharded = stages.plan('mnist', scale, workdir, dict(teacher=checkpoint))
  logs = []
  executors.run(unsharded, workdir, progress=False, log=logs.append)
  assert not any(m.startswith('stage ') for m in logs)
  executors.run(unsharded, workdir, redo=['attack/teacher/PosK'],
                progress=False, log=logs.append)
  assert [m.split(':')[0] for m in logs if m.startswith('stage ')] == [
      'stage attack/teacher/PosK', 'stage report']
  assert_same_outputs(attack, merged)
