"""The attacks a run can name, one entry each, and the call they all answer.

`ATTACKS` is the one table of them: for each name, the module that holds
it, its attack class and config type there, the presets it may run, the
field of `attacks.run_spec.AttackRun` (a flag of `run/attack.py`) that
chooses its preset, the flags that override single settings of it, and
the input gradient it follows unless told otherwise. `attacks.pipeline` builds every attack of a
run from it, and `run/attack.py` takes from it the choices of --attack, what
"all" runs, its preset flags and its override flags; `tests/test_registry.py` runs every entry
through the contract below. Adding an attack is one entry here (and, if it
needs them, the AttackRun fields of its preset and override flags).

The table names modules and classes as strings: they import TensorFlow,
and this module must not, so that `run/attack.py` refuses a bad flag before
TensorFlow loads. `Entry.attack_type` and `Entry.get_config` import them when a
run builds its attacks.

The contract (`Attack`): an attack class is built as `cls(classifier,
config)` (a target of `attacks.classifiers`, and its config or a preset's
name) and called as `attack(images, labels, seed=None, callback=None)`:
images [B, H, W, C] floats in [0, 1] and labels [B] integers, validated
(`attacks.evasion.validate_inputs`); `seed` makes the call a function of
its inputs; `callback(i, n)` is called as the work advances (i of n), for a
progress bar. It returns an `AttackResult`.
"""

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Protocol, Tuple
from typing import runtime_checkable

import numpy as np

from attacks import names
from scae_tf import cli


class AttackResult(Protocol):
  """What every attack returns (numpy arrays; attacks add fields).

  adversarial: [B, H, W, C] float32, the kept image; NaN (or the clean
    image, as the config's `on_failure` says) where the attack failed, the
    clean image for a clean error.
  success: [B] bool, the classifier misclassifies `adversarial`.
  l2: [B] float32 ||adversarial - x||_2, inf where it failed.
  clean_pred: [B] int64 the classifier's prediction on the clean images.
  """
  adversarial: np.ndarray
  success: np.ndarray
  l2: np.ndarray
  clean_pred: np.ndarray


@runtime_checkable
class Attack(Protocol):
  """An attack object (module doc): its settings, and its call."""
  config: Any

  def __call__(self, images: np.ndarray, labels: np.ndarray,
               seed: Optional[int] = None,
               callback: Optional[Callable[[int, int], None]] = None
               ) -> AttackResult:
    ...


@dataclasses.dataclass(frozen=True)
class OverrideFlag:
  """A flag of `run/attack.py` that overrides one setting of a preset.

  flag: the flag's name; setting: the config field it sets; kind: the
  absl flag type (integer, float, string, boolean); help: its help.
  """
  flag: str
  setting: str
  kind: str
  help: str


#: The settings of the paper's attack (and of margin_cw, its search on the
#: margin) that a run may override, as `AttackConfig` names them.
PAPER_OVERRIDES = (
    OverrideFlag('outer_iterations', 'outer_iterations', 'integer',
                 'Override the preset.'),
    OverrideFlag('inner_iterations', 'inner_iterations', 'integer',
                 'Override the preset.'),
    OverrideFlag('learning_rate', 'learning_rate', 'float',
                 'Override the preset.'),
    OverrideFlag('const_init', 'const_init', 'float',
                 'Override the preset (alpha_0).'),
    OverrideFlag('optimizer', 'optimizer', 'string',
                 'Override: adam, rmsprop or sign.'),
    OverrideFlag('use_mask', 'use_mask', 'boolean',
                 'Override: blurred-image mask.'),
    OverrideFlag('subset', 'subset', 'string',
                 'Override: batch (fork) or example (paper formula 4).'),
    OverrideFlag('capsule_loss', 'capsule_loss', 'string',
                 'Override: squared (fork) or sum (paper formula 3).'),
    OverrideFlag('const_coupling', 'const_coupling', 'string',
                 'Override: batch (fork) or example.'),
    OverrideFlag('success', 'success', 'string',
                 'Override: label (fork) or clean_prediction (paper).'),
)
#: PGD's, by `PGDConfig`'s names (the flags say PGD).
PGD_OVERRIDES = (
    OverrideFlag('pgd_steps', 'steps', 'integer',
                 'Override the PGD preset: steps.'),
    OverrideFlag('pgd_restarts', 'restarts', 'integer',
                 'Override the PGD preset: restarts.'),
    OverrideFlag('search_steps', 'search_steps', 'integer',
                 'Override the PGD preset: binary-search rounds (0 = fixed '
                 'budget).'),
)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One attack of the table.

  module: the module that holds the attack, its `get_config(preset,
    **overrides)` and its PRESETS.
  attack_class, config_class: their names in `module`.
  presets: the presets a run may choose for it, by name; the first is the
    one it runs when no field chooses (`preset_field` None).
  description: what it is, in the help of --attack.
  preset_field: the `AttackRun` field (and flag) naming its preset, or None.
  what: how the errors name it ('Unknown PGD preset'), as its module's
    `get_config` does.
  overrides_field: the `AttackRun` field with settings that override its
    preset's, or None.
  override_flags: the flags that fill `overrides_field`
    (`OverrideFlag`s); attacks that share the field share the flags.
  budget: its config has an L2 budget `eps` and a minimal-norm search
    (`search_steps`): `AttackRun.eps` sets the budget (`with_budget`).
  gradient: the input gradient it follows unless told otherwise
    (`scae_tf.configs.GRADIENTS`).
  """
  module: str
  attack_class: str
  config_class: str
  presets: Tuple[str, ...]
  description: str
  preset_field: Optional[str] = None
  what: str = 'attack'
  overrides_field: Optional[str] = None
  override_flags: Tuple[OverrideFlag, ...] = ()
  budget: bool = False
  gradient: str = 'full'

  def _load(self, name: str):
    return getattr(importlib.import_module(self.module), name)

  def attack_type(self):
    """The attack class (imports its module, and TensorFlow)."""
    return self._load(self.attack_class)

  def config_type(self):
    """The class of its configs."""
    return self._load(self.config_class)

  def get_config(self, preset: str, **overrides):
    """Its module's `get_config`: the preset `preset` with `overrides`."""
    return self._load('get_config')(preset, **overrides)

  def preset(self, run) -> str:
    """The preset that `run` (an `AttackRun`) chooses for this attack."""
    return getattr(run, self.preset_field) if self.preset_field \
        else self.presets[0]

  def overrides(self, run) -> Mapping[str, Any]:
    """The settings of `run` that override the preset's."""
    return (getattr(run, self.overrides_field) or {}) \
        if self.overrides_field else {}

  def configs(self, run, threshold: float):
    """(its preset's config as it is, the config `run` asks for), both
    seeded by the run's seed: the labels of the reports name the settings
    where the two differ. A budget attack runs at the run's eps, else at
    `with_budget`'s default for `threshold` (the preset's own config too,
    without the run's eps)."""
    preset = self.preset(run)
    plain = self.get_config(preset, seed=run.seed)
    config = self.get_config(preset, seed=run.seed, **self.overrides(run))
    if self.budget:
      plain = with_budget(plain, None, threshold)
      config = with_budget(config, run.eps, threshold)
    return plain, config


