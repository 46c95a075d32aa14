"""A run's folder: its identity (`run.json`), its log, its lock, and the
guard that keeps two different runs out of one folder."""

import dataclasses
import fcntl
import json
import os
import re
import shutil

from scae_tf import files

RUN_FILE = 'run.json'
LOG_FILE = 'log.jsonl'
CHECKPOINT_DIR = 'ckpt'
# A checkpoint is <logdir>/<CHECKPOINT_DIR>/<CHECKPOINT_NAME>-<step>.
CHECKPOINT_NAME = 'ckpt'
TB_DIR = 'tb'
LOCK_FILE = '.lock'
# Everything a run writes in its folder; `--overwrite` deletes these only.
RUN_ENTRIES = (RUN_FILE, LOG_FILE, CHECKPOINT_DIR, TB_DIR, LOCK_FILE)
# What an atomic write of RUN_FILE or LOG_FILE killed before its rename
# leaves (see `scae_tf.files`).
_RUN_TEMPORARY = re.compile(
    rf'({re.escape(RUN_FILE)}|{re.escape(LOG_FILE)})\.[0-9a-f]{{12}}\.tmp')


class RunMismatchError(ValueError):
  """The log directory holds a run with other settings, or no run."""


class FolderInUseError(OSError):
  """Another process holds the folder's lock."""


class FolderLock:
  """An exclusive lock on a folder, for the life of a run that writes there.

  `fcntl.flock` on `<folder>/.lock`, which holds the holder's pid. The kernel
  releases it when the holder exits, however it dies, so a lock file left by
  a killed run never blocks the next one. Release with `release()`, a `with`
  block, or by dropping the object.
  """

  def __init__(self, folder):
    self._fd = None
    self.folder = os.fspath(folder)
    os.makedirs(files.check_writable(self.folder), exist_ok=True)
    path = os.path.join(self.folder, LOCK_FILE)
    # Not truncated on open: that would erase the holder's pid.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 32).decode(errors='replace').strip()
      os.close(fd)
      raise FolderInUseError(
          f'{self.folder} is in use by another run (pid {holder or "unknown"}'
          f'; lock {path}); wait for it to end, or use another folder.'
      ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    self._fd = fd

  def release(self):
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()

  def __del__(self):
    self.release()


def lock_folder(folder) -> FolderLock:
  """Takes the lock of `folder` (created if needed), or raises
  FolderInUseError naming the pid of the process that holds it."""
  return FolderLock(folder)


def run_settings(config, recipe=None, **settings):
  """The JSON-able identity of a run: its model config, its training recipe
  and the other settings that decide its future."""
  identity = dict(config=dataclasses.asdict(config), **settings)
  if recipe is not None:
    identity['recipe'] = dataclasses.asdict(recipe)
  return json.loads(json.dumps(identity))


def _entries(logdir):
  """The names in `logdir` (none if it does not exist) but its lock, which
  the run about to write there takes first."""
  if not os.path.isdir(logdir):
    return []
  return sorted(set(os.listdir(logdir)) - {LOCK_FILE})


def _is_run_entry(name):
  return name in RUN_ENTRIES or bool(_RUN_TEMPORARY.fullmatch(name))


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
  path = os.path.join(logdir, RUN_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def checkpoint_files(folder):
  """{step: path prefix} of the checkpoints in `folder` whose index file is
  written (complete-looking; whether they read back is the loop's
  business)."""
  found = {}
  for name in os.listdir(folder) if os.path.isdir(folder) else ():
    match = re.fullmatch(rf'{CHECKPOINT_NAME}-(\d+)\.index', name)
    if match:
      found[int(match.group(1))] = os.path.join(folder, name[:-len('.index')])
  return found


def newest_checkpoint_step(logdir):
  """The largest step of a checkpoint in `logdir`'s folder, 0 if none."""
  return max(checkpoint_files(os.path.join(logdir, CHECKPOINT_DIR)),
             default=0)


def _flat(settings, prefix=''):
  out = {}
  for key, value in settings.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


#: The longest value `differences` prints whole.
_SHOWN_CHARS = 40


def _shown(value):
  text = repr(value)
  return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + '...'


def _roots(keys, other):
  """The outermost dotted prefixes of `keys` that `other` (flat keys) has
  nothing under: `attack` for every `attack.*` of a run that has none."""
  roots = set()
  for key in keys:
    parts = key.split('.')
    for i in range(1, len(parts) + 1):
      root = '.'.join(parts[:i])
      if not any(k == root or k.startswith(f'{root}.') for k in other):
        roots.add(root)
        break
  return sorted(roots)


def differences(previous, settings) -> str:
  """The settings that differ, one `key: previous -> now` each, nested
  keys dotted (`recipe.learning_rate`), long values cut; the settings only
  one side has are named, not printed (another kind of run): a line that
  fits on a screen."""
  a, b = _flat(previous), _flat(settings)
  # A missing key and a None are the same setting.
  changed = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
  parts = [f'{k}: {_shown(a[k])} -> {_shown(b[k])}' for k in changed]
  for side, mine, theirs in (('only in the new settings', b, a),
                             ('only in the old', a, b)):
    alone = [k for k in mine if k not in theirs and mine[k] is not None]
    if alone:
      parts.append(f'{side}: {", ".join(_roots(alone, theirs))}')
  return '; '.join(parts)


def check_logdir(logdir, settings, overwrite=False):
  """Raises RunMismatchError unless `prepare_logdir` would accept `logdir`;
  writes nothing. Returns True if the run there would be resumed (also to
  another length: `LENGTH_FIELDS`)."""
  entries = _entries(logdir)
  path = os.path.join(logdir, RUN_FILE)
  if os.path.exists(path):
    if overwrite:
      return False
    with open(path) as f:
      previous = json.load(f)
    if _identity(previous) == _identity(settings):
      return True
    raise RunMismatchError(
        f'{logdir} holds a run with other settings ('
        f'{differences(_identity(previous), _identity(settings))}). '
        'Use another --logdir, or --overwrite to restart it.')
  foreign = [name for name in entries if not _is_run_entry(name)]
  if foreign:
    shown = ', '.join(foreign[:5]) + (', ...' if len(foreign) > 5 else '')
    raise RunMismatchError(
        f'{logdir} holds no {RUN_FILE} and files that no run wrote '
        f'({shown}); refusing to write into it, with or without '
        '--overwrite. Use another --logdir.')
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
  writes (RUN_ENTRIES), also with the same settings, and leaves other files.
  A resumed run's folders must be writable (NotWritableError, before any
  work). Returns True if the run there is resumed.
  """
  if check_logdir(logdir, settings, overwrite):
    for name in ('', CHECKPOINT_DIR, TB_DIR):
      if os.path.isdir(os.path.join(logdir, name)):
        files.check_writable(os.path.join(logdir, name))
    path = os.path.join(logdir, RUN_FILE)
    with open(path) as f:
      previous = json.load(f)
    if _length(previous) != _length(settings):
      # Extended or shortened: the new length, and every length asked for.
      history = previous.get(LENGTHS_KEY) or [_length(previous)]
      files.write_json(path, dict(settings, **{
          LENGTHS_KEY: history + [_length(settings)]}), sort_keys=True)
    return True
  for name in _entries(logdir):
    if _is_run_entry(name):
      path = os.path.join(logdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
  files.check_writable(logdir)
  files.write_json(os.path.join(logdir, RUN_FILE), settings, sort_keys=True)
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
