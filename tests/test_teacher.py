"""scae_tf.teacher and run/train_teacher.py when something is wrong: bad
numbers, Ctrl-C, a damaged checkpoint, a folder it cannot write."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import DATA_DIR
from conftest import data_path
from conftest import REPO
from conftest import unprivileged
from scae_tf import cli
from scae_tf import teacher

SCRIPT = str(REPO / 'run' / 'train_teacher.py')


def _errors(stderr):
  """The lines a script printed itself, without TensorFlow's start-up log."""
  return [line for line in stderr.splitlines()
          if line.startswith(('error:', 'interrupted', 'Traceback'))]


@pytest.mark.parametrize('arguments, message', [
    (dict(save_every=0), 'save_every must be positive, got 0.'),
    (dict(batch_size=0), 'batch_size must be positive, got 0.'),
    (dict(learning_rate=0.), 'learning_rate must be positive, got 0.0.'),
    (dict(learning_rate=-1.), 'learning_rate must be positive, got -1.0.'),
    (dict(epochs=-1), 'epochs must be positive, got -1.'),
    (dict(train_steps=0), 'train_steps must be positive, got 0.'),
    (dict(epochs=3, train_steps=5),
     'give epochs (3) or max_train_steps (5), not both.'),
    (dict(seed=-1), 'seed must be in [0, 2**32), got -1.'),
    (dict(init_from='missing'), 'missing.index does not exist'),
])
def test_bad_numbers_are_refused_before_the_logdir_is_touched(
    tmp_path, arguments, message):
  data_path('mnist')
  call = dict(logdir=str(tmp_path / 'run'), data_dir=str(DATA_DIR),
              progress=False)
  for name in ('save_every', 'seed', 'init_from'):
    if name in arguments:
      call[name] = arguments.pop(name)
  if 'init_from' in call:
    call['init_from'] = str(tmp_path / call['init_from'])
  with pytest.raises(ValueError if 'init_from' not in call
                     else FileNotFoundError) as err:
    teacher.train_teacher(
        'mnist', overrides=teacher.RecipeOverrides(**arguments), **call)
  assert message in str(err.value)
  assert not (tmp_path / 'run').exists()


def _teacher(logdir, *flags):
  return [sys.executable, SCRIPT, f'--logdir={logdir}',
          f'--data_dir={DATA_DIR}', '--progress=false', *flags]


