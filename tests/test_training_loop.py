"""The resumable training loop and run/train_teacher.py."""

import gc
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import DATA_DIR, REPO, data_path
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import data
from scae_tf import training
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp
from scae_tf import recipes

TINY = configs.tiny_config()
TINY_RECIPE = recipes.get_recipe('paper').replace(batch_size=4)


def _tiny_stream(seed=0):
  rng = np.random.RandomState(0)
  images = (rng.rand(40, 16, 16) * 255).astype(np.uint8)
  labels = rng.randint(0, 10, 40).astype(np.int64)
  return data.BatchStream.from_arrays(images, labels, 4, 'pad_center',
                                      seed=seed, canvas_size=20)


def _tiny_run(logdir, steps, recipe=TINY_RECIPE, **kwargs):
  tf.random.set_seed(0)
  np.random.seed(0)
  model = SCAE(TINY)
  opt = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
  kwargs.setdefault('log', lambda msg: None)
  training.train_loop(model, opt, _tiny_stream(), str(logdir), steps,
                      progress=False, **kwargs)
  return model, opt


class _TinyTrainer:
  """One tiny model, optimiser and compiled step for many runs. Each run
  starts from the same initial state, or from its checkpoint, as a new
  process would, without tracing the step again."""

  def __init__(self, recipe=TINY_RECIPE):
    tf.random.set_seed(0)
    np.random.seed(0)
    self.model = SCAE(TINY)
    self.opt = TF1RMSProp.for_recipe(self.model.trainable_variables, recipe)
    self.step = training.make_train_step(self.model, self.opt, seed=0)
    self.initial = [v.numpy() for v in self._variables()]

  def _variables(self):
    return list(self.model.variables) + list(self.opt.variables)

  def run(self, logdir, steps, train_step=None, **kwargs):
    """Trains in `logdir`; returns the state (weights, RMSProp slots, step)."""
    for v, value in zip(self._variables(), self.initial):
      v.assign(value)
    kwargs.setdefault('log', lambda msg: None)
    training.train_loop(self.model, self.opt, _tiny_stream(), str(logdir),
                        steps, train_step=train_step or self.step,
                        progress=False, **kwargs)
    return [v.numpy() for v in self._variables()]


@pytest.fixture(scope='module')
def tiny():
  return _TinyTrainer()


@pytest.fixture(scope='module')
def tiny_lr100():
  # lr 100: step 1 is finite, step 2's loss is inf and its update NaN, as
  # --lr=0.3 on MNIST.
  return _TinyTrainer(TINY_RECIPE.replace(learning_rate=100.))


