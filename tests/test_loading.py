"""scae_tf.loading: every path form, config resolution, the k-means beside a
checkpoint, conversion, and the errors."""

import gc
import logging
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_tf1_weights
from conftest import reference_path
from conftest import REPO
from conftest import with_rmsprop_slots
from conftest import write_tf1_checkpoint
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'tiny_v1'
GOLDEN_PREFIX = str(GOLDEN / 'ckpt' / 'ckpt-3')
CONV_W = 'conv_net_2d/conv_2d_0/w'


def _assert_golden_outputs(model):
  expected = np.load(GOLDEN / 'expected.npz')
  out = model.forward(tf.constant(expected['images']),
                      tf.constant(expected['labels']), full=False)
  np.testing.assert_allclose(out.caps_presence_prob.numpy(),
                             expected['caps_presence_prob'], rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(model.loss(out).numpy(), expected['loss'],
                             rtol=1e-6)


@pytest.mark.parametrize('path', [GOLDEN, GOLDEN / 'ckpt', GOLDEN_PREFIX,
                                  GOLDEN_PREFIX + '.index'],
                         ids=['run_dir', 'ckpt_dir', 'prefix', 'index'])
def test_every_form_of_the_golden_tf2_run_loads(path):
  loaded = loading.load_model(path)
  assert loaded.prefix == GOLDEN_PREFIX and loaded.format == 'tf2'
  assert loaded.config.name == 'tiny'
  assert loaded.config_source == loading.CONFIG_SAVED
  assert loaded.kmeans == {} and loaded.optimizer is None
  # Evaluation by default: the model is built without the trained-with noise.
  assert loaded.config.part_encoder_noise_scale == 4.
  assert loaded.model.config == loaded.config.without_noise()
  _assert_golden_outputs(loaded.model)


def test_golden_run_restores_its_optimizer_to_continue_training():
  loaded = loading.load_model(GOLDEN, noise=True, optimizer=TF1RMSProp)
  assert loaded.model.config == loaded.config
  expected = np.load(GOLDEN / 'expected.npz')
  assert int(loaded.optimizer.step.numpy()) == 3
  np.testing.assert_array_equal(loaded.optimizer.ms[0].numpy(),
                                expected['ms0'])
  _assert_golden_outputs(loaded.model)


def _tf1_weights(model):
  return {n: v.numpy() for n, v in checkpoints.tf1_variable_map(model).items()}


@pytest.mark.parametrize('scope', ['', 'SCAE/', 'STU/'])
def test_tf1_checkpoint_of_any_scope_loads_with_its_config(tmp_path, scope):
  config = configs.tiny_config()
  weights = random_tf1_weights(config, scope)
  prefix = write_tf1_checkpoint(tmp_path / 'model.ckpt', weights)
  loaded = loading.load_model(prefix + '.index', config)
  assert (loaded.prefix, loaded.format) == (prefix, 'tf1')
  assert loaded.config_source == loading.CONFIG_GIVEN
  for name, value in _tf1_weights(loaded.model).items():
    np.testing.assert_array_equal(value, weights[scope + name])


def test_tf1_checkpoint_with_teacher_and_student_needs_a_scope(tmp_path):
  config = configs.tiny_config()
  student = random_tf1_weights(config, 'STU/', seed=1)
  prefix = write_tf1_checkpoint(
      tmp_path / 'model.ckpt', {**random_tf1_weights(config, 'SCAE/'),
                                **student})
  with pytest.raises(checkpoints.CheckpointMismatchError, match='scope='):
    loading.load_model(prefix, 'mnist')
  loaded = loading.load_model(prefix, config, scope='STU')
  np.testing.assert_array_equal(_tf1_weights(loaded.model)[CONV_W],
                                student['STU/' + CONV_W])


def test_config_of_an_upstream_checkpoint_is_inferred_from_its_shapes(
    tmp_path):
  # Upstream run_mnist.sh: 40 part and 32 object capsules, no scope; the
  # dataset hint puts `mnist` (24 and 24) first, whose shapes do not fit.
  # The folder has no `checkpoint` file: its only checkpoint is taken.
  weights = random_tf1_weights(configs.MNIST_ORIGINAL)
  prefix = write_tf1_checkpoint(tmp_path / 'model.ckpt', weights)
  loaded = loading.load_model(tmp_path, dataset='mnist')
  assert loaded.config == configs.MNIST_ORIGINAL
  assert loaded.config_source == loading.CONFIG_INFERRED
  assert loaded.prefix == prefix
  np.testing.assert_array_equal(_tf1_weights(loaded.model)[CONV_W],
                                weights[CONV_W])


def test_config_of_a_tf2_checkpoint_without_saved_config_is_inferred(
    tmp_path):
  model = SCAE(configs.MNIST_ORIGINAL)
  prefix = checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'ckpt'))
  pathlib.Path(prefix + checkpoints.CONFIG_SUFFIX).unlink()
  loaded = loading.load_model(prefix, dataset='mnist')
  assert loaded.config.name == 'mnist_original'
  assert loaded.config_source == loading.CONFIG_INFERRED
  np.testing.assert_array_equal(
      loaded.model.part_encoder.cnn.kernels[0].numpy(),
      model.part_encoder.cnn.kernels[0].numpy())


