"""The resumable training loop and run/train_teacher.py."""

import json
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
from scae_tf.model import SCAE
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


def _tiny_run(logdir, steps, **kwargs):
  tf.random.set_seed(0)
  np.random.seed(0)
  model = SCAE(TINY)
  opt = TF1RMSProp.for_recipe(model.trainable_variables, TINY_RECIPE)
  training.train_loop(model, opt, _tiny_stream(), str(logdir), steps,
                      progress=False, **kwargs)
  return model, opt


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


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
  model = SCAE(TINY)
  opt = TF1RMSProp.for_recipe(model.trainable_variables, TINY_RECIPE)
  good = training.make_train_step(model, opt, seed=0)

  def step_fn(images, labels):
    metrics = good(images, labels)
    if int(opt.step.numpy()) == 4:
      metrics['loss'] = tf.constant(float('nan'))
    return metrics

  with pytest.raises(training.NonFiniteLossError, match='step 4'):
    training.train_loop(model, opt, _tiny_stream(), str(tmp_path), 10,
                        save_every=2, progress=False, train_step=step_fn)
  assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')).endswith('ckpt-2')


def test_logdir_guard(tmp_path):
  settings = training.run_settings(TINY, lr=1e-3)
  assert not training.prepare_logdir(str(tmp_path / 'r'), settings)
  assert training.prepare_logdir(str(tmp_path / 'r'), settings)  # resume
  (tmp_path / 'r' / 'keep.txt').write_text('x')
  other = training.run_settings(TINY, lr=2e-3)
  with pytest.raises(training.RunMismatchError, match="'lr': \\(0.001, 0.002"):
    training.prepare_logdir(str(tmp_path / 'r'), other)
  assert (tmp_path / 'r' / 'keep.txt').exists()
  assert not training.prepare_logdir(str(tmp_path / 'r'), other,
                                     overwrite=True)
  assert not (tmp_path / 'r' / 'keep.txt').exists()
  (tmp_path / 'junk').mkdir()
  (tmp_path / 'junk' / 'f').write_text('x')
  with pytest.raises(training.RunMismatchError, match='not empty'):
    training.prepare_logdir(str(tmp_path / 'junk'), settings)


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


def test_plot_training_prints_the_epoch_table(tmp_path):
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
  out = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'plot_training.py'),
       f'--runs={run_dir}', '--table', f'--out={tmp_path / "curves.png"}'],
      capture_output=True, text=True, check=True).stdout
  rows = [line for line in out.splitlines() if line.startswith('| ')]
  assert rows[1:] == [
      '| 1 | 20 | 1.00 | 40.00 % | 45.00 % | 50.00 % | 62.50 % |',
      '| 2 | 40 | 2.00 | - | - | 75.00 % | 80.00 % |']
  assert (tmp_path / 'curves.png').stat().st_size > 0


def test_random_step_survives_sigkill(tmp_path):
  """A step drawing from a checkpointed tf.random.Generator inside the
  compiled function, killed with SIGKILL and resumed, ends bit-identical to
  an uninterrupted run: generator state and counters are in the checkpoint.
  """
  script = str(REPO / 'tests' / 'helpers' / 'random_step_run.py')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
      filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))

  def command(logdir):
    return [sys.executable, script, str(logdir), '60']

  subprocess.run(command(tmp_path / 'full'), check=True, env=env,
                 capture_output=True, timeout=600)
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
  assert tf.train.latest_checkpoint(str(tmp_path / 'run' / 'ckpt')).endswith(
      'ckpt-2')
  with pytest.raises(ValueError, match='Unknown strategy'):
    teacher.train_teacher('mnist', strategy='tpu', logdir=str(tmp_path / 'x'))
  with pytest.raises(ValueError, match='TF_CONFIG'):
    teacher.train_teacher('mnist', strategy='multiworker',
                          logdir=str(tmp_path / 'x'))
  assert not (tmp_path / 'x').exists()
