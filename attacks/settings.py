"""Checks and preset lookup shared by the attacks' frozen config classes
(`evasion.AttackConfig`, `pgd.PGDConfig`), so that every attack refuses a
bad setting with the same words before any work; and the label of a preset
whose settings were overridden (`preset_label`), which every report uses."""

import dataclasses
import numbers

import numpy as np


def check_positive_number(name: str, value):
  """ValueError unless `value` is a finite real > 0 (bools refused)."""
  if isinstance(value, bool) or not (isinstance(value, numbers.Real)
                                     and np.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be a positive number, got {value!r}.')


def check_choices(config, choices: dict):
  """ValueError unless each field `name` of `config` is one of
  `choices[name]`."""
  for name, allowed in choices.items():
    if getattr(config, name) not in allowed:
      raise ValueError(f'{name}={getattr(config, name)!r} is not one of '
                       f'{tuple(allowed)}.')


def check_integer(name: str, value, least: int = 1):
  """ValueError unless `value` is an integer >= least (bools refused)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
      or value < least:
    want = 'a positive integer' if least == 1 else f'an integer >= {least}'
    raise ValueError(f'{name} must be {want}, got {value!r}.')


def replace_fields(config, what: str, changes: dict):
  """`dataclasses.replace(config, **changes)`; unknown names are an error
  that lists the known ones (`what` names the attack in it)."""
  known = [f.name for f in dataclasses.fields(config)]
  unknown = sorted(set(changes) - set(known))
  if unknown:
    raise ValueError(f'Unknown {what} setting(s) {unknown}; known: '
                     f'{known}.')
  return dataclasses.replace(config, **changes) if changes else config


def preset_config(presets: dict, preset, config_type, what: str,
                  overrides: dict):
  """presets[preset] (or a `config_type` instance) with `overrides`."""
  if isinstance(preset, config_type):
    config = preset
  elif isinstance(preset, str) and preset in presets:
    config = presets[preset]
  else:
    raise ValueError(f'Unknown {what} preset {preset!r}; expected one of '
                     f'{", ".join(presets)} or a {config_type.__name__}.')
  return replace_fields(config, what, overrides)


#: How `preset_label` names a setting (the others by their field names).
SHORT_NAMES = dict(outer_iterations='outer', inner_iterations='inner')
#: The settings `preset_label` lists first, in this order; the others follow
#: in alphabetical order.
FIRST = ('outer_iterations', 'inner_iterations', 'steps', 'restarts',
         'search_steps', 'eps')


def changed_settings(preset, config) -> dict:
  """{field: value} of the config `config` where it differs from the
  config `preset`, in the fields' order."""
  before = dataclasses.asdict(preset)
  return {k: v for k, v in dataclasses.asdict(config).items()
          if before.get(k) != v}


def preset_label(preset: str, modified=None) -> str:
  """The words that name an attack's settings: the preset's name, and the
  settings that overrode it (`changed_settings`), as in 'paper_eval,
  modified: outer 2, inner 10' whatever the order of `modified`. Never the
  bare name of a modified preset."""
  if not modified:
    return str(preset)
  # An order of their own: settings.json stores them sorted.
  order = sorted(modified, key=lambda k: (
      FIRST.index(k) if k in FIRST else len(FIRST), k))
  return f'{preset}, modified: ' + ', '.join(
      f'{SHORT_NAMES.get(k, k)} {modified[k]}' for k in order)