@pytest.mark.fixtures
def test_reference_fork_checkpoint_infers_the_paper_config():
  prefix = str(reference_path('scae_mnist_init', 'model.ckpt'))
  loaded = loading.load_model(pathlib.Path(prefix).parent)
  assert (loaded.prefix, loaded.format) == (prefix, 'tf1')
  assert loaded.config == configs.MNIST  # the first fitting named config
  assert loaded.config_source == loading.CONFIG_INFERRED
  np.testing.assert_array_equal(
      _tf1_weights(loaded.model)[CONV_W],
      tf.train.load_checkpoint(prefix).get_tensor('SCAE/' + CONV_W))
  # Same shapes: the dataset decides between the two paper configs.
  fashion = loading.load_model(prefix, dataset='fashion_mnist')
  assert fashion.config == configs.FASHION_MNIST


def test_kmeans_classifiers_beside_the_checkpoint_come_with_it(tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(GOLDEN, run)
  prefix = str(run / 'ckpt' / 'ckpt-3')
  saved = {}
  for kind, metric in (('prior', 'cosine'), ('posterior', 'euclidean')):
    saved[f'{kind}_{metric}'] = KMeansClassifier(
        np.eye(3, dtype=np.float32) + len(saved), metric, kind,
        np.array([2, 0, 1]))
    saved[f'{kind}_{metric}'].save(loading.kmeans_path(prefix, kind, metric))
  loaded = loading.load_model(run)
  assert sorted(loaded.kmeans) == ['posterior_euclidean', 'prior_cosine']
  for key, clf in saved.items():
    np.testing.assert_array_equal(loaded.kmeans[key].centers, clf.centers)
    assert loaded.kmeans[key].feature == clf.feature
  assert loading.load_model(run, kmeans=False).kmeans == {}


def test_missing_or_unreadable_checkpoints_are_one_line_errors(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  (tmp_path / 'junk.index').write_bytes(b'not a checkpoint')
  two = tmp_path / 'two'
  two.mkdir()
  for name in ('a.index', 'b.index'):
    (two / name).write_bytes(b'')
  for path, error, pattern in (
      (tmp_path / 'nothing_here', FileNotFoundError,
       'nothing_here.index does not exist'),
      (empty, FileNotFoundError, 'empty.* nor in its ckpt/'),
      (two, FileNotFoundError, r'several checkpoints \(a, b\)'),
      (tmp_path / 'junk', checkpoints.CorruptCheckpointError,
       'junk.index is not a readable checkpoint file')):
    with pytest.raises(error, match=pattern) as err:
      loading.load_model(path)
    assert '\n' not in str(err.value), str(err.value)


def _tiny_tf2_checkpoint(tmp_path, with_optimizer=False):
  model = SCAE(configs.tiny_config())
  opt = TF1RMSProp(model.trainable_variables) if with_optimizer else None
  return checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'ckpt'), opt)


def _damage(path, how):
  size = pathlib.Path(path).stat().st_size
  with open(path, 'r+b') as f:
    if how == 'truncate':
      f.truncate(size // 2)
    else:
      f.write(np.random.RandomState(0).bytes(size))


@pytest.mark.parametrize('suffix, how', [
    ('.data-00000-of-00001', 'truncate'), ('.data-00000-of-00001', 'garble'),
    ('.index', 'truncate'), ('.index', 'garble')])
@pytest.mark.parametrize('fmt', ['tf1', 'tf2'])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(
    tmp_path, fmt, suffix, how):
  if fmt == 'tf1':
    prefix = write_tf1_checkpoint(
        tmp_path / 'model.ckpt', random_tf1_weights(configs.tiny_config()))
  else:
    prefix = _tiny_tf2_checkpoint(tmp_path)
  _damage(prefix + suffix, how)
  with pytest.raises(checkpoints.CorruptCheckpointError) as err:
    loading.load_model(prefix, configs.tiny_config())
  assert str(err.value).startswith(
      f'{prefix}{suffix} is not a readable checkpoint file (corrupt or '
      'truncated: ')
  assert '\n' not in str(err.value)


def _tf_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno >= logging.WARNING]