def test_the_script_refuses_a_zero_batch_in_one_line(tmp_path):
  data_path('mnist')
  proc = subprocess.run(_teacher(tmp_path / 'run', '--batch_size=0'),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert _errors(proc.stderr) == ['error: batch_size must be positive, got 0.']
  assert not (tmp_path / 'run').exists()


def test_ctrl_c_saves_the_step_and_says_so_in_one_line(tmp_path):
  data_path('mnist')
  logdir = tmp_path / 'run'
  # A shell's background job (`pytest &`, nohup, some CI runners) ignores
  # SIGINT, and Python then installs no KeyboardInterrupt handler: give the
  # script the disposition of a terminal's foreground process.
  proc = subprocess.Popen(
      _teacher(logdir, '--batch_size=8', '--max_train_steps=1000',
               '--save_every=5'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 300
  while (not tf.train.latest_checkpoint(str(logdir / 'ckpt'))
         and time.time() < deadline):
    time.sleep(.02)
  time.sleep(.5)  # into the steps after the checkpoint
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130, stderr[-2000:]
  latest = tf.train.latest_checkpoint(str(logdir / 'ckpt'))
  step = int(latest.rsplit('-', 1)[1])
  assert 5 <= step < 1000
  assert _errors(stderr) == [
      f'interrupted: at step {step}, saved in {latest}.']
  # The command that resumes, as given but for --overwrite.
  assert stderr.splitlines()[-1] == 'resume with: ' + ' '.join(
      [cli.resume_command(['x'])[:-len(' x')], SCRIPT] + _teacher(
          logdir, '--batch_size=8', '--max_train_steps=1000',
          '--save_every=5')[2:])
  assert 'starting at step 0' in stdout.splitlines()


def test_a_logdir_it_cannot_write_is_one_line_before_any_work(tmp_path):
  data_path('mnist')
  parent = tmp_path / 'read_only'
  parent.mkdir()
  parent.chmod(0o555)
  try:
    proc = subprocess.run(
        unprivileged(_teacher(parent / 'run', '--batch_size=8')),
        capture_output=True, text=True, timeout=300)
  finally:
    parent.chmod(0o755)
  assert proc.returncode == 1
  assert _errors(proc.stderr) == [
      f'error: cannot write to {parent / "run"}: Permission denied']
  assert list(parent.iterdir()) == []


def test_a_run_is_extended_or_shortened_and_stays_bit_identical(tmp_path):
  """The length of a run is not its identity: a 2-step run asked for 4
  resumes to 4, bit for bit the uninterrupted 4-step run; asked for 3, it
  stays; a changed learning rate is still refused, with its key alone."""
  import json  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf import training  # pylint: disable=g-import-not-at-top
  data_path('mnist')

  logs = []

  # The tiny model on 40 x 40 MNIST: a run's length and identity are not
  # its model's size.
  config = configs.tiny_config(canvas_size=40)

  def run(logdir, **overrides):
    return teacher.train_teacher(
        'mnist', logdir=str(logdir), data_dir=str(DATA_DIR), save_every=1,
        config=config,
        overrides=teacher.RecipeOverrides(batch_size=8, **overrides),
        progress=False, log=logs.append)

  run(tmp_path / 'grown', train_steps=2)
  run(tmp_path / 'grown', train_steps=4)
  assert ("the run's length changes: train_steps 2 -> 4; run.json keeps "
          'every length asked for (`lengths`)') in logs
  run(tmp_path / 'whole', train_steps=4)
  grown = tf.train.latest_checkpoint(str(tmp_path / 'grown' / 'ckpt'))
  whole = tf.train.latest_checkpoint(str(tmp_path / 'whole' / 'ckpt'))
  assert grown.endswith('ckpt-4') and whole.endswith('ckpt-4')
  names = [n for n, _ in tf.train.list_variables(whole)]
  assert any(n.startswith('optimizer/') for n in names)
  for name in names:
    a = tf.train.load_checkpoint(grown).get_tensor(name)
    b = tf.train.load_checkpoint(whole).get_tensor(name)
    assert np.array_equal(a, b), name
  run(tmp_path / 'grown', train_steps=3)
  assert tf.train.latest_checkpoint(
      str(tmp_path / 'grown' / 'ckpt')).endswith('ckpt-4')
  saved = json.load(open(tmp_path / 'grown' / 'run.json'))
  assert saved['lengths'] == [dict(epochs=None, train_steps=n)
                              for n in (2, 4, 3)]
  assert saved['recipe']['train_steps'] == 3
  with pytest.raises(training.RunMismatchError,
                     match=r'other settings \(recipe.learning_rate: 3e-05 '
                           r'-> 0.001\)'):
    run(tmp_path / 'grown', train_steps=4, learning_rate=1e-3)


def test_the_flags_resolve_to_the_run_json_the_code_before_the_run_spec_wrote(
    tmp_path):
  """Runs resume against their run.json: for each flag set of
  tests/golden/teacher_run_json.json, the script resolves the same folder
  and the same identity as the code before `TeacherRun` (commit 257864e)
  did, read by tests/helpers/teacher_identity.py without training."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  data_path('mnist')
  data_path('fashion_mnist')
  golden = json.loads((REPO / 'tests' / 'golden'
                       / 'teacher_run_json.json').read_text())
  proc = subprocess.run(
      [sys.executable, str(REPO / 'tests' / 'helpers' / 'teacher_identity.py')],
      input=''.join(json.dumps(case['argv']) + '\n' for case in golden),
      capture_output=True, text=True, timeout=600, cwd=tmp_path,
      env=dict(os.environ, SCAE_DATA_DIR=str(DATA_DIR)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  resolved = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [[case['logdir'], case['settings']] for case in golden] == resolved
  assert list(tmp_path.iterdir()) == []


class _Resolved(Exception):
  pass


def test_a_teacher_run_and_its_fields_as_keywords_resolve_alike(monkeypatch):
  """The call before `TeacherRun` (a dataset and keywords, a ScaeConfig
  among them, as the reproduce stage makes it) and a `TeacherRun` of the
  same fields resolve to the folder and identity the code before wrote for
  --config=mnist_original; a run and keywords together are refused."""
  import json  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf import training  # pylint: disable=g-import-not-at-top
  data_path('mnist')
  golden = next(case for case in json.loads(
      (REPO / 'tests' / 'golden' / 'teacher_run_json.json').read_text())
                if case['argv'] == ['--config=mnist_original'])
  resolved = []

  def record(logdir, settings, overwrite=False):
    del overwrite
    resolved.append([logdir, settings])
    raise _Resolved()

  monkeypatch.setattr(training, 'check_logdir', record)
  with pytest.raises(_Resolved):
    teacher.train_teacher('mnist', config=configs.get_config('mnist_original'),
                          data_dir=str(DATA_DIR), progress=False)
  with pytest.raises(_Resolved):
    teacher.train_teacher(teacher.TeacherRun(
        config='mnist_original', data_dir=str(DATA_DIR)), progress=False)
  assert resolved == [[golden['logdir'], golden['settings']]] * 2
  with pytest.raises(TypeError, match='not both'):
    teacher.train_teacher(teacher.TeacherRun(), seed=1)


def test_a_teacher_run_is_checked_without_tensorflow():
  """The script builds its `TeacherRun` before TensorFlow loads; the
  library refuses a bad strategy with the script's line."""
  proc = subprocess.run(
      [sys.executable, '-c',
       'import sys\n'
       'from scae_tf.teacher_run import TeacherRun\n'
       'try:\n'
       '  TeacherRun(strategy="tpu")\n'
       'except ValueError as e:\n'
       '  print(e)\n'
       'print("tensorflow" in sys.modules)\n'],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.stdout.splitlines() == [
      "unknown strategy='tpu'; expected one of default, mirrored, "
      'multiworker.', 'False'], proc.stderr[-2000:]
