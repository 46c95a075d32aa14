"""The attack registry (`attacks.registry`): what --attack names, and the
contract every registered attack keeps."""

import pytest

from attacks import registry


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