def test_another_configs_checkpoint_is_a_mismatch_without_tf_noise(
    tmp_path, caplog):
  # Saved without its config (as by an older version): the shapes tell.
  prefix = _tiny_tf2_checkpoint(tmp_path, with_optimizer=True)
  pathlib.Path(prefix + checkpoints.CONFIG_SUFFIX).unlink()
  with pytest.raises(checkpoints.CheckpointMismatchError) as err:
    loading.load_model(prefix, 'mnist')
  lines = str(err.value).split('\n')
  assert lines[0] == (f'Checkpoint {prefix!r} does not match the model '
                      "(config 'mnist'); nothing was loaded.")
  assert '  shape mismatch (54):' in lines
  assert ('    object_capsules/ccr_bias: checkpoint [3, 1, 6] vs model '
          '[24, 1, 6]') in lines
  assert '    ... and 46 more' in lines
  assert len(lines) < 30
  gc.collect()  # TF logs the values a failed restore left unread when freed
  assert _tf_warnings(caplog) == []


def test_loading_without_the_optimizer_is_quiet(tmp_path, caplog):
  prefix = _tiny_tf2_checkpoint(tmp_path, with_optimizer=True)
  loaded = loading.load_model(prefix)
  del loaded
  gc.collect()
  assert _tf_warnings(caplog) == []


def test_convert_refuses_to_replace_a_checkpoint_without_overwrite(tmp_path):
  config = configs.tiny_config()
  src = write_tf1_checkpoint(tmp_path / 'model.ckpt',
                             random_tf1_weights(config))
  other = write_tf1_checkpoint(tmp_path / 'other.ckpt',
                               random_tf1_weights(config, seed=1))
  out = tmp_path / 'out'
  out.mkdir()
  # An existing folder means <folder>/ckpt.
  first = loading.convert_tf1_checkpoint(src, str(out), config)
  assert first['out'] == str(out / 'ckpt')
  evaluated = loading.kmeans_path(first['out'], 'prior')
  pathlib.Path(evaluated).write_bytes(b'k-means of the first checkpoint')
  before = (out / 'ckpt.data-00000-of-00001').read_bytes()
  for target in (out, out / 'ckpt'):
    with pytest.raises(FileExistsError,
                       match=f'{out / "ckpt"} is an existing checkpoint .*'
                       'pass --overwrite'):
      loading.convert_tf1_checkpoint(other, str(target), config)
  assert (out / 'ckpt.data-00000-of-00001').read_bytes() == before
  loading.convert_tf1_checkpoint(other, str(out), config, overwrite=True)
  # What was derived from the replaced checkpoint goes with it.
  assert not pathlib.Path(evaluated).exists()
  np.testing.assert_array_equal(
      _tf1_weights(loading.load_model(out).model)[CONV_W],
      random_tf1_weights(config, seed=1)[CONV_W])


def _script(name, *flags):
  return subprocess.run([sys.executable, str(REPO / 'run' / name), *flags],
                        capture_output=True, text=True, timeout=300,
                        check=False)


def _said(stderr):
  """What a script printed itself, without TensorFlow's start-up log."""
  return [line for line in stderr.splitlines()
          if line.startswith(('error:', 'Traceback'))]


# Every script turns the error into its line through scae_tf.cli.run. The
# evaluate case (a TF2 checkpoint's truncated .data) runs with the slow ones;
# covered by default: [attack] (a TF2 checkpoint, through a script) and
# test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file[tf2-...]
# (that file truncated, the same error).
@pytest.mark.parametrize('script', [
    pytest.param('evaluate', marks=pytest.mark.slow), 'attack',
    'convert_checkpoint'])
def test_scripts_report_a_damaged_checkpoint_in_one_line(tmp_path, script):
  if script == 'convert_checkpoint':
    prefix = write_tf1_checkpoint(
        tmp_path / 'model.ckpt', random_tf1_weights(configs.MNIST))
    damaged = prefix + '.data-00000-of-00001'
    flags = [f'--tf1={prefix}', f'--out={tmp_path / "out"}']
  else:
    prefix = _tiny_tf2_checkpoint(tmp_path)
    damaged = prefix + ('.index' if script == 'attack'
                        else '.data-00000-of-00001')
    flags = [f'--checkpoint={prefix}', '--classifier=PriL']
    flags = flags if script == 'attack' else flags[:1]
  _damage(damaged, 'truncate')
  proc = _script(f'{script}.py', *flags)
  assert proc.returncode == 1
  said = _said(proc.stderr)
  assert len(said) == 1, proc.stderr[-2000:]
  assert said[0].startswith(f'error: {damaged} is not a readable checkpoint '
                            'file (corrupt or truncated: ')
  assert not (tmp_path / 'out.index').exists()


