"""A training run's folder: its identity (`run.json`) with the length a
resumed run may change, its log, and the guard that keeps two different
runs out of one folder; on `scae_tf.run_folder`, which every kind of run's
folder shares (identity check, lock, overwrite, checkpoints)."""

import dataclasses
import json
import os

from scae_tf import files
from scae_tf import run_folder
from scae_tf.run_folder import CHECKPOINT_DIR
# A run's lock is every run folder's (`scae_tf.run_folder`); kept under its
# old names here too.

RUN_FILE = 'run.json'
LOG_FILE = 'log.jsonl'
TB_DIR = 'tb'
#: Everything a run writes in its folder; `--overwrite` deletes these only.
LAYOUT = run_folder.Layout(identity=RUN_FILE, files=(LOG_FILE,),
                           folders=(CHECKPOINT_DIR, TB_DIR))


class RunMismatchError(run_folder.IdentityMismatchError):
  """The log directory holds a run with other settings, or no run."""


def run_settings(config, recipe=None, **settings):
  """The JSON-able identity of a run: its model config, its training recipe
  and the other settings that decide its future."""
  identity = dict(config=dataclasses.asdict(config), **settings)
  if recipe is not None:
    identity['recipe'] = dataclasses.asdict(recipe)
  return json.loads(json.dumps(identity))


#: The recipe's fields that say how long a run trains, not what it trains
#: (and the deviation text, which follows from the recipe): a run asked to
#: train longer or shorter resumes from its newest checkpoint, the learning
#: rate being a function of the step.
LENGTH_FIELDS = ('epochs', 'train_steps', 'deviation')
#: A phased run's (the defences') settings: its phases, each with its
#: length in `epochs`; the preset, which names those lengths; and the
#: deviations, text that follows from the other settings. The trainer
#: checks that a changed phase length is still possible at the run's step
#: (`defenses.methods.length_change_error`): a switch already made stays.
PHASES_KEY = 'phases'
DERIVED_KEYS = ('preset', 'deviations')
#: run.json's record of the lengths a run was asked to train to, in order.
LENGTHS_KEY = 'lengths'


def _identity(settings):
  """`settings` without its length: what must match to resume a run."""
  identity = json.loads(json.dumps(settings))
  for name in (LENGTHS_KEY,) + DERIVED_KEYS:
    identity.pop(name, None)
  if isinstance(identity.get('recipe'), dict):
    for name in LENGTH_FIELDS:
      identity['recipe'].pop(name, None)
  for phase in identity.get(PHASES_KEY) or ():
    phase.pop('epochs', None)
  return identity


def _length(settings):
  recipe = settings.get('recipe') or {}
  length = {k: recipe.get(k) for k in LENGTH_FIELDS[:2] if k in recipe}
  if PHASES_KEY in settings:
    length['phase_epochs'] = [p['epochs'] for p in settings[PHASES_KEY]]
  return length


def length_change(logdir, settings):
  """What resuming the run in `logdir` with `settings` does to its length,
  in words ('the run's length changes: train_steps 2 -> 4; ...'), or None
  when there is no run or its length is the same."""
  previous = previous_settings(logdir)
  if previous is None or _length(previous) == _length(settings):
    return None
  old, new = _length(previous), _length(settings)
  changed = ', '.join(f'{k} {old.get(k)} -> {new.get(k)}'
                      for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k))
  return (f"the run's length changes: {changed}; run.json keeps every "
          f'length asked for (`{LENGTHS_KEY}`)')


def previous_settings(logdir):
  """The settings in `logdir`'s run.json, or None."""
  return run_folder.read_identity(logdir, RUN_FILE)


def check_logdir(logdir, settings, overwrite=False):
  """Raises RunMismatchError unless `prepare_logdir` would accept `logdir`;
  writes nothing. Returns True if the run there would be resumed (also to
  another length: `LENGTH_FIELDS`)."""
  if os.path.exists(os.path.join(logdir, RUN_FILE)):
    if overwrite:
      return False
    run_folder.check_identity(
        logdir, RUN_FILE, settings, compared=_identity, error=RunMismatchError,
        advice='. Use another --logdir, or --overwrite to restart it.')
    return True
  foreign = run_folder.foreign_entries(logdir, LAYOUT)
  if foreign:
    shown = ', '.join(foreign[:5]) + (', ...' if len(foreign) > 5 else '')
    raise RunMismatchError(
        f'{logdir} holds no {RUN_FILE} and files that no run wrote '
        f'({shown}); refusing to write into it, with or without '
        '--overwrite. Use another --logdir.')
  # What a run wrote but its lock, which the run about to write takes first.
  entries = (sorted(set(os.listdir(logdir)) - {run_folder.LOCK_FILE})
             if os.path.isdir(logdir) else [])
  if entries and not overwrite:
    raise RunMismatchError(
        f'{logdir} holds the remains of a run without its {RUN_FILE} '
        f'({", ".join(entries)}); use --overwrite to delete them.')
  return False


def prepare_logdir(logdir, settings, overwrite=False):
  """Creates `logdir`, or checks that the run there has the same settings.

  Refuses (RunMismatchError) a folder that holds another run unless
  `overwrite`, and a folder that holds no run but files of another origin
  even with `overwrite`. `overwrite` restarts the run: it deletes what a run
  writes (LAYOUT), also with the same settings, and leaves other files.
  A resumed run's folders must be writable (NotWritableError, before any
  work). Returns True if the run there is resumed.
  """
  if check_logdir(logdir, settings, overwrite):
    for name in ('', CHECKPOINT_DIR, TB_DIR):
      if os.path.isdir(os.path.join(logdir, name)):
        files.check_writable(os.path.join(logdir, name))
    previous = previous_settings(logdir)
    if _length(previous) != _length(settings):
      # Extended or shortened: the new length, and every length asked for.
      history = previous.get(LENGTHS_KEY) or [_length(previous)]
      run_folder.write_identity(logdir, RUN_FILE, dict(settings, **{
          LENGTHS_KEY: history + [_length(settings)]}))
    return True
  run_folder.remove_outputs(logdir, LAYOUT)
  files.check_writable(logdir)
  run_folder.write_identity(logdir, RUN_FILE, settings)
  return False


class JsonlLog:
  """Appends one JSON object per line; readable while training runs."""

  def __init__(self, path):
    self.path = path

  def write(self, record):
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def truncate_after(self, step):
    """Drops records past `step`: a resumed run redoes those steps.

    Returns the largest `wall_time` among the kept records (0 if none), so a
    resumed run's clock continues where the interrupted one stopped instead
    of restarting at zero and folding two runs onto one time axis.
    """
    if not os.path.exists(self.path):
      return 0.0
    with open(self.path) as f:
      lines = f.readlines()
    keep, wall_time = [], 0.0
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # the partial last line of a run killed while writing it
      if record['step'] <= step:
        keep.append(line if line.endswith('\n') else line + '\n')
        wall_time = max(wall_time, record.get('wall_time', 0.0))
    files.write_text(self.path, ''.join(keep))
    return wall_time
