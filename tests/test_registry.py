"""The attack registry (`attacks.registry`): what --attack names, and the
contract every registered attack keeps (`registry.Attack`), checked for
each entry on the linear toy of helpers/attack_toys.py: its entry names
what its module holds, it returns valid images of the inputs' shape, a
call is a function of its seed, and a run of the protocol resumes where it
stopped. An attack added to the registry is checked by adding its cheap
settings to QUICK."""

import dataclasses
import importlib
import os

import numpy as np
import pytest

from attacks import protocol, registry
from helpers.attack_toys import linear_problem, toy_target
from scae_tf.configs import GRADIENTS


def test_attack_names_take_a_list_in_the_papers_order():
  assert registry.attack_names('all') == ('capsule', 'pgd_l2', 'margin_cw',
                                         'ddn', 'fmn')
  assert registry.attack_names('fmn,ddn') == ('ddn', 'fmn')
  assert registry.attack_names('pgd_l2, capsule') == ('capsule', 'pgd_l2')
  assert registry.attack_names('margin_cw') == ('margin_cw',)
  with pytest.raises(ValueError, match='capsule listed twice'):
    registry.attack_names('capsule,pgd_l2,capsule')
  with pytest.raises(ValueError, match="unknown attack='all'; expected one "
                     'of capsule, pgd_l2, margin_cw, ddn, fmn.'):
    registry.attack_names('capsule,all')
  with pytest.raises(ValueError, match="unknown attack='fgsm'"):
    registry.attack_names('fgsm,pgd_l2')


def test_override_flags_name_settings_of_every_config_that_takes_them():
  fields = registry.override_flags()
  assert sorted(fields) == ['overrides', 'pgd_overrides']
  for name, entry in registry.ATTACKS.items():
    settings = {f.name for f in dataclasses.fields(entry.config_type())}
    for flag in entry.override_flags:
      assert flag.setting in settings, (name, flag)
      # A value of the flag's kind overrides the preset's setting.
      value = dict(integer=3, float=.5, boolean=False)[flag.kind] \
          if flag.kind != 'string' else getattr(
              entry.get_config(entry.presets[0]), flag.setting)
      config = entry.get_config(entry.presets[0], **{flag.setting: value})
      assert getattr(config, flag.setting) == value, (name, flag)
  flags = [f.flag for fl in fields.values() for f in fl]
  assert len(flags) == len(set(flags))


def test_attacks_sharing_an_overrides_field_must_share_its_flags(
    monkeypatch):
  entry = registry.ATTACKS['margin_cw']
  monkeypatch.setitem(registry.ATTACKS, 'margin_cw', dataclasses.replace(
      entry, override_flags=registry.PAPER_OVERRIDES[:2]))
  with pytest.raises(ValueError, match="sharing 'overrides'"):
    registry.override_flags()


# --- the contract, for every registered attack -------------------------------

#: Settings that make each registered attack cheap on the toy (seconds).
QUICK = dict(capsule=dict(outer_iterations=2, inner_iterations=5),
             pgd_l2=dict(steps=5, restarts=2),
             margin_cw=dict(outer_iterations=2, inner_iterations=30),
             ddn=dict(steps=10), fmn=dict(steps=10))
#: Distances of the toy's images from its boundary.
DISTANCES = [.05, .1, .2, .3]


def test_every_registered_attack_has_quick_settings_here():
  assert sorted(QUICK) == sorted(registry.NAMES)


@pytest.fixture(params=registry.NAMES)
def attack(request):
  """(name, a function that makes the registered attack at its first
  preset with QUICK settings on the linear toy, the toy's images, their
  labels)."""
  name = request.param
  entry = registry.ATTACKS[name]
  _, w, x = linear_problem(DISTANCES, seed=5)
  target = toy_target(w, 'PriL')
  config = entry.get_config(entry.presets[0], **QUICK[name])
  return (name, lambda: entry.attack_type()(target, config), x,
          np.zeros(len(x), np.int64))


def test_a_registered_attack_is_named_by_its_entry(attack):
  name, make, _, _ = attack
  entry = registry.ATTACKS[name]
  module = importlib.import_module(entry.module)
  assert set(entry.presets) <= set(module.PRESETS)
  assert entry.gradient in GRADIENTS
  made = make()
  assert isinstance(made, registry.Attack)
  assert isinstance(made.config, entry.config_type())
  assert made.config == entry.get_config(entry.presets[0], **QUICK[name])


def test_a_registered_attack_returns_valid_images_of_the_inputs_shape(attack):
  _, make, x, labels = attack
  ticks = []
  r = make()(x, labels, seed=7, callback=lambda i, n: ticks.append((i, n)))
  n = len(x)
  assert r.adversarial.shape == x.shape and r.adversarial.dtype == np.float32
  assert r.success.shape == (n,) and r.success.dtype == bool
  assert r.l2.shape == (n,) and r.l2.dtype == np.float32
  assert r.clean_pred.shape == (n,) and r.clean_pred.dtype == np.int64
  assert ticks and all(0 <= i < total for i, total in ticks)
  assert r.success.any()
  kept = r.adversarial[r.success]
  assert np.isfinite(kept).all() and kept.min() >= 0. and kept.max() <= 1.
  np.testing.assert_allclose(
      r.l2[r.success],
      np.sqrt(np.sum(np.square(kept - x[r.success]), axis=(1, 2, 3))),
      rtol=1e-4)
  assert np.isinf(r.l2[~r.success]).all()


def test_a_registered_attack_is_a_function_of_its_seed(attack):
  _, make, x, labels = attack
  made = make()
  first = made(x, labels, seed=7)
  # Called again, and a new object called first: the same arrays.
  for result in (made(x, labels, seed=7), make()(x, labels, seed=7)):
    for key in ('adversarial', 'success', 'l2', 'clean_pred'):
      np.testing.assert_array_equal(getattr(result, key),
                                    getattr(first, key), err_msg=key)


def test_a_registered_attack_resumes_a_run_where_it_stopped(attack, tmp_path):
  """Through the protocol: a second run skips the finished batches and
  ends with the arrays of the first."""
  _, make, x, labels = attack
  made, calls = make(), []

  def counted(*args, **kwargs):
    calls.append(1)
    return made(*args, **kwargs)

  out = str(tmp_path / 'run')
  first = protocol.run_protocol(counted, x, labels, out, batch_size=2,
                                progress=False)
  assert len(calls) == 2
  os.remove(protocol.batch_path(out, 1))
  again = protocol.run_protocol(counted, x, labels, out, batch_size=2,
                                progress=False)
  assert len(calls) == 3  # batch 1 alone
  assert sorted(first) == sorted(again)
  for key, array in first.items():
    np.testing.assert_array_equal(again[key], array, err_msg=key)
