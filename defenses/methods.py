"""The four defences as data: which phases they run, from which weights,
at which learning rate (paper section 5, Algorithms 2-4, section 6.4).

A phase is AD (Eq. 8, against a frozen teacher) or AT (Eq. 7) for a number
of epochs. Its learning rate is the recipe's (3e-5, paper Table 2), decayed
0.96 per 10k steps or constant:

* 'code' (default): what the authors' code ran. AD and HAT's AD phase decay;
  AT, NTAT and HAT's AT phase run at a constant 3e-5, because the code builds
  the decayed rate but hands RMSProp the constant float.
* 'decay': paper Table 2 everywhere.

At a phase switch (HAT) the code restores the student into a new graph: the
RMSProp slots restart (ms = 1, mom = 0) and the global step carries on.

A preset names the phases' lengths: 'paper' (section 6.2) or 'cpu', a
DEVIATION for a 2-core CPU budget whose text goes into every run using it.
"""

import dataclasses
from typing import Optional, Tuple

LR_SCHEDULES = ('code', 'decay')
INITS = ('scratch', 'teacher')
#: AD's reconstruction target: 'input' is the authors' code (the student
#: reconstructs its own input x'); 'clean' is Eq. 8 as written (the clean x).
AD_TARGETS = ('input', 'clean')
#: The generators of the adversarial batches
#: (`defenses.adversarial_batches.GENERATORS`): here, without TensorFlow,
#: for `run/train_defense.py` to check its flags before it loads.
GENERATORS = ('paper_train', 'margin_pgd')


@dataclasses.dataclass(frozen=True)
class Phase:
  kind: str            # 'ad' or 'at'
  epochs: int
  lr_decay: bool


@dataclasses.dataclass(frozen=True)
class Method:
  """name; init: 'scratch' or 'teacher' (the student starts from the
  teacher's weights); phases: (kind, default epochs) in order."""
  name: str
  init: str
  phases: Tuple[Tuple[str, int], ...]
  description: str

  @property
  def needs_teacher(self) -> bool:
    return self.init == 'teacher' or any(k == 'ad' for k, _ in self.phases)

  def starting_from(self, init: Optional[str]) -> 'Method':
    """The method with the student's start `init` ('scratch' or 'teacher';
    None keeps the method's own). A start other than the method's own is a
    deviation (see `init_deviation`)."""
    if init is None or init == self.init:
      return self
    if init not in INITS:
      raise ValueError(f'Unknown init {init!r}; expected one of {INITS}.')
    return dataclasses.replace(self, init=init)


def init_deviation(method: Method) -> Optional[str]:
  """How `method`'s start departs from the paper's, in words, or None."""
  paper = METHODS[method.name].init
  if method.init == paper:
    return None
  start = dict(teacher="the teacher's weights", scratch='scratch')
  return (f'the student starts from {start[method.init]} instead of from '
          f'{start[paper]} (paper section 5)')


METHODS = {m.name: m for m in (
    Method('at', 'scratch', (('at', 100),),
           'adversarial training from scratch (Algorithm 2, Eq. 7)'),
    Method('ad', 'scratch', (('ad', 100),),
           'adversarial distillation from a frozen teacher (Algorithm 3, '
           'Eq. 8)'),
    Method('hat', 'scratch', (('ad', 50), ('at', 50)),
           'hybrid: n_ad epochs of AD, then n_at epochs of AT on the same '
           'student (Algorithm 4)'),
    Method('ntat', 'teacher', (('at', 50),),
           'the teacher (normal training) followed by AT with a fresh '
           'optimiser at step 0 (ablation, section 6.4)'),
)}


@dataclasses.dataclass(frozen=True)
class Preset:
  """Epochs per phase kind (None: the method's own, section 6.2) and, for a
  preset that departs from the paper, how."""
  name: str
  description: str
  epochs: Optional[Tuple[Tuple[str, int], ...]] = None
  deviation: Optional[str] = None


