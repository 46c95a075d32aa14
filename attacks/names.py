"""The names the attacks' settings choose from, without TensorFlow.

`run/attack.py` checks its flags against them before TensorFlow loads (a
bad name is refused in about a second instead of twenty); the attack
modules take them from here. The presets themselves (their settings) stay
in `attacks.evasion.PRESETS` and `attacks.pgd.PRESETS`, whose names are
these (`tests/test_early_flag_checks.py` checks it).
"""

#: The attack targets of the paper (`attacks.classifiers`).
CLASSIFIERS = ('PriK', 'PosK', 'PriL', 'PosL')
#: The paper's attack's optimisers (`attacks.optimizers.OPTIMIZERS`).
OPTIMIZERS = ('adam', 'rmsprop', 'sign')
#: The choices of `attacks.evasion.AttackConfig` (`attacks.objectives`).
SUBSET_RULES = ('batch', 'example')
CAPSULE_LOSSES = ('squared', 'sum')
CONST_COUPLINGS = ('batch', 'example')
SUCCESS_RULES = ('label', 'clean_prediction')
#: The presets of the paper's attack (`attacks.evasion.PRESETS`) and of
#: PGD (`attacks.pgd.PRESETS`).
PRESETS = ('paper_eval', 'paper_train', 'adam_normal', 'adam_complex',
           'rmsprop_fast', 'rmsprop_normal', 'rmsprop_complex', 'fgsm_fast')
PGD_PRESETS = ('pgd_l2', 'pgd_l2_min')


def classifier_name(name: str) -> str:
  """Canonical spelling of a target name ('posk' -> 'PosK'); ValueError if
  unknown."""
  for known in CLASSIFIERS:
    if isinstance(name, str) and name.lower() == known.lower():
      return known
  raise ValueError(f'Unknown classifier {name!r}; expected one of '
                   f'{", ".join(CLASSIFIERS)}.')