def with_budget(config, eps: Optional[float], threshold: float):
  """A budget attack's config at budget `eps`: given, else the threshold
  for a fixed budget (its robust accuracy there is the number to report),
  else the preset's search ceiling."""
  if eps is None and not config.search_steps:
    eps = threshold
  return config if eps is None else dataclasses.replace(config, eps=eps)


#: The paper's attack first: the worst case counts the samples where each
#: other attack needs less than it.
ATTACKS = {
    'capsule': Entry(
        'attacks.evasion', 'CapsuleAttack', 'AttackConfig', names.PRESETS,
        "the paper's attack, on the capsules' presences, preset --preset",
        preset_field='preset', overrides_field='overrides',
        override_flags=PAPER_OVERRIDES, gradient='code'),
    'pgd_l2': Entry(
        'attacks.pgd', 'PGDAttack', 'PGDConfig', names.PGD_PRESETS,
        "PGD-L2 on the classifier's margin, preset --pgd_preset: pgd_l2_min "
        'searches the smallest budget per sample below --eps (default 10) '
        'and gives a curve, pgd_l2 attacks at the budget --eps (default the '
        'threshold)',
        preset_field='pgd_preset', what='PGD',
        overrides_field='pgd_overrides', override_flags=PGD_OVERRIDES,
        budget=True),
    'margin_cw': Entry(
        'attacks.margin_cw', 'MarginCWAttack', 'AttackConfig', ('margin_cw',),
        "the paper's search on the classifier's margin, C&W style, whose "
        'settings the flags that override --preset override too',
        overrides_field='overrides', override_flags=PAPER_OVERRIDES),
    'ddn': Entry(
        'attacks.ddn', 'DDNAttack', 'DDNConfig', ('ddn',),
        'Decoupled Direction and Norm, Rony et al. 2019, 100 steps, '
        'in-graph'),
    'fmn': Entry(
        'attacks.foolbox_attacks', 'FoolboxAttack', 'FoolboxConfig', ('fmn',),
        'Fast Minimum-Norm, Pintor et al. 2021, through Foolbox'),
}
NAMES = tuple(ATTACKS)
#: What --attack takes: one attack, or 'all' of them (or names joined by
#: commas, `attack_names`).
CHOICES = NAMES + ('all',)


def override_flags() -> Mapping[str, Tuple[OverrideFlag, ...]]:
  """{`AttackRun` field: the flags that fill it}, over every entry, each
  field once (in the order of NAMES)."""
  fields = {}
  for entry in ATTACKS.values():
    if entry.overrides_field:
      known = fields.setdefault(entry.overrides_field, entry.override_flags)
      if known != entry.override_flags:
        raise ValueError(f'attacks sharing {entry.overrides_field!r} must '
                         'share its override flags.')
  return fields


def attack_names(attack: str) -> Tuple[str, ...]:
  """The attacks that `attack` ('all', a name or names joined by commas)
  runs, in the order of NAMES; UsageError for an unknown or repeated
  name."""
  if attack == 'all':
    return NAMES
  given = [n.strip() for n in str(attack).split(',')]
  for n in given:
    cli.check_choice('attack', n, CHOICES if len(given) == 1 else NAMES)
  repeated = sorted({n for n in given if given.count(n) > 1})
  if repeated:
    raise cli.UsageError(f'attack {", ".join(repeated)} listed twice in '
                         f'{attack!r}.')
  return tuple(n for n in NAMES if n in given)


def help_text() -> str:
  """The help of --attack: every attack, and how to name several."""
  return (' '.join(f'{n}: {e.description}.' for n, e in ATTACKS.items())
          + f' Several joined by commas ({NAMES[0]},{NAMES[1]}), or all.')
