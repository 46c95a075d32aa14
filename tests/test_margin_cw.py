"""The paper's search with the margin as loss (`attacks.margin_cw`, C&W L2)
on the linear toy of helpers/attack_toys.py."""

import types

import numpy as np
import pytest

from attacks import classifiers, margin_cw
from helpers.attack_toys import ToyConfig, linear_problem, toy_target


@pytest.mark.parametrize('name', ['PriL', 'PriK'])
def test_margin_cw_finds_the_closed_form_minimum(name):
  """The paper's search on the margin: L2 within 1 % of d (never below),
  along -w; the clean error (d < 0) succeeds too."""
  d = np.array([.1, .2, .3, -.05])
  _, w, x = linear_problem(d, seed=7)
  attack = margin_cw.MarginCWAttack(toy_target(w, name), learning_rate=.01,
                                    outer_iterations=12)
  r = attack(x, np.zeros(4, np.int64), seed=0)
  assert r.success.all()
  assert (r.l2[:3] >= d[:3] * (1 - 1e-4)).all()
  np.testing.assert_allclose(r.l2[:3], d[:3], rtol=1e-2)
  delta = (r.adversarial[:3] - x[:3]).reshape(3, -1)
  assert (-(delta @ w) / np.linalg.norm(delta, axis=1) > .99).all()


def test_margin_cw_preset_and_errors():
  config = margin_cw.get_config()
  assert (config.use_mask, config.const_coupling, config.const_init) == (
      False, 'example', 1.)
  with pytest.raises(ValueError, match='Unknown margin_cw preset'):
    margin_cw.get_config('paper_eval')
  model = types.SimpleNamespace(config=ToyConfig(),
                                capsule_features=(
                                    lambda x, kind, gradient: None))
  with pytest.raises(ValueError, match='no posterior linear probe'):
    margin_cw.MarginCWAttack(classifiers.make_classifier(model, 'PosL'))
