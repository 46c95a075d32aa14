"""Every run's folder (scae_tf.run_folder): the identity check that names
only what differs, the lock, --overwrite of a training run's and an
attack's outputs, and the newest checkpoint that reads back."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from scae_tf import run_folder


def test_a_mismatch_names_only_the_differing_keys_on_one_line(tmp_path):
  saved = dict(dataset='mnist', seed=0, recipe=dict(lr=1e-3, batch=100),
               attack=dict(steps=10, target='PosL' * 30), length=5)
  run_folder.write_identity(tmp_path, 'id.json', saved)
  # What was written is the settings, keys sorted, indent 1.
  assert (tmp_path / 'id.json').read_text() == json.dumps(
      saved, indent=1, sort_keys=True)
  assert run_folder.check_identity(tmp_path, 'id.json', saved) == saved
  assert run_folder.check_identity(tmp_path, 'other.json', saved) is None
  now = dict(saved, seed=1, recipe=dict(lr=2e-3, batch=100), length=6,
             init='teacher')
  del now['attack']
  with pytest.raises(run_folder.IdentityMismatchError) as raised:
    run_folder.check_identity(tmp_path, 'id.json', now, advice='; go away.')
  message = str(raised.value)
  assert message == (
      f'{tmp_path} holds a run with other settings (length: 5 -> 6; '
      'recipe.lr: 0.001 -> 0.002; seed: 0 -> 1; only in the new settings: '
      'init; only in the old: attack); go away.')
  # What a resumed run may change is left out of the comparison; the
  # error is the caller's.

  class Mine(run_folder.IdentityMismatchError):
    pass

  def compared(settings):
    return {k: v for k, v in settings.items() if k != 'length'}

  assert run_folder.check_identity(
      tmp_path, 'id.json', dict(saved, length=7), compared=compared) == saved
  with pytest.raises(Mine, match=r'other settings \(seed: 0 -> 1\)$'):
    run_folder.check_identity(tmp_path, 'id.json', dict(saved, seed=1),
                              compared=compared, error=Mine)
  # Nothing was written by the checks.
  assert sorted(os.listdir(tmp_path)) == ['id.json']


def test_the_lock_refuses_a_second_holder_until_released(tmp_path):
  folder = tmp_path / 'a' / 'run'
  with run_folder.lock_folder(folder):
    assert (folder / '.lock').read_text() == f'{os.getpid()}\n'
    with pytest.raises(run_folder.FolderInUseError,
                       match=f'in use by another run \\(pid {os.getpid()};'):
      run_folder.lock_folder(folder)
  run_folder.lock_folder(folder).release()


def test_another_process_is_refused_the_lock_and_needs_no_tensorflow(
    tmp_path):
  holder = run_folder.lock_folder(tmp_path)
  try:
    done = subprocess.run(
        [sys.executable, '-c',
         'import sys\n'
         'from scae_tf import run_folder\n'
         'try:\n'
         '  run_folder.lock_folder(sys.argv[1])\n'
         'except run_folder.FolderInUseError as e:\n'
         '  print(e)\n'
         "print('tensorflow' in sys.modules)\n", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
  finally:
    holder.release()
  refused, tensorflow = done.stdout.splitlines()
  assert f'(pid {os.getpid()};' in refused
  assert tensorflow == 'False'


def _touch(folder, *names):
  for name in names:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('x')


def test_overwrite_removes_a_training_runs_outputs_and_nothing_else(
    tmp_path):
  from scae_tf.training import run_dir  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  _touch(run, 'run.json', 'log.jsonl', 'ckpt/ckpt-10.index',
         'ckpt/ckpt-10.data-00000-of-00001', 'ckpt/checkpoint',
         'tb/events.out', 'log.jsonl.0123456789ab.tmp',
         'run.json.ba9876543210.tmp', 'notes.txt', 'notes.0123456789ab.tmp')
  with run_folder.lock_folder(run):
    assert run_folder.foreign_entries(run, run_dir.LAYOUT) == [
        'notes.0123456789ab.tmp', 'notes.txt']
    run_folder.remove_outputs(run, run_dir.LAYOUT)
    assert sorted(os.listdir(run)) == ['.lock', 'notes.0123456789ab.tmp',
                                       'notes.txt']


def test_overwrite_removes_an_attacks_outputs_and_nothing_else(tmp_path):
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  from attacks import protocol  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  _touch(out, 'settings.json', 'l2.npz', 'summary.md', 'accuracy_vs_l2.png',
         'worst_case.json', 'sanity.md', 'batches/batch_00000.npz',
         'batches/batch_00001.npz', 'batches/batch_00002.npz.0123456789ab.tmp',
         'summary.json.0123456789ab.tmp', 'batches/notes.txt', 'notes.txt',
         'capsule/settings.json')
  # The protocol's own layout keeps the identity, for the caller to
  # replace, and the reports of the pipeline.
  run_folder.remove_outputs(out, protocol.LAYOUT, keep_identity=True)
  assert sorted(os.listdir(out)) == ['batches', 'capsule', 'notes.txt',
                                     'sanity.md', 'settings.json',
                                     'worst_case.json']
  assert os.listdir(out / 'batches') == ['notes.txt']
  run_folder.remove_outputs(out, pipeline.RUN_LAYOUT)
  assert sorted(os.listdir(out)) == ['batches', 'capsule', 'notes.txt']
  assert os.listdir(out / 'capsule') == ['settings.json']  # another folder


def test_the_newest_readable_checkpoint_skips_a_damaged_newer_one(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'ckpt'
  variable = tf.Variable(tf.range(1000, dtype=tf.float32))
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(v=variable), str(folder), max_to_keep=5,
      checkpoint_name=run_folder.CHECKPOINT_NAME)
  for step in (10, 20, 30, 40):
    manager.save(checkpoint_number=step)
  # 40: truncated data; 30: garbled index; 20 reads back whole.
  data_40, = folder.glob('ckpt-40.data-*')
  data_40.write_bytes(data_40.read_bytes()[:100])
  (folder / 'ckpt-30.index').write_bytes(b'not an index')
  # A save killed before its index: no checkpoint at all.
  (folder / 'ckpt-50.data-00000-of-00001').write_bytes(b'half')
  assert sorted(run_folder.checkpoint_files(folder)) == [10, 20, 30, 40]
  assert run_folder.newest_checkpoint_step(tmp_path) == 40
  warnings = []
  readable = run_folder.readable_checkpoints(folder, log=warnings.append)
  assert next(readable) == str(folder / 'ckpt-20')
  assert [w.split(': ')[1] for w in warnings] == [
      f'skipping checkpoint {folder / "ckpt-40"}',
      f'skipping checkpoint {folder / "ckpt-30"}']
  assert 'not a readable checkpoint file' in warnings[0]
  assert list(readable) == [str(folder / 'ckpt-10')]
  # A manager's spelling of a path wins over the listing's.
  listed = ['./elsewhere/ckpt-20', 'ckpt-x']
  assert run_folder.checkpoints_newest_first(folder, listed) == [
      str(folder / 'ckpt-40'), str(folder / 'ckpt-30'),
      './elsewhere/ckpt-20', str(folder / 'ckpt-10')]
  assert run_folder.checkpoints_newest_first(tmp_path / 'none') == []
  assert run_folder.newest_checkpoint_step(tmp_path / 'none') == 0
