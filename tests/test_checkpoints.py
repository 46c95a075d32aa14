"""TF1 checkpoint import (upstream and fork namings) and the port's own
TF2 checkpoints."""

import numpy as np
import pytest

from conftest import random_tf1_weights
from conftest import reference_path
from conftest import with_rmsprop_slots
from conftest import write_tf1_checkpoint
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf.capsules.model import SCAE
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


@pytest.mark.parametrize('prefix', ['', 'SCAE/', 'STU/'])
def test_load_tf1_checkpoint_any_scope_ignores_non_model_vars(tmp_path,
                                                              prefix):
  config = configs.tiny_config()
  weights = random_tf1_weights(config, prefix)
  extra = dict(weights)
  first = next(iter(weights))
  extra['global_step'] = np.int64(7)
  extra[first + '/RMSProp'] = np.ones_like(weights[first])
  extra[first + '/ExponentialMovingAverage'] = weights[first] * 0
  extra['ema/loss'] = np.float32(1.)
  path = write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), extra)

  model = SCAE(config)
  report = checkpoints.load_checkpoint(model, path)
  assert report['n_tensors'] == len(weights)
  for name, var in checkpoints.tf1_variable_map(model).items():
    np.testing.assert_array_equal(var.numpy(), weights[prefix + name])


def test_tf1_checkpoint_with_optimizer_slots(tmp_path):
  config = configs.tiny_config()
  weights = random_tf1_weights(config, 'SCAE/')
  tensors = with_rmsprop_slots(weights, global_step=42, ms=2., mom=3.)
  path = write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), tensors)
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
  weights = random_tf1_weights(config, 'SCAE/')
  del weights['SCAE/set_transformer/inducing_points']
  weights['SCAE/unknown/thing'] = np.zeros([2], np.float32)
  weights['SCAE/template_based_image_decoder/bg_value'] = np.zeros(
      [3], np.float32)
  path = write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), weights)
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
