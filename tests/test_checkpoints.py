"""TF1 checkpoint import (upstream and fork namings) and the port's own
TF2 checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import reference_path
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf.model import SCAE
from scae_tf.optim import TF1RMSProp


def _variable_list(filename):
  entries = {}
  for line in reference_path(filename).read_text().splitlines():
    name, shape = line.split(' ', 1)
    entries[name] = [int(d) for d in shape.strip('[]').split(',') if d.strip()]
  return entries


def _port_names(config, prefix=''):
  model = SCAE(config)
  return {prefix + n: v.shape.as_list()
          for n, v in checkpoints.tf1_variable_map(model).items()}


@pytest.mark.fixtures
def test_fork_names_and_shapes_match_variables_txt():
  assert _port_names(configs.MNIST, 'SCAE/') == _variable_list('variables.txt')


@pytest.mark.fixtures
def test_upstream_names_and_shapes_match_run_mnist_list():
  assert (_port_names(configs.MNIST_ORIGINAL)
          == _variable_list('variables_original_run_mnist.txt'))


def _write_tf1_checkpoint(prefix, tensors):
  """A name-based checkpoint, as a TF1 Saver writes it."""
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return prefix


def _random_weights(config, prefix, seed=0):
  rng = np.random.RandomState(seed)
  model = SCAE(config)
  return {prefix + n: rng.randn(*v.shape).astype(np.float32)
          for n, v in checkpoints.tf1_variable_map(model).items()}


@pytest.mark.parametrize('prefix', ['', 'SCAE/', 'STU/'])
def test_load_tf1_checkpoint_any_scope_ignores_non_model_vars(tmp_path,
                                                              prefix):
  config = configs.tiny_config()
  weights = _random_weights(config, prefix)
  extra = dict(weights)
  first = next(iter(weights))
  extra['global_step'] = np.int64(7)
  extra[first + '/RMSProp'] = np.ones_like(weights[first])
  extra[first + '/ExponentialMovingAverage'] = weights[first] * 0
  extra['ema/loss'] = np.float32(1.)
  path = _write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), extra)

  model = SCAE(config)
  report = checkpoints.load_checkpoint(model, path)
  assert report['n_tensors'] == len(weights)
  for name, var in checkpoints.tf1_variable_map(model).items():
    np.testing.assert_array_equal(var.numpy(), weights[prefix + name])


def test_tf1_checkpoint_with_optimizer_slots(tmp_path):
  config = configs.tiny_config()
  weights = _random_weights(config, 'SCAE/')
  tensors = dict(weights, global_step=np.int64(42))
  for name, w in weights.items():
    if not name.endswith('dummy_vote'):
      tensors[name + '/RMSProp'] = np.full_like(w, 2.)
      tensors[name + '/RMSProp_1'] = np.full_like(w, 3.)
  path = _write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), tensors)
  model = SCAE(config)
  opt = TF1RMSProp(model.trainable_variables)
  checkpoints.load_tf1_checkpoint(model, path, optimizer=opt)
  assert int(opt.step.numpy()) == 42
  var_map = checkpoints.tf1_variable_map(model)
  i = [v.ref() for v in opt.variables_].index(
      var_map['set_transformer/inducing_points'].ref())
  np.testing.assert_array_equal(opt.ms[i].numpy(), 2.)
  np.testing.assert_array_equal(opt.mom[i].numpy(), 3.)


def test_mismatch_lists_everything_and_loads_nothing(tmp_path):
  config = configs.tiny_config()
  weights = _random_weights(config, 'SCAE/')
  del weights['SCAE/set_transformer/inducing_points']
  weights['SCAE/unknown/thing'] = np.zeros([2], np.float32)
  weights['SCAE/template_based_image_decoder/bg_value'] = np.zeros(
      [3], np.float32)
  path = _write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), weights)
  model = SCAE(config)
  before = [v.numpy().copy() for v in model.variables]
  with pytest.raises(checkpoints.CheckpointMismatchError) as err:
    checkpoints.load_checkpoint(model, path)
  message = str(err.value)
  assert 'missing from checkpoint (1)' in message
  assert 'set_transformer/inducing_points' in message
  assert 'unexpected in checkpoint (1)' in message and 'unknown/thing' in message
  assert 'shape mismatch (1)' in message and 'bg_value' in message
  for b, v in zip(before, model.variables):
    np.testing.assert_array_equal(b, v.numpy())


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing_here'):
    checkpoints.load_checkpoint(SCAE(configs.tiny_config()),
                                str(tmp_path / 'nothing_here'))


def test_tf2_round_trip_and_config_guard(tmp_path):
  config = configs.tiny_config()
  model = SCAE(config)
  opt = TF1RMSProp(model.trainable_variables)
  opt.step.assign(5)
  path = checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'ckpt'), opt)

  other = SCAE(config)
  other_opt = TF1RMSProp(other.trainable_variables)
  checkpoints.load_checkpoint(other, path, optimizer=other_opt)
  for a, b in zip(model.variables, other.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert int(other_opt.step.numpy()) == 5

  wrong = SCAE(configs.tiny_config(n_obj_caps=5))
  with pytest.raises(checkpoints.CheckpointMismatchError, match='n_obj_caps'):
    checkpoints.load_checkpoint(wrong, path)


@pytest.mark.fixtures
def test_convert_checkpoint_script(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  src = reference_path('scae_mnist_init', 'model.ckpt')
  out = tmp_path / 'teacher'
  proc = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'convert_checkpoint.py'),
       f'--tf1={src}', f'--out={out}'], capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '"n_params": 2420351' in proc.stdout
  converted, original = SCAE(configs.MNIST), SCAE(configs.MNIST)
  checkpoints.load_checkpoint(converted, str(out))
  checkpoints.load_checkpoint(original, str(src))
  for a, b in zip(converted.variables, original.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())

  bad = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'convert_checkpoint.py'),
       f'--tf1={src}', '--config=mnist_original', f'--out={tmp_path / "x"}'],
      capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and 'shape mismatch' in bad.stderr
  assert not (tmp_path / 'x.index').exists()