def _assert_same_state(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _non_finite_tensors(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return [name for name, dtype in reader.get_variable_to_dtype_map().items()
          if dtype.is_floating
          and not np.all(np.isfinite(reader.get_tensor(name)))]


def test_resume_in_process_equals_uninterrupted(tmp_path):
  full, _ = _tiny_run(tmp_path / 'a', 12, save_every=5)
  _tiny_run(tmp_path / 'b', 7, save_every=5)        # stops after step 7
  resumed, opt = _tiny_run(tmp_path / 'b', 12, save_every=5)
  assert int(opt.step.numpy()) == 12
  configs_left = sorted(p.name for p in (tmp_path / 'b' / 'ckpt').glob(
      '*.config.json'))
  assert configs_left == ['ckpt-10.config.json', 'ckpt-12.config.json',
                          'ckpt-7.config.json']
  for a, b in zip(full.variables, resumed.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  logged = [json.loads(l) for l in open(tmp_path / 'b' / 'log.jsonl')]
  assert [r['step'] for r in logged] == [7, 10, 12]


def test_a_methods_step_fields_choose_extra_log_records(tmp_path, tiny):
  """The loop logs every tenth step and the last; a method's `StepFields`
  adds the steps it asks for, and sees every step's metrics once."""

  class OddSteps(training.StepFields):

    def __init__(self):
      self.seen = 0

    def postfix(self, metrics):
      self.seen += 1
      return dict(seen=str(self.seen))

    def always_log(self, metrics):
      return self.seen % 2 == 1

  fields = OddSteps()
  tiny.run(tmp_path, 12, step_fields=fields, save_every=100)
  logged = [json.loads(l)['step'] for l in open(tmp_path / 'log.jsonl')
            if 'eval' not in l]
  assert fields.seen == 12
  assert logged == [1, 3, 5, 7, 9, 10, 11, 12]


def test_nan_guard_keeps_last_good_checkpoint(tmp_path, tiny):
  def step_fn(images, labels):
    metrics = tiny.step(images, labels)
    if int(tiny.opt.step.numpy()) == 4:
      metrics['loss'] = tf.constant(float('nan'))
    return metrics

  with pytest.raises(training.NonFiniteLossError, match='step 4'):
    tiny.run(tmp_path, 10, step_fn, save_every=2)
  assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')).endswith('ckpt-2')


def test_nan_guard_checks_every_saved_variable_not_only_the_weights(
    tmp_path, tiny):
  # An optimiser slot gone non-finite while loss and gradient stay finite:
  # saved, it would poison every step after a resume.
  def step_fn(images, labels):
    metrics = tiny.step(images, labels)
    if int(tiny.opt.step.numpy()) == 4:  # after the update, before its save
      tiny.opt.ms[5].assign(tf.fill(tiny.opt.ms[5].shape, float('inf')))
    return metrics

  n = len({v.ref() for v in tiny._variables() if v.dtype.is_floating})
  with pytest.raises(training.NonFiniteLossError) as err:
    tiny.run(tmp_path, 10, step_fn, save_every=2)
  last = str(tmp_path / 'ckpt' / 'ckpt-2')
  assert str(err.value) == (
      f'1 of {n} checkpointed variables are non-finite at step 4; not saved. '
      f'The last finite checkpoint is {last}.')
  assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')) == last
  assert not _non_finite_tensors(last)


def test_a_diverging_run_saves_only_finite_states_and_resumes(
    tmp_path, tiny_lr100, caplog):
  messages = []
  for attempt in range(2):
    with pytest.raises(training.NonFiniteLossError) as err:
      tiny_lr100.run(tmp_path, 10, save_every=1, log=messages.append)
    assert str(err.value) == (
        'Non-finite loss and grad_global_norm at step 2 (loss inf, '
        'grad_global_norm nan); stopped without saving. The last finite '
        f'checkpoint is {tmp_path / "ckpt" / "ckpt-1"}.'), attempt
  # The second attempt resumed from it, and met the same NaN.
  assert messages == ['starting at step 0',
                      f'resuming from step 1 ({tmp_path / "ckpt" / "ckpt-1"})']
  assert sorted(p.name for p in (tmp_path / 'ckpt').glob('*.index')) == [
      'ckpt-1.index']
  assert not _non_finite_tensors(str(tmp_path / 'ckpt' / 'ckpt-1'))
  del err  # its traceback holds the loop's checkpoint object
  gc.collect()  # TF warns of unread values when a restore's status is freed
  assert [r.getMessage() for r in caplog.records
          if r.levelno >= logging.WARNING] == []


def test_a_run_that_diverges_before_its_first_save_says_there_is_none(
    tmp_path, tiny_lr100):
  with pytest.raises(training.NonFiniteLossError,
                     match='at step 2 .*No checkpoint was saved: there is '
                     'none to resume from.$'):
    tiny_lr100.run(tmp_path, 10, save_every=5)
  assert not list(tmp_path.glob('ckpt/*.index'))


def _data_file(prefix):
  name, = [p for p in os.listdir(os.path.dirname(prefix))
           if p.startswith(os.path.basename(prefix) + '.data-')]
  return os.path.join(os.path.dirname(prefix), name)


def _truncate_data(prefix):
  path = _data_file(prefix)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  return path


def _garble_index(prefix):
  path = prefix + '.index'
  size = os.path.getsize(path)
  with open(path, 'wb') as f:
    f.write(np.random.RandomState(0).bytes(size))
  return path


def _flip_a_data_byte(prefix):
  path = _data_file(prefix)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  return path


@pytest.fixture(scope='module')
def tiny_8_steps(tiny, tmp_path_factory):
  """The state after 8 uninterrupted steps."""
  return tiny.run(tmp_path_factory.mktemp('full'), 8, save_every=2)


@pytest.mark.parametrize('damage', [_truncate_data, _garble_index,
                                    _flip_a_data_byte])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(
    tmp_path, tiny, tiny_8_steps, damage):
  tiny.run(tmp_path, 6, save_every=2)
  damaged = damage(str(tmp_path / 'ckpt' / 'ckpt-6'))
  messages = []
  resumed = tiny.run(tmp_path, 8, save_every=2, log=messages.append)
  assert messages[0].startswith(
      f'warning: skipping checkpoint {tmp_path / "ckpt" / "ckpt-6"}: '
      f'{damaged} is not a readable checkpoint file (corrupt or truncated: ')
  assert messages[1:] == [
      f'resuming from step 4 ({tmp_path / "ckpt" / "ckpt-4"})']
  _assert_same_state(resumed, tiny_8_steps)
  # Steps 5 and 6 were done again, and ckpt-6 saved whole.
  assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')).endswith('ckpt-8')
  checkpoints.check_readable(str(tmp_path / 'ckpt' / 'ckpt-6'))


def test_a_run_without_a_usable_checkpoint_is_an_error(tmp_path, tiny):
  tiny.run(tmp_path, 4, save_every=2)
  for step in (2, 4):
    _garble_index(str(tmp_path / 'ckpt' / f'ckpt-{step}'))
  with pytest.raises(checkpoints.CorruptCheckpointError,
                     match='No usable checkpoint in .*ckpt \\(tried ckpt-4, '
                     'ckpt-2\\); --overwrite restarts the run.'):
    tiny.run(tmp_path, 6, save_every=2)


def test_a_garbled_checkpoint_file_does_not_restart_the_run(
    tmp_path, tiny, tiny_8_steps):
  # TF ignores an unparsable `checkpoint` file; the run continues from the
  # newest checkpoint beside it rather than from scratch.
  tiny.run(tmp_path, 6, save_every=2)
  (tmp_path / 'ckpt' / 'checkpoint').write_text('garbage {')
  messages = []
  resumed = tiny.run(tmp_path, 8, save_every=2, log=messages.append)
  assert messages == [f'resuming from step 6 ({tmp_path / "ckpt" / "ckpt-6"})']
  _assert_same_state(resumed, tiny_8_steps)


def test_a_save_cut_before_the_checkpoint_file_named_it_resumes_from_it(
    tmp_path, tiny, tiny_8_steps):
  # As a kill between TF writing ckpt-6 and the `checkpoint` file update.
  tiny.run(tmp_path, 6, save_every=2)
  ckpt = str(tmp_path / 'ckpt')
  state = tf.train.get_checkpoint_state(ckpt)
  tf.compat.v1.train.update_checkpoint_state(
      ckpt, state.all_model_checkpoint_paths[-2],
      state.all_model_checkpoint_paths[:-1],
      all_model_checkpoint_timestamps=(
          state.all_model_checkpoint_timestamps[:-1]),
      last_preserved_timestamp=state.last_preserved_timestamp)
  assert tf.train.latest_checkpoint(ckpt).endswith('ckpt-4')
  messages = []
  resumed = tiny.run(tmp_path, 8, save_every=2, log=messages.append)
  assert messages == [f'resuming from step 6 ({ckpt}/ckpt-6)']
  _assert_same_state(resumed, tiny_8_steps)
  assert list(tf.train.get_checkpoint_state(
      ckpt).all_model_checkpoint_paths) == [f'{ckpt}/ckpt-{step}'
                                            for step in (4, 6, 8)]


def test_ctrl_c_saves_the_step_and_resumes_from_it(
    tmp_path, tiny, tiny_8_steps):
  def interrupted_at_3(images, labels):
    metrics = tiny.step(images, labels)
    if int(tiny.opt.step.numpy()) == 3:
      raise KeyboardInterrupt  # as Ctrl-C just after the update
    return metrics

  with pytest.raises(training.TrainingInterrupted) as err:
    tiny.run(tmp_path, 8, interrupted_at_3, save_every=2)
  assert str(err.value) == (
      f'at step 3, saved in {tmp_path / "ckpt" / "ckpt-3"}.')
  messages = []
  resumed = tiny.run(tmp_path, 8, save_every=2, log=messages.append)
  assert messages == [f'resuming from step 3 ({tmp_path / "ckpt" / "ckpt-3"})']
  _assert_same_state(resumed, tiny_8_steps)


def _teacher(logdir, *flags):
  return [sys.executable, str(REPO / 'run' / 'train_teacher.py'),
          f'--logdir={logdir}', f'--data_dir={DATA_DIR}', '--progress=false',
          '--batch_size=8', '--max_train_steps=40', '--save_every=10',
          *flags]


@pytest.mark.parametrize('names, message', [
    (dict(dataset='cifar100'), 'Unknown dataset'),
    (dict(config='imagenet'), 'Unknown config'),
    (dict(recipe='gpu_fast'), 'Unknown recipe'),
])
def test_teacher_rejects_bad_names(tmp_path, names, message):
  from scae_tf import teacher  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=message):
    teacher.train_teacher(logdir=str(tmp_path / 'run'), **names)
  assert not (tmp_path / 'run').exists()


def test_teacher_script_reports_a_bad_name_in_one_line(tmp_path):
  data_path('mnist')
  proc = subprocess.run(_teacher(tmp_path / 'run', '--recipe=gpu_fast'),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: Unknown recipe 'gpu_fast'")
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run').exists()


def _kill_after_first_checkpoint(command, logdir, env):
  """Starts `command`, SIGKILLs it once a checkpoint exists in `logdir`;
  returns the checkpoint in force."""
  proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while (time.time() < deadline
         and not tf.train.latest_checkpoint(str(logdir / 'ckpt'))):
    time.sleep(.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  interrupted_at = tf.train.latest_checkpoint(str(logdir / 'ckpt'))
  assert interrupted_at
  return interrupted_at


# 111 s on the shared 2-core Xeon (three processes, each loading TensorFlow
# and tracing the MNIST step). In the default suite,
# test_random_step_survives_sigkill checks the same kill -9 after a
# checkpoint and resume of train_loop across processes, bit-identical to an
# uninterrupted run (data stream, step counter and checkpointed state), and
# test_teacher.py::test_a_run_is_extended_or_shortened_and_stays_bit_identical
# that scae_tf.teacher resumed from its checkpoint ends bit for bit as its
# uninterrupted run (every tensor of the checkpoint).
@pytest.mark.slow
def test_teacher_survives_sigkill(tmp_path):
  """Kill -9 mid-run, resume, finish: same steps, data and weights as an
  uninterrupted run of the same seed (noise is a function of seed and step).
  """
  data_path('mnist')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  subprocess.run(_teacher(tmp_path / 'full'), check=True, env=env,
                 capture_output=True, timeout=600)

  killed = tmp_path / 'killed'
  interrupted_at = _kill_after_first_checkpoint(_teacher(killed), killed, env)
  assert not interrupted_at.endswith('ckpt-40')

  done = subprocess.run(_teacher(killed), env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'resuming' in done.stdout

  a, b = SCAE(configs.MNIST), SCAE(configs.MNIST)
  checkpoints.load_checkpoint(a, str(tmp_path / 'full' / 'ckpt'))
  checkpoints.load_checkpoint(b, str(killed / 'ckpt'))
  for va, vb in zip(a.variables, b.variables):
    np.testing.assert_array_equal(va.numpy(), vb.numpy())
  full_log = {r['step']: r['loss'] for r in map(
      json.loads, open(tmp_path / 'full' / 'log.jsonl'))}
  resumed_log = {r['step']: r['loss'] for r in map(
      json.loads, open(killed / 'log.jsonl'))}
  assert resumed_log[40] == full_log[40]


def test_log_truncation_keeps_the_clock_of_the_kept_records(tmp_path):
  log = training.JsonlLog(str(tmp_path / 'log.jsonl'))
  assert log.truncate_after(0) == 0.0  # no log yet: a fresh run
  for step, wall in [(10, 5.0), (20, 9.5), (20, 11.0), (30, 14.0)]:
    log.write(dict(step=step, wall_time=wall))
  # A run resumed at step 20 redoes step 30 and continues the clock at 11 s.
  assert log.truncate_after(20) == 11.0
  with open(log.path) as f:
    assert [json.loads(line)['step'] for line in f] == [10, 20, 20]


def test_xla_train_step_takes_the_images_as_a_runtime_argument():
  # Regression: a compiled function nested in the jit-compiled step (the fused
  # mixture likelihood) made XLA fold the images and weights into the program
  # as constants, so every step recompiled (~20 s a step at batch 100).
  tf.random.set_seed(0)
  model = SCAE(TINY)
  shape = [TINY_RECIPE.batch_size, TINY.canvas_size, TINY.canvas_size,
           TINY.n_channels]
  images = tf.random.uniform(shape)
  labels = tf.zeros([TINY_RECIPE.batch_size], tf.int64)
  model(images)
  opt = TF1RMSProp.for_recipe(model.trainable_variables, TINY_RECIPE)
  step = training.make_train_step(model, opt, jit_compile=True, seed=0)
  hlo = step.experimental_get_compiler_ir(images, labels)(stage='hlo')
  entry = hlo[hlo.index('\nENTRY'):].split('\n}')[0]
  params = [line for line in entry.split('\n') if ' parameter(' in line]
  image_param = 'f32[' + ','.join(map(str, shape)) + ']'
  assert any(image_param in line for line in params), params[:3]
  # Every trainable weight is a runtime argument too.
  assert len(params) >= 1 + len(model.trainable_variables)


@pytest.fixture(scope='module')
def plot_training(tmp_path_factory):
  """Runs run/plot_training.py with the given flags -> (status, stdout,
  stderr) as a CompletedProcess. Each call is a child forked from one
  process which imported the script's modules once (TensorFlow comes with
  scae_tf.training: seconds per call otherwise);
  tests/helpers/forked_scripts.py."""
  script = str(REPO / 'run' / 'plot_training.py')
  log = tmp_path_factory.mktemp('plot_training') / 'runner.err'
  with open(log, 'w') as err:
    runner = subprocess.Popen(
        [sys.executable, '-c',
         (REPO / 'tests' / 'helpers' / 'forked_scripts.py').read_text(),
         'absl.app', 'absl.flags', 'scae_tf.cli', 'scae_tf.training.curves'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
  assert json.loads(runner.stdout.readline() or 'null') == 'ready', (
      log.read_text()[-2000:])

  def run(*flags):
    runner.stdin.write(json.dumps([script, flags, os.getcwd()]) + '\n')
    runner.stdin.flush()
    said = runner.stdout.readline()
    assert said, log.read_text()[-2000:]
    status, stdout, stderr, _ = json.loads(said)
    return subprocess.CompletedProcess([script, *flags], status, stdout,
                                       stderr)

  yield run
  runner.stdin.close()
  runner.wait(timeout=60)


def test_plot_training_prints_the_epoch_table(tmp_path, plot_training):
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  records = [
      dict(step=10, epoch=0.5, wall_time=30., loss=5., prior_cls_acc=.1,
           posterior_cls_acc=.2),
      dict(step=20, epoch=1, eval=True, wall_time=3600., prior_probe_acc=.5,
           posterior_probe_acc=.625),
      dict(step=20, epoch=1, eval=True, kmeans=True, wall_time=3700.,
           kmeans_prior_test_acc=.4, kmeans_posterior_test_acc=.45),
      dict(step=40, epoch=2, eval=True, wall_time=7200., prior_probe_acc=.75,
           posterior_probe_acc=.8),
  ]
  (run_dir / 'log.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in records))
  done = plot_training(f'--runs={run_dir}', '--table',
                       f'--out={tmp_path / "curves.png"}')
  assert done.returncode == 0, done.stderr
  out = done.stdout
  rows = [line for line in out.splitlines() if line.startswith('| ')]
  assert rows[1:] == [
      '| 1 | 20 | 1.00 | 40.00 % | 45.00 % | 50.00 % | 62.50 % |',
      '| 2 | 40 | 2.00 | - | - | 75.00 % | 80.00 % |']
  assert (tmp_path / 'curves.png').stat().st_size > 0


def test_plot_training_prints_the_generator_table(tmp_path, plot_training):
  """Blocks of 4 steps; only adversarial records count; the mean L2 is over
  all successes: (.5 * 2 + 1. * 4) / 1.5 = 10 / 3 in steps 1-4."""
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  # The plot's fields, in every training record.
  plotted = dict(loss=1., prior_cls_acc=.1, posterior_cls_acc=.2,
                 wall_time=1.)
  records = [
      dict(step=1, adversarial=0., **plotted),
      dict(step=2, adversarial=1., attack_success_rate=.5, attack_mean_l2=2.,
           **plotted),
      dict(step=4, adversarial=1., attack_success_rate=1., attack_mean_l2=4.,
           **plotted),
      dict(step=5, epoch=1, eval=True, wall_time=2., prior_probe_acc=.5,
           posterior_probe_acc=.5),
      dict(step=6, adversarial=1., attack_success_rate=0., attack_mean_l2=0.,
           **plotted),
  ]
  (run_dir / 'log.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in records))
  done = plot_training(f'--runs={run_dir}', '--generator_blocks=4',
                       f'--out={tmp_path / "curves.png"}')
  assert done.returncode == 0, done.stderr
  out = done.stdout
  rows = [line for line in out.splitlines() if line.startswith('| ')]
  assert rows[1:] == ['| 1-4 | 2 | 75.0 % | 3.33 |', '| 5-6 | 1 | 0.0 % | - |']


def test_random_step_survives_sigkill(tmp_path, monkeypatch):
  """A step drawing from a checkpointed tf.random.Generator inside the
  compiled function, killed with SIGKILL and resumed, ends bit-identical to
  an uninterrupted run: generator state and counters are in the checkpoint.
  """
  helpers = REPO / 'tests' / 'helpers'
  script = str(helpers / 'random_step_run.py')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
      filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))

  def command(logdir):
    return [sys.executable, script, str(logdir), '60']

  # The uninterrupted run in this process (one interpreter start fewer); the
  # killed and the resumed one are processes.
  monkeypatch.syspath_prepend(str(helpers))
  importlib.import_module('random_step_run').run(str(tmp_path / 'full'), 60)
  killed = tmp_path / 'killed'
  interrupted_at = _kill_after_first_checkpoint(command(killed), killed, env)
  assert not interrupted_at.endswith('ckpt-60')
  assert not (killed / 'final.npz').exists()
  subprocess.run(command(killed), check=True, env=env, capture_output=True,
                 timeout=600)
  full = np.load(tmp_path / 'full' / 'final.npz')
  resumed = np.load(killed / 'final.npz')
  assert int(full['noisy_steps']) == int(resumed['noisy_steps']) == 60
  np.testing.assert_array_equal(resumed['generator_state'],
                                full['generator_state'])
  np.testing.assert_array_equal(resumed['weights'], full['weights'])


def test_teacher_under_a_strategy_and_its_errors(tmp_path):
  data_path('mnist')
  from scae_tf import teacher  # pylint: disable=g-import-not-at-top
  overrides = teacher.RecipeOverrides(batch_size=8, train_steps=2)
  messages = []
  metrics = teacher.train_teacher(
      'mnist', overrides=overrides, logdir=str(tmp_path / 'run'),
      data_dir=str(DATA_DIR), strategy='mirrored', progress=False,
      log=messages.append)
  assert np.isfinite(metrics['loss'])
  run = json.loads((tmp_path / 'run' / 'run.json').read_text())
  assert run['replicas'] == 1 and run['recipe']['batch_size'] == 8
  assert run['recipe']['deviation'] == ('paper recipe with batch_size=8, '
                                        'epochs=None, train_steps=2')
  assert any('DEVIATION' in m for m in messages)
  assert 'starting at step 0' in messages
  assert tf.train.latest_checkpoint(str(tmp_path / 'run' / 'ckpt')).endswith(
      'ckpt-2')
  messages.clear()
  teacher.train_teacher(
      'mnist', overrides=overrides, logdir=str(tmp_path / 'run'),
      data_dir=str(DATA_DIR), strategy='mirrored', progress=False,
      log=messages.append)
  assert f'resuming from step 2 ({tmp_path / "run" / "ckpt" / "ckpt-2"})' in (
      messages)
  with pytest.raises(ValueError, match="unknown strategy='tpu'"):
    teacher.train_teacher('mnist', strategy='tpu', logdir=str(tmp_path / 'x'))
  with pytest.raises(ValueError, match='TF_CONFIG'):
    teacher.train_teacher('mnist', strategy='multiworker',
                          logdir=str(tmp_path / 'x'))
  assert not (tmp_path / 'x').exists()


def test_plot_training_answers_a_bad_path_in_one_line(tmp_path,
                                                      plot_training):
  """A missing run, a folder that is no run, an --out in a missing folder:
  one `error:` line naming it and status 1, no traceback, nothing written;
  an --out without an extension is written as <out>.png, and said so."""
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / 'log.jsonl').write_text(json.dumps(dict(
      step=1, wall_time=1., loss=1., prior_cls_acc=.1,
      posterior_cls_acc=.2)) + '\n')
  (tmp_path / 'notes').mkdir()
  cases = {
      f'no run folder {tmp_path / "missing"}': (
          f'--runs={tmp_path / "missing"}', f'--out={tmp_path / "a.png"}'),
      f'{tmp_path / "notes"} is not a run folder (no log.jsonl)': (
          f'--runs={tmp_path / "notes"}', f'--out={tmp_path / "a.png"}'),
      f'no folder {tmp_path / "nowhere"} for --out': (
          f'--runs={run_dir}', f'--out={tmp_path / "nowhere" / "a.png"}'),
  }
  for expected, flags in cases.items():
    done = plot_training(*flags)
    assert (done.returncode, done.stdout) == (1, ''), done.stderr
    assert done.stderr.splitlines()[-1] == f'error: {expected}', done.stderr
    assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'a.png').exists()
  done = plot_training(f'--runs={run_dir}', f'--out={tmp_path / "curves"}')
  assert done.returncode == 0, done.stderr
  assert done.stdout == f'wrote {tmp_path / "curves.png"}\n'
  assert (tmp_path / 'curves.png').stat().st_size > 0
