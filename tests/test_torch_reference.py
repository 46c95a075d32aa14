"""`benchmarks/torch_reference.py`, the PyTorch port (bdsaglam/torch-scae)
as a standing reference: without torch or a checkout it says in one line
what is missing; with both (TORCH_SCAE_DIR=<checkout>), its torch side
computes our attack's objective and the port's training step runs."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from attacks import objectives
from scae_tf import configs
from conftest import REPO

BENCHMARKS = os.path.join(REPO, 'benchmarks')


def load(name):
  """The benchmark script benchmarks/<name>.py as a module (its flags are
  defined only when it runs)."""
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
