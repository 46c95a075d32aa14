"""run/reproduce.py: the stage graph of the paper's protocol."""

import json
import os

import numpy as np
import pytest

from conftest import DATA_DIR, data_path
from reproduction import executors
from reproduction import scales
from reproduction import stages


def test_the_paper_scale_is_section_6_2_with_costs_from_the_measured_table():
  plan = stages.plan('mnist', 'paper', '/w')
  by_name = {s.name: s for s in plan}
  assert [s.name for s in plan][:5] == [
      'teacher', 'train/at', 'train/ad', 'train/hat', 'train/ntat']
  assert by_name['report'].needs == tuple(
      s.name for s in plan if s.kind in ('kmeans', 'attack'))
  assert by_name['train/hat'].settings['method'] == 'hat'
  assert 'preset' not in by_name['train/hat'].settings  # the paper's own
  attack = by_name['attack/hat/PosK']
  assert attack.settings['num_samples'] == 5000
  assert attack.settings['checkpoint'] == '/w/models/hat'
  assert attack.needs == ('kmeans/hat',)
  # Paper recipe 300 epochs of 600 steps; AT 100 epochs, HAT 50 + 50.
  costs = scales.COSTS
  assert by_name['teacher'].estimate_s == pytest.approx(
      300 * 600 * costs['teacher'].seconds)
  assert by_name['train/at'].estimate_s == pytest.approx(
      100 * 600 * costs['defence'].seconds)
  assert by_name['train/hat'].estimate_s == by_name['train/at'].estimate_s
  # The five attacks of 'all' and the sanity checks, per sample.
  assert attack.estimate_s == pytest.approx(5000 * sum(
      costs[f'attack_{n}'].seconds for n in (
          'capsule', 'pgd_l2', 'margin_cw', 'ddn', 'fmn', 'sanity')))
  assert scales.SCALES['paper'].deviation is None
  assert scales.SCALES['cpu'].deviation.startswith('the CPU campaign')


def test_select_takes_what_a_stage_needs_and_redo_what_reads_it():
  plan = stages.plan('mnist', 'paper', '/w')
  chosen = [s.name for s in stages.select(plan, ['attack/ad/PriK'])]
  assert chosen == ['teacher', 'train/ad', 'kmeans/ad', 'attack/ad/PriK']
  assert len(stages.select(plan, ['attack/'])) == len(plan) - 1
  with pytest.raises(ValueError, match="Unknown stage 'attack/x'"):
    stages.select(plan, ['attack/x'])
  assert stages.with_dependents(plan, ['kmeans/ad']) == {
      'kmeans/ad', 'attack/ad/PriK', 'attack/ad/PosK', 'report'}