PRESETS = {p.name: p for p in (
    Preset('paper', 'section 6.2: AT and AD 100 epochs, HAT 50 + 50, NTAT '
           '50'),
    # An MNIST epoch holds 300 adversarial batches of 150 attack iterations:
    # about 2.7 hours on an idle 2-core CPU (RESULTS.md).
    Preset('cpu', 'one epoch per phase (HAT 1 + 1)',
           epochs=(('ad', 1), ('at', 1)),
           deviation='1 epoch per phase instead of section 6.2\'s 100 (AT, '
                     'AD), 50 + 50 (HAT) and 50 (NTAT), for a 2-core CPU '
                     'budget'),
)}


def get_preset(name: str) -> Preset:
  from scae_tf import named  # pylint: disable=g-import-not-at-top
  return named.lookup(PRESETS, name, 'preset')


def get_method(name: str) -> Method:
  from scae_tf import named  # pylint: disable=g-import-not-at-top
  return named.lookup(METHODS, name, 'method')


def plan(method: Method, ad_epochs: Optional[int] = None,
         at_epochs: Optional[int] = None, lr_schedule: str = 'code',
         epochs: Optional[int] = None, preset: str = 'paper'):
  """The method's phases with their epochs and learning-rate decay.

  `epochs` sets the length of a one-phase method; `ad_epochs` / `at_epochs`
  that of the method's AD / AT phase; either overrides the preset. Giving
  one for a phase the method does not have is an error.
  """
  if lr_schedule not in LR_SCHEDULES:
    raise ValueError(f'Unknown lr_schedule {lr_schedule!r}; expected one of '
                     f'{LR_SCHEDULES}.')
  preset = get_preset(preset) if isinstance(preset, str) else preset
  kinds = [k for k, _ in method.phases]
  if epochs is not None:
    if len(kinds) > 1:
      raise ValueError(f'--epochs does not apply to {method.name}, which has '
                       f'{len(kinds)} phases: use --ad_epochs and '
                       '--at_epochs.')
    if kinds[0] == 'ad' and ad_epochs is not None or \
        kinds[0] == 'at' and at_epochs is not None:
      raise ValueError(f'Give --epochs or --{kinds[0]}_epochs, not both.')
    if epochs < 1:
      raise ValueError(f'--epochs must be positive, got {epochs}.')
    ad_epochs, at_epochs = ((epochs, at_epochs) if kinds[0] == 'ad'
                            else (ad_epochs, epochs))
  for kind, value in (('ad', ad_epochs), ('at', at_epochs)):
    if value is None:
      continue
    if kind not in kinds:
      raise ValueError(f'--{kind}_epochs does not apply to {method.name}, '
                       f'which has no {kind.upper()} phase.')
    if value < 1:
      raise ValueError(f'--{kind}_epochs must be positive, got {value}.')
  chosen = dict(preset.epochs or ())
  chosen.update({k: v for k, v in (('ad', ad_epochs), ('at', at_epochs))
                 if v is not None})
  return tuple(
      Phase(kind, chosen.get(kind, default),
            lr_decay=(lr_schedule == 'decay' or kind == 'ad'))
      for kind, default in method.phases)


def phase_ends(phases, steps_per_epoch: int):
  """The step at which each phase ends."""
  ends, total = [], 0
  for phase in phases:
    total += phase.epochs * steps_per_epoch
    ends.append(total)
  return ends


def length_change_error(previous, phases, step: int,
                        steps_per_epoch: int) -> Optional[str]:
  """Why a run planned as `previous` and trained to `step` cannot go on as
  `phases` (same kinds, other epochs), or None if it can.

  A phase's length is pure length only while the run has not passed where
  the phase ends: the switch to the next phase (HAT's AD -> AT) happened,
  or will happen, at that step, and a resumed run must train the function
  an uninterrupted run of the new plan trains. So the end of a phase the
  run has reached is fixed, the end of the current one may move to any
  step not before `step`, and the last phase's length is free.
  """
  old_ends = phase_ends(previous, steps_per_epoch)
  new_ends = phase_ends(phases, steps_per_epoch)
  for index, (phase, old, new) in enumerate(
      zip(phases[:-1], old_ends, new_ends)):
    name = f'phase {index + 1} ({phase.kind.upper()})'
    if old <= step and new != old:
      return (f'{name} ended at step {old} and the run is at step {step}: '
              f'its length can no longer change (asked: {phase.epochs} '
              f'epochs, ending at step {new})')
    if old > step and new < step:
      return (f'{name} would end at step {new}, but the run has trained it '
              f'to step {step}')
  return None

