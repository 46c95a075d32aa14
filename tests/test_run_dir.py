"""A run's folder (scae_tf.training.run_dir): the guard against mixing runs,
--overwrite, the lock against two runs at once, the log."""

import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import data_path
from conftest import REPO
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import files
from scae_tf import training

TINY = configs.tiny_config()


def test_logdir_guard(tmp_path):
  settings = training.run_settings(TINY, lr=1e-3)
  run = tmp_path / 'r'
  assert not training.prepare_logdir(str(run), settings)
  assert training.prepare_logdir(str(run), settings)  # resume
  (run / 'keep.txt').write_text('x')
  other = training.run_settings(TINY, lr=2e-3)
  with pytest.raises(training.RunMismatchError,
                     match=r'other settings \(lr: 0.001 -> 0.002\)'):
    training.prepare_logdir(str(run), other)
  assert json.loads((run / 'run.json').read_text()) == settings


def test_overwrite_restarts_a_run_and_deletes_only_what_a_run_wrote(tmp_path):
  settings = training.run_settings(TINY, lr=1e-3)
  run = tmp_path / 'r'
  training.prepare_logdir(str(run), settings)
  for name in ('ckpt', 'tb'):
    (run / name).mkdir()
    (run / name / 'f').write_text('x')
  (run / 'log.jsonl').write_text('{"step": 10}\n')
  (run / 'notes.txt').write_text('mine')
  # Same settings: --overwrite restarts rather than resumes.
  assert not training.prepare_logdir(str(run), settings, overwrite=True)
  assert sorted(p.name for p in run.iterdir()) == ['notes.txt', 'run.json']
  other = training.run_settings(TINY, lr=2e-3)
  assert not training.prepare_logdir(str(run), other, overwrite=True)
  assert json.loads((run / 'run.json').read_text()) == other
  assert (run / 'notes.txt').read_text() == 'mine'


def test_a_folder_that_is_no_run_is_refused_unless_empty(tmp_path):
  settings = training.run_settings(TINY, lr=1e-3)
  home = tmp_path / 'home'
  home.mkdir()
  (home / 'thesis.tex').write_text('x')
  (home / 'ckpt').mkdir()
  for overwrite in (False, True):
    with pytest.raises(training.RunMismatchError,
                       match=r'files that no run wrote \(thesis.tex\)'):
      training.prepare_logdir(str(home), settings, overwrite=overwrite)
  assert sorted(p.name for p in home.iterdir()) == ['ckpt', 'thesis.tex']
  # The remains of a run that lost its run.json: deleted on request only.
  (home / 'thesis.tex').unlink()
  with pytest.raises(training.RunMismatchError, match='use --overwrite'):
    training.prepare_logdir(str(home), settings)
  assert not training.prepare_logdir(str(home), settings, overwrite=True)
  assert sorted(p.name for p in home.iterdir()) == ['run.json']
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert not training.prepare_logdir(str(empty), settings)


def test_a_partial_last_log_line_is_dropped_on_resume(tmp_path):
  # What a run killed in the middle of a log write leaves.
  path = tmp_path / 'log.jsonl'
  path.write_text('{"step": 10, "wall_time": 5.0}\n'
                  '{"step": 20, "wall_time": 9.5}\n{"step": 30, "wall_ti')
  assert training.JsonlLog(str(path)).truncate_after(30) == 9.5
  assert path.read_text() == ('{"step": 10, "wall_time": 5.0}\n'
                              '{"step": 20, "wall_time": 9.5}\n')


def test_a_second_lock_names_the_holder_and_follows_its_release(tmp_path):
  lock = training.lock_folder(tmp_path / 'run')
  assert (tmp_path / 'run' / '.lock').read_text() == f'{os.getpid()}\n'
  with pytest.raises(training.FolderInUseError,
                     match=f'in use by another run \\(pid {os.getpid()};'):
    training.lock_folder(tmp_path / 'run')
  lock.release()
  with training.lock_folder(tmp_path / 'run'):
    with pytest.raises(training.FolderInUseError):
      training.lock_folder(tmp_path / 'run')
  training.lock_folder(tmp_path / 'run').release()


