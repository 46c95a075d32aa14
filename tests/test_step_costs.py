"""`benchmarks/step_costs.py`'s adaptive section (issue 13) times the
attacks' own compiled iterations on the inputs the attacks prepare and
reports them per step; its alternated timings reverse the order every other
round."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import configs
from scae_tf.capsules.model import SCAE
from conftest import REPO


@pytest.fixture(scope='module')
def step_costs():
  spec = importlib.util.spec_from_file_location(
      'step_costs', os.path.join(REPO, 'benchmarks', 'step_costs.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_adaptive_calls_run_what_the_attacks_run(step_costs):
  config = configs.tiny_config()
  model = SCAE(config.without_noise())
  kmeans = step_costs.random_kmeans(config)
  x = tf.random.stateless_uniform([3, 20, 20, 1], [1, 2])
  y = tf.constant([0, 1, 2], tf.int64)
  steps = 2
  # PosK only: PosL goes through the same lines, and each target costs
  # seconds of tracing.
  name = 'PosK'
  calls = step_costs.adaptive_calls(model, kmeans, x, y, steps, (name,))
  assert sorted(calls) == [f'apgd_{name}', f'attack_{name}', f'pgd_{name}']
  # The attack objects whose compiled functions the benchmark calls: their
  # own calls reuse the traces.
  for kind, schedule in (('pgd', 'fixed'), ('apgd', 'apgd')):
    fn, args = calls[f'{kind}_{name}']
    margin, success, _, l2 = fn(*args)
    margin_attack = fn.python_function.__self__
    assert margin_attack.name == name
    assert margin_attack.config.steps == steps
    assert margin_attack.config.schedule == schedule
    want = margin_attack(x, y)
    np.testing.assert_array_equal(margin.numpy(), want.margin)
    np.testing.assert_array_equal(success.numpy(), want.success)
    np.testing.assert_array_equal(np.where(success, l2, np.inf), want.l2)

  fn, args = calls[f'attack_{name}']
  best_l2, _, _ = fn(*args)
  capsule = fn.python_function.__self__
  assert capsule.classifier.name == name
  assert capsule.config.inner_iterations == steps
  want = capsule(x, y, seed=capsule.config.seed)
  np.testing.assert_array_equal(best_l2.numpy(), want.l2)


def test_adaptive_ratios_are_per_step(step_costs):
  seconds = dict(attack_PosL=6., pgd_PosL=3., apgd_PosL=12., attack_PosK=4.,
                 pgd_PosK=8., apgd_PosK=2.)
  t = step_costs.adaptive_ratios(seconds, steps=2)
  assert t == dict(
      attack_iteration_PosL=3., pgd_iteration_PosL=1.5,
      pgd_iteration_over_attack_iteration_PosL=.5,
      apgd_iteration_PosL=6., apgd_iteration_over_attack_iteration_PosL=2.,
      attack_iteration_PosK=2., pgd_iteration_PosK=4.,
      pgd_iteration_over_attack_iteration_PosK=2.,
      apgd_iteration_PosK=1., apgd_iteration_over_attack_iteration_PosK=.5)


def test_alternating_medians_reverse_every_other_round(step_costs):
  order = []

  def call(name):
    order.append(name)
    return tf.constant(0.)

  calls = {name: (call, (name,)) for name in 'abc'}
  medians = step_costs.alternating_medians(calls, rounds=2)
  assert ''.join(order) == 'abccbaabc'
  assert sorted(medians) == ['a', 'b', 'c']
