"""`benchmarks/torch_reference.py`, the PyTorch port (bdsaglam/torch-scae)
as a standing reference: without torch or a checkout it says in one line
what is missing; with both (TORCH_SCAE_DIR=<checkout>), its torch side
computes our attack's objective and the port's training step runs.

`benchmarks/attack_profile.py`'s attribution of ops to the parts of an
attack iteration, on names as TensorFlow and XLA write them."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from attacks import objectives
from scae_tf import configs
from test_attacks import REPO

BENCHMARKS = os.path.join(REPO, 'benchmarks')


def load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(BENCHMARKS, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def torch_installed():
  return importlib.util.find_spec('torch') is not None


@pytest.mark.parametrize('checkout', [None, 'empty folder'])
def test_without_the_port_one_line_says_what_is_missing(tmp_path, checkout):
  args = [] if checkout is None else [f'--torch_scae={tmp_path}']
  run = subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, 'torch_reference.py'), *args],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 1
  assert run.stdout == ''
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('torch_reference: '), lines
  if not torch_installed():
    assert 'torch is not installed' in lines[0]
  elif checkout is None:
    assert 'no checkout of the port given: --torch_scae=' in lines[0]
  else:
    assert f'no torch-scae checkout at {tmp_path}' in lines[0]


@pytest.fixture(scope='module')
def port():
  """(torch_reference module, its port factory), or skip saying why."""
  if not torch_installed():
    pytest.skip('torch is not installed (the PyTorch reference is optional)')
  checkout = os.environ.get('TORCH_SCAE_DIR')
  if not checkout:
    pytest.skip('TORCH_SCAE_DIR (a checkout of bdsaglam/torch-scae) is not '
                'set')
  reference = load('torch_reference')
  problem = reference.missing(checkout)
  if problem:
    pytest.skip(problem)
  return reference, reference.port_modules(checkout)


def test_the_ports_side_computes_our_attack_objective(port):
  import torch  # pylint: disable=g-import-not-at-top
  reference, factory = port
  config = configs.tiny_config()
  model = factory.make_scae(reference.port_params(config, noise=False))
  images = tf.random.stateless_uniform([3, 20, 20, 1], [1, 2])
  x, w, mask, subset, const, p = reference.port_attack_inputs(model, images,
                                                              100.)
  nhwc = lambda t: tf.constant(np.transpose(t.detach().numpy(), (0, 2, 3, 1)))
  np.testing.assert_array_equal(nhwc(x).numpy(), images.numpy())
  # The start, the mask and the subset are the attack's.
  with torch.no_grad():
    clean = model(x).posterior_mixing_prob.sum(-1)
  np.testing.assert_array_equal(subset.numpy(), objectives.capsule_subset(
      tf.constant(clean.numpy()), 'batch').numpy())
  p.requires_grad_(True)
  loss, features, _, x_adv, c_loss, p_loss = reference.port_objective(
      model, p, w, mask, x, subset, const, config.n_part_caps)
  np.testing.assert_allclose(nhwc(x_adv).numpy(), objectives.adversarial_images(
      objectives.to_tanh_space(images), objectives.blur_mask(images),
      nhwc(p)).numpy(), atol=1e-6)
  # Its losses are ours on the port's masses and images.
  want_c = objectives.capsule_loss(tf.constant(features.detach().numpy()),
                                   tf.constant(subset.numpy()), 'posterior',
                                   config.n_part_caps)
  want_p = objectives.perturbation_loss(nhwc(x_adv), images)
  want = objectives.total_loss(want_c, want_p, tf.constant(const.numpy()))
  assert float(want_c.numpy().sum()) > 0.
  np.testing.assert_allclose(c_loss.detach().numpy(), want_c.numpy(),
                             rtol=1e-5)
  np.testing.assert_allclose(p_loss.detach().numpy(), want_p.numpy(),
                             rtol=1e-5)
  np.testing.assert_allclose(loss.item(), float(want.numpy()), rtol=1e-5)
  # One outer call of its attack loop, and one training step, run.
  labels = torch.tensor([0, 1, 2])
  best_l2, best_img, hit = reference.port_attack(model, config.n_part_caps)(
      x, w, mask, subset, labels, const, p.detach(), 2)
  assert best_l2.shape == (3,) and best_img.shape == x.shape
  assert hit.dtype == torch.bool
  trained = factory.make_scae(reference.port_params(config))
  step = reference.port_train_step(trained, 1e-4, 3)
  assert np.isfinite(step(x, labels).item())


def test_attack_profile_attributes_ops_to_the_iterations_parts():
  profile = load('attack_profile')
  part_of = profile.part_of
  for name, kind, want in [
      ('while/body/_1/scae/part_encoder/conv_net_2d/Relu_1',
       '_MklNativeFusedConv2D', ('CNN', 'forward')),
      ('while/body/_1/gradient_tape/scae/part_encoder/conv_net_2d/'
       'Conv2DBackpropInput_2', 'Conv2DBackpropInput', ('CNN', 'backward')),
      ('gradient_tape/scae/part_encoder/conv_net_2d/Conv2DBackpropFilter',
       'Conv2DBackpropFilter', ('filter gradients', 'backward')),
      ('while/body/_1/gradient_tape/scae/part_encoder/mul/Mul', 'Mul',
       ('part capsule heads', 'backward')),
      ('scae/set_transformer/self_attention/linear/Tensordot/MatMul',
       'MatMul', ('Set Transformer', 'forward')),
      ('while/body/_1/scae/object_capsules/capsule_likelihood/Softmax',
       'Softmax', ('capsule likelihood', 'forward')),
      ('scae/object_capsules/batch_mlp/batch_linear/MatMul', 'BatchMatMulV2',
       ('object capsules', 'forward')),
      ('scae/template_decoder/resampler/Resampler', 'Resampler',
       ('not read by the objective', 'forward')),
      ('scae/classification_probe_1/linear/Tensordot/MatMul', 'MatMul',
       ('not read by the objective', 'forward')),
      ('scae/classification_probe/ArgMax', 'ArgMax', ('probe', 'forward')),
      ('while/body/_1/while/SelectV2_1', 'SelectV2', (profile.PARTS[8],
                                                      'forward')),
  ]:
    assert part_of(name, kind) == want, name
  hlo = profile.hlo_ops('\n'.join([
      '%parallel_convolution.38 (p.19: f32[100,9,9,128]) -> f32[1] {',
      '  ROOT %convolution.38.clone = f32[100,19,19,128]{3,2,1,0} '
      'convolution(f32[100,9,9,128]{3,2,1,0} %p.19), window={size=3x3}, '
      'metadata={op_type="Conv2DBackpropInput" op_name="gradient_tape/scae/'
      'part_encoder/conv_net_2d/Conv2DBackpropInput_2" source_line=1}',
      '  %call.13 = f32[100,19,19,128]{3,2,1,0} call(f32[1] %a), '
      'to_apply=%parallel_convolution.38, metadata={op_type="Conv2D" '
      'op_name="x"}',
      '  %dot.289 = f32[24,100,256]{2,1,0} dot(f32[24,100,128]{2,1,0} %c), '
      'metadata={op_type="BatchMatMulV2" op_name="scae/object_capsules/'
      'batch_mlp/batch_linear/MatMul"}']))
  assert hlo == {
      'convolution.38.clone': (
          'gradient_tape/scae/part_encoder/conv_net_2d/Conv2DBackpropInput_2',
          'Conv2DBackpropInput'),
      'dot.289': ('scae/object_capsules/batch_mlp/batch_linear/MatMul',
                  'BatchMatMulV2')}