def test_the_lock_of_a_killed_holder_is_free(tmp_path):
  # The holder loads the lock's module alone: the training package's
  # __init__ would import TensorFlow (seconds) for a lock that needs none.
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import importlib.util, sys, time\n'
       'spec = importlib.util.spec_from_file_location("run_folder", '
       'sys.argv[2])\n'
       'run_folder = importlib.util.module_from_spec(spec)\n'
       'spec.loader.exec_module(run_folder)\n'
       'lock = run_folder.lock_folder(sys.argv[1])\n'
       'print("locked", flush=True)\n'
       'time.sleep(600)\n', str(tmp_path),
       str(REPO / 'scae_tf' / 'run_folder.py')],
      stdout=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    assert holder.stdout.readline() == 'locked\n'
    with pytest.raises(training.FolderInUseError,
                       match=f'pid {holder.pid};'):
      training.lock_folder(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The lock file stays, with the dead pid in it; the lock does not.
  assert (tmp_path / '.lock').read_text() == f'{holder.pid}\n'
  training.lock_folder(tmp_path).release()


def test_a_second_teacher_on_one_logdir_is_refused_before_any_work(tmp_path):
  data_dir = data_path('mnist').parent
  from scae_tf import teacher  # pylint: disable=g-import-not-at-top
  logdir = tmp_path / 'run'
  with training.lock_folder(logdir):
    with pytest.raises(training.FolderInUseError,
                       match=f'pid {os.getpid()};'):
      teacher.train_teacher(
          'mnist', logdir=str(logdir), data_dir=str(data_dir),
          overrides=teacher.RecipeOverrides(batch_size=8, train_steps=2),
          progress=False, log=lambda msg: None)
  assert sorted(p.name for p in logdir.iterdir()) == ['.lock']


def test_a_second_attack_on_one_out_dir_is_refused(tmp_path):
  data_dir = data_path('mnist').parent
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  from attacks.run_spec import AttackRun  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  tf.random.set_seed(0)
  prefix = checkpoints.save_tf2_checkpoint(
      SCAE(configs.tiny_config(canvas_size=40)), str(tmp_path / 'tiny'))
  out = tmp_path / 'out'
  with training.lock_folder(out):
    with pytest.raises(training.FolderInUseError,
                       match=f'pid {os.getpid()};'):
      pipeline.attack_checkpoint(
          AttackRun(prefix, 'PriL', data_dir=str(data_dir), num_samples=2,
                    batch_size=2, out_dir=str(out),
                    overrides=dict(outer_iterations=1, inner_iterations=1)),
          progress=False)
  assert sorted(p.name for p in out.iterdir()) == ['.lock']


def test_writability_is_checked_before_anything_is_written(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(files.NotWritableError,
                     match=f'cannot write to {tmp_path}/file/run: not a '
                     'folder'):
    files.check_writable(tmp_path / 'file' / 'run')
  with pytest.raises(files.NotWritableError, match='not a folder'):
    training.lock_folder(tmp_path / 'file' / 'run')
  # A missing folder is writable when its nearest existing parent is; the
  # check creates nothing.
  assert files.check_writable(tmp_path / 'a' / 'b') == str(tmp_path / 'a' /
                                                           'b')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['file']



def test_a_folder_of_another_kind_of_run_names_the_differing_keys_only(
    tmp_path):
  """A defence run pointed at a teacher's folder: the settings only one of
  them has are named, not printed (issue 25: one line of 3,000 characters
  with both configs); long values are cut."""
  from scae_tf import recipes  # pylint: disable=g-import-not-at-top
  config = configs.get_config('mnist')
  teacher = training.run_settings(
      config, recipes.get_recipe('cpu'), dataset='mnist', seed=0,
      init_from='../shared/reference/scae_mnist_init/model.ckpt', replicas=1)
  attack = dict(optimizer='sign', learning_rate=1., outer_iterations=5,
                inner_iterations=30, const_init=100., use_mask=True,
                mask_radius=1, mask_times=1, subset='batch',
                capsule_loss='squared', const_coupling='batch',
                success='label', on_failure='clean', seed=0, target='PosL',
                jit_compile=False)
  recipe = recipes.get_recipe('paper').replace(
      noise=False, deviation=None, name='defence',
      description='the defence code: RMSProp lr 3e-5, batch 100, noise off')
  defence = training.run_settings(
      config.without_noise(), recipe, method='hat', init='teacher',
      dataset='mnist', teacher='pretrained/teacher_mnist_cpu', seed=0,
      preset='cpu', phases=[dict(kind='ad', epochs=1, lr_decay=True),
                            dict(kind='at', epochs=1, lr_decay=False)],
      lr_schedule='code', ad_target='posterior', ad_weight=.5,
      clean_batches=1, attack=attack,
      deviations=['the student starts from the teacher\'s weights instead '
                  'of from scratch (paper section 5)'])
  run = tmp_path / 'teacher'
  training.prepare_logdir(str(run), teacher)
  with pytest.raises(training.RunMismatchError) as raised:
    training.prepare_logdir(str(run), defence)
  message = str(raised.value)
  assert len(message) < 700, message
  assert ('only in the new settings: ad_target, ad_weight, attack, '
          'clean_batches, init, lr_schedule, method, phases, teacher') \
      in message
  assert 'only in the old: init_from, replicas' in message
  assert 'recipe.learning_rate: 0.0003 -> 3e-05' in message
  assert "'sign'" not in message and 'PosL' not in message
  # A value too long for the line is cut.
  assert "recipe.description: 'CPU budget: lr 3e-4 decayed 0.96 per... ->" \
      in message