def test_adopting_an_unknown_model_or_a_missing_path_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"--adopt names \['at'\], which the "
                                       r'cpu scale does not train'):
    stages.plan('mnist', 'cpu', str(tmp_path), dict(at=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match='--adopt hat=/nowhere'):
    stages.plan('mnist', 'cpu', str(tmp_path), dict(hat='/nowhere'))


def _tiny_scale(num_samples=2):
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  return scales.Scale(
      'tiny', 'a smoke test', teacher_recipe='paper',
      defences=(('ntat', dict(method='ntat', epochs=1, max_train_steps=2,
                              batch_size=4, attack_overrides=dict(
                                  outer_iterations=1, inner_iterations=2))),),
      num_samples=num_samples, attack='capsule,pgd_l2', classifiers=('PosK',),
      kmeans_examples=40, deviation='a smoke test',
      config=configs.tiny_config(canvas_size=40),
      teacher_overrides=dict(batch_size=8, train_steps=2),
      attack_overrides=dict(
          batch_size=2, sanity=False, data_dir=str(DATA_DIR),
          overrides=dict(outer_iterations=1, inner_iterations=2),
          pgd_overrides=dict(steps=2, search_steps=1)))


def test_the_protocol_runs_then_skips_refuses_and_redoes(tmp_path,
                                                         monkeypatch):
  data_path('mnist')
  monkeypatch.setenv('SCAE_DATA_DIR', str(DATA_DIR))
  workdir = str(tmp_path / 'w')
  plan = stages.plan('mnist', _tiny_scale(), workdir)
  assert [s.name for s in plan] == [
      'teacher', 'train/ntat', 'kmeans/teacher', 'attack/teacher/PosK',
      'kmeans/ntat', 'attack/ntat/PosK', 'report']
  executors.write_plan(workdir, plan, scale='tiny', dataset='mnist',
                       deviation='a smoke test', adopted={}, command='test')
  logs = []
  records = executors.run(plan, workdir, progress=False, log=logs.append)
  assert all(r['status'] == 'done' for r in records.values())
  # The teacher and the student trained 2 steps, the k-means on 40 digits.
  assert os.path.exists(os.path.join(workdir, 'models', 'teacher', 'ckpt',
                                     'ckpt-2.index'))
  assert os.path.exists(os.path.join(workdir, 'models', 'ntat', 'ckpt',
                                     'ckpt-2.index'))
  report = json.load(open(records['kmeans/ntat']['output'] + '.eval.json'))
  assert report['max_examples'] == 40
  # Table 7: the paper's number, ours from the k-means report, the
  # difference; Table 8: the paper's attack, and the worst case.
  table = open(os.path.join(workdir, 'report', 'tables.md')).read()
  assert table.startswith('DEVIATION from the paper: a smoke test')
  # (The train and test splits pooled, as the paper's tables.)
  ours = 100 * report['results']['kmeans']['cosine']['posterior'][
      'train+test']
  assert (f'| PosK | NTAT-SCAE | 96.94 | {ours:.2f} | {ours - 96.94:.2f} |'
          in table)
  worst = json.load(open(os.path.join(workdir, 'attacks', 'ntat_PosK',
                                      'worst_case.json')))['summary']
  assert (f"| PosK | NTAT-SCAE | 51.90 | "
          f"{100 * worst['capsule_accuracy_at_threshold']:.2f} |" in table)
  assert '| PriK | NTAT-SCAE | 42.20 | not run |' in table
  assert os.path.getsize(os.path.join(workdir, 'report',
                                      'accuracy_vs_l2_PosK.png')) > 0
  manifest = json.load(open(os.path.join(workdir, 'report',
                                         'manifest.json')))
  assert manifest['records']['train/ntat']['seconds'] > 0
  assert manifest['versions']['tensorflow']
  # Again: nothing runs.
  logs.clear()
  again = executors.run(plan, workdir, progress=False, log=logs.append)
  assert again == records and not any('running' in m for m in logs)
  # Other settings: refused before any work, naming the key, unless redone
  # (with what reads the stage).
  other = stages.plan('mnist', _tiny_scale(num_samples=3), workdir)
  with pytest.raises(stages.StageMismatchError,
                     match=r'attack/teacher/PosK \(num_samples: 2 -> 3\); '
                           r'attack/ntat/PosK \(num_samples: 2 -> 3\)'):
    executors.run(other, workdir, progress=False, log=logs.append)
  assert not any('running' in m for m in logs)
  logs.clear()
  chosen = stages.select(other, ['attack/teacher/PosK'])
  result = executors.run(chosen, workdir, redo=['attack/teacher/PosK'],
                         progress=False, log=logs.append)
  assert [m.split(':')[0] for m in logs if m.startswith('stage ')] == [
      'stage attack/teacher/PosK']
  with np.load(os.path.join(workdir, 'attacks', 'teacher_PosK',
                            'worst_case.npz')) as z:
    assert len(z['perturbation']) == 3
  assert result['teacher']['status'] == 'done'


def _adopted_tiny_plan(tmp_path, workdir, num_samples=2, shards=1):
  """A tiny teacher adopted, its k-means on 40 digits, PosK attacked on
  `num_samples` (batches of 2, split into `shards`): a plan of cheap
  stages."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  scale = _tiny_scale(num_samples)
  tf.random.set_seed(3)
  teacher = str(tmp_path / 'teacher' / 'model')
  if not os.path.exists(teacher + '.index'):
    checkpoints.save_tf2_checkpoint(SCAE(scale.config.without_noise()),
                                    teacher)
  import dataclasses  # pylint: disable=g-import-not-at-top
  scale = dataclasses.replace(scale, defences=())
  plan = stages.plan('mnist', scale, workdir, dict(teacher=teacher),
                     shards=shards)
  executors.write_plan(workdir, plan, scale='tiny', dataset='mnist',
                       deviation='a smoke test', adopted={}, command='test')
  return plan


# Sharded, each shard of the attack is a Ray task of its own and a merge
# stage joins them: the files must still be the local unsharded run's.
# Unsharded Ray (the same stages as local, as Ray tasks) adds a minute and
# nothing the sharded run does not exercise, so it runs with the slow ones.
@pytest.mark.parametrize('shards', [
    2, pytest.param(1, marks=pytest.mark.slow)])
def test_the_ray_executor_gives_the_local_executors_outputs(tmp_path,
                                                            monkeypatch,
                                                            shards):
  ray = pytest.importorskip(
      'ray', reason='Ray is optional (pip install -e .[ray]); .ci/run '
      'installs it')
  data_path('mnist')
  monkeypatch.setenv('SCAE_DATA_DIR', str(DATA_DIR))
  results = {}
  for executor in ('local', 'ray'):
    workdir = str(tmp_path / executor)
    plan = _adopted_tiny_plan(tmp_path, workdir, num_samples=4,
                              shards=shards if executor == 'ray' else 1)
    if executor == 'ray':
      ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
      records = executors.run(plan, workdir, executor, progress=False,
                              log=lambda msg: None)
    finally:
      if executor == 'ray':
        ray.shutdown()
    assert [r['status'] for r in records.values()] == [
        'adopted'] + ['done'] * (len(plan) - 1)
    assert len(plan) == 4 + (shards if executor == 'ray' and shards > 1
                             else 0)
    with np.load(os.path.join(workdir, 'attacks', 'teacher_PosK',
                              'worst_case.npz')) as z:
      results[executor] = dict(z)
    results[executor]['kmeans'] = json.load(open(
        records['kmeans/teacher']['output'] + '.eval.json'))['results']
    results[executor]['tables'] = open(
        os.path.join(workdir, 'report', 'tables.md')).read()
  local, remote = results['local'], results['ray']
  assert sorted(local) == sorted(remote)
  for key in local:
    if isinstance(local[key], np.ndarray):
      np.testing.assert_array_equal(local[key], remote[key], err_msg=key)
    else:
      assert local[key] == remote[key], key


def test_a_stage_that_dies_leaves_no_record_and_the_rerun_starts_there(
    tmp_path, monkeypatch):
  """With stand-in runners: a stage killed part-way (here: raising) leaves
  the records of the stages before it, none of its own, and the same
  command then runs it and what follows only."""
  workdir = str(tmp_path)
  plan = stages.plan('mnist', 'paper', workdir)
  ran, killed = [], []

  def runner(stage, workdir, redo, progress, log):
    ran.append(stage.name)
    if stage.name == 'kmeans/ad' and not killed:
      killed.append(stage.name)
      raise RuntimeError('killed')
    return stage.output

  monkeypatch.setattr(stages, '_RUNNERS', {k: runner for k in stages.KINDS})
  with pytest.raises(RuntimeError, match='killed'):
    executors.run(plan, workdir, log=lambda msg: None)
  first = list(ran)
  assert first[-1] == 'kmeans/ad'
  assert stages.read_record(workdir, 'kmeans/ad') is None
  assert all(stages.read_record(workdir, n) for n in first[:-1])
  ran.clear()
  executors.run(plan, workdir, log=lambda msg: None)
  names = [s.name for s in plan]
  assert ran == names[names.index('kmeans/ad'):]
  # --redo of a training stage reruns what reads it, and only that.
  ran.clear()
  executors.run(plan, workdir, redo=['train/hat'], log=lambda msg: None)
  assert ran == ['train/hat', 'kmeans/hat', 'attack/hat/PriK',
                 'attack/hat/PosK', 'report']