def test_convert_script_writes_into_a_folder_quietly_and_keeps_it(tmp_path):
  src = write_tf1_checkpoint(tmp_path / 'model.ckpt',
                             random_tf1_weights(configs.MNIST))
  out = tmp_path / 'converted'
  out.mkdir()
  first = _script('convert_checkpoint.py', f'--tf1={src}', f'--out={out}')
  assert first.returncode == 0, first.stderr[-2000:]
  assert f'"out": "{out / "ckpt"}"' in first.stdout
  # No INFO line of TensorFlow's (one per checkpoint written, via absl).
  assert not re.search(r'^I\d{4} ', first.stderr, re.MULTILINE), first.stderr
  again = _script('convert_checkpoint.py', f'--tf1={src}', f'--out={out}')
  assert again.returncode == 1
  assert _said(again.stderr) == [
      f'error: {out / "ckpt"} is an existing checkpoint '
      f'({out / "ckpt.index"}); pass --overwrite (overwrite=True) to replace '
      'it, or another --out.']


def test_a_checkpoint_no_config_fits_is_a_clear_error(tmp_path):
  prefix = write_tf1_checkpoint(tmp_path / 'model.ckpt',
                                random_tf1_weights(configs.tiny_config()))
  with pytest.raises(checkpoints.CheckpointMismatchError) as err:
    loading.load_model(prefix)
  message = str(err.value)
  assert prefix in message and '\n' not in message
  assert 'tried mnist, fashion_mnist, mnist_original, svhn' in message
  other = write_tf1_checkpoint(tmp_path / 'other.ckpt',
                               {'encoder/w': np.zeros([2], np.float32)})
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='No SCAE part-encoder variable'):
    loading.load_model(other)


def test_a_given_config_wins_and_must_fit():
  with pytest.raises(checkpoints.CheckpointMismatchError, match='n_obj_caps'):
    loading.load_model(GOLDEN, configs.tiny_config(n_obj_caps=5))
  with pytest.raises(ValueError, match='Unknown config'):
    loading.load_model(GOLDEN, 'no_such_config')


def test_convert_writes_a_tf2_checkpoint_with_the_optimizer(tmp_path):
  config = configs.tiny_config()
  weights = random_tf1_weights(config, 'SCAE/')
  tensors = with_rmsprop_slots(weights, global_step=42, ms=2., mom=3.)
  src = write_tf1_checkpoint(tmp_path / 'model.ckpt', tensors)
  report = loading.convert_tf1_checkpoint(src, str(tmp_path / 'out'), config,
                                          with_optimizer=True)
  n_params = sum(w.size for w in weights.values())
  assert report == dict(path=src, n_tensors=len(weights), n_params=n_params,
                        optimizer_restored=True, config='tiny',
                        out=str(tmp_path / 'out'), global_step=42)
  loaded = loading.load_model(report['out'], optimizer=TF1RMSProp)
  assert loaded.config == config and loaded.format == 'tf2'
  assert int(loaded.optimizer.step.numpy()) == 42
  np.testing.assert_array_equal(loaded.optimizer.mom[0].numpy(), 3.)
  with pytest.raises(ValueError, match='already a TF2 checkpoint'):
    loading.convert_tf1_checkpoint(report['out'], str(tmp_path / 'again'))


@pytest.mark.fixtures
def test_convert_reference_checkpoint(tmp_path):
  src = str(reference_path('scae_mnist_init', 'model.ckpt'))
  out = tmp_path / 'teacher'
  proc = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'convert_checkpoint.py'),
       f'--tf1={src}', f'--out={out}'], capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '"n_params": 2420351' in proc.stdout
  assert '"config": "mnist"' in proc.stdout
  converted = loading.load_model(out)
  assert converted.config == configs.MNIST
  assert converted.config_source == loading.CONFIG_SAVED
  original = loading.load_model(src)
  for a, b in zip(converted.model.variables, original.model.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())

  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='shape mismatch'):
    loading.convert_tf1_checkpoint(src, str(tmp_path / 'x'), 'mnist_original')
  assert not (tmp_path / 'x.index').exists()
