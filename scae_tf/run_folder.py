"""The folder of a run, for every kind of run (a teacher's or a defence's
training, an attack): its identity file, its lock, `--overwrite`, and the
newest checkpoint in it that reads back.

* Identity: a run's settings that decide its results, in one JSON file
  (`run.json` of a training run, `settings.json` of an attack folder). A run
  resumes in a folder only if they match (`check_identity`); its error
  names the differing keys only, on one line (`differences`).
* Lock: `lock_folder` keeps a second process out while a run writes.
* Overwrite: a `Layout` names what one kind of run writes in its folder;
  `remove_outputs` removes that, and nothing else.
* Checkpoints: `<run>/ckpt/ckpt-<step>`; `readable_checkpoints` yields those
  of a folder that read back whole, newest first.

Imports no TensorFlow (reading a checkpoint back does, when asked), so the
scripts can check a folder before it loads.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
from typing import Callable, Iterator, Optional, Sequence, Tuple

from scae_tf import files

LOCK_FILE = '.lock'
#: Where a training run keeps its checkpoints:
#: <run>/<CHECKPOINT_DIR>/<CHECKPOINT_NAME>-<step>.
CHECKPOINT_DIR = 'ckpt'
CHECKPOINT_NAME = 'ckpt'


# --- the lock ---------------------------------------------------------------

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


# --- the identity -----------------------------------------------------------

class IdentityMismatchError(ValueError):
  """The folder holds a run with other settings."""


def read_identity(folder, name) -> Optional[dict]:
  """The settings in `<folder>/<name>`, or None if there is no such file."""
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_identity(folder, name, settings) -> str:
  """Writes `settings` to `<folder>/<name>` (atomically, keys sorted,
  indent 1: the format every run folder has); returns the path."""
  return files.write_json(os.path.join(folder, name), settings,
                          sort_keys=True)


def _as_json(settings):
  return json.loads(json.dumps(settings))


def check_identity(folder, name, settings, *,
                   compared: Optional[Callable[[dict], dict]] = None,
                   error=IdentityMismatchError, advice: str = ''
                   ) -> Optional[dict]:
  """The settings saved in `<folder>/<name>` (None if none); writes nothing.

  Raises `error` (an IdentityMismatchError) when they are not `settings`,
  both seen through `compared` (default: as JSON; e.g. without the keys a
  resumed run may change). Its message names the keys that differ only,
  followed by `advice`.
  """
  previous = read_identity(folder, name)
  if previous is None:
    return None
  compared = compared or _as_json
  old, new = compared(previous), compared(settings)
  if old != new:
    raise error(f'{folder} holds a run with other settings '
                f'({differences(old, new)}){advice}')
  return previous


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


# --- what a run writes, and --overwrite -------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
  """What one kind of run writes in its folder: all that `--overwrite`
  removes (`remove_outputs`), and nothing else.

  identity: the identity file's name.
  files: its other files (written atomically, `scae_tf.files`, so the
    temporaries of a killed write are its too), in the order they go.
  folders: subfolders wholly its own, removed with all they hold.
  collections: (subfolder, file-name regex): the files it writes into a
    subfolder that stays, with any other file in it.
  """
  identity: str
  files: Tuple[str, ...] = ()
  folders: Tuple[str, ...] = ()
  collections: Tuple[Tuple[str, str], ...] = ()

  def with_files(self, names: Sequence[str]) -> 'Layout':
    """This layout, with more files of its own."""
    return dataclasses.replace(self, files=self.files + tuple(names))

  def entries(self) -> Tuple[str, ...]:
    """The names it writes in the folder itself, its lock included."""
    return ((self.identity, LOCK_FILE) + self.files + self.folders
            + tuple(sub for sub, _ in self.collections))


def matching_files(folder, pattern: str) -> list:
  """The paths of the files in `folder` whose names match `pattern`
  wholly, sorted; none if it does not exist."""
  if not os.path.isdir(folder):
    return []
  return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
          if re.fullmatch(pattern, name)]


def temporaries(folder, layout: Layout) -> list:
  """The unfinished writes that a killed run of `layout` left in `folder`
  (`scae_tf.files`)."""
  found = files.leftover_temporaries(folder,
                                     (layout.identity,) + layout.files)
  for sub, _ in layout.collections:
    found += files.leftover_temporaries(os.path.join(folder, sub))
  return found


def foreign_entries(folder, layout: Layout) -> list:
  """The names in `folder` that no run of `layout` writes, sorted."""
  if not os.path.isdir(folder):
    return []
  owned = set(layout.entries()) | {
      os.path.basename(p) for p in files.leftover_temporaries(
          folder, (layout.identity,) + layout.files)}
  return sorted(set(os.listdir(folder)) - owned)


def _remove(paths):
  for path in paths:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def remove_temporaries(folder, layout: Layout):
  """Removes the unfinished writes of a killed run (`temporaries`)."""
  _remove(temporaries(folder, layout))


def remove_outputs(folder, layout: Layout, keep_identity: bool = False):
  """`--overwrite`: removes what a run of `layout` wrote in `folder`: its
  files (in their order), the files of its collections, the unfinished
  writes, its folders, and last its identity file, unless `keep_identity`
  (for the caller to replace: a restart interrupted in between never leaves
  old results under new settings). Other files stay, and so does the lock,
  which the caller holds."""
  _remove([os.path.join(folder, name) for name in layout.files])
  for sub, pattern in layout.collections:
    _remove(matching_files(os.path.join(folder, sub), pattern))
  remove_temporaries(folder, layout)
  _remove([os.path.join(folder, name) for name in layout.folders])
  if not keep_identity:
    _remove([os.path.join(folder, layout.identity)])


# --- checkpoints ------------------------------------------------------------

def checkpoint_files(folder) -> dict:
  """{step: path prefix} of the checkpoints `<CHECKPOINT_NAME>-<step>` in
  `folder` whose index file is written (complete-looking; whether they read
  back is `readable_checkpoints`' business)."""
  found = {}
  for path in matching_files(folder, rf'{CHECKPOINT_NAME}-\d+\.index'):
    prefix = path[:-len('.index')]
    found[int(prefix.rsplit('-', 1)[1])] = prefix
  return found


def newest_checkpoint_step(logdir) -> int:
  """The largest step of a checkpoint in the run folder `logdir`, 0 if
  none."""
  return max(checkpoint_files(os.path.join(logdir, CHECKPOINT_DIR)),
             default=0)


def checkpoints_newest_first(folder, listed: Sequence[str] = ()) -> list:
  """The checkpoints of `folder`, newest first: the complete-looking ones
  (`checkpoint_files`), which a save killed before it updated the
  `checkpoint` file leaves, and those `listed` (a CheckpointManager's; its
  spelling of a path wins, as it compares paths as strings)."""
  by_step = checkpoint_files(folder)
  for prefix in listed:
    number = prefix.rsplit('-', 1)[-1]
    if number.isdigit():
      by_step[int(number)] = prefix
  return [by_step[n] for n in sorted(by_step, reverse=True)]


def readable_checkpoints(folder, listed: Sequence[str] = (),
                         log: Callable[[str], object] = print
                         ) -> Iterator[str]:
  """The checkpoints of `folder` (`checkpoints_newest_first`) that read
  back whole (`scae_tf.checkpoints.check_readable`), newest first: the first
  is the newest readable one. A truncated or corrupt one is skipped with a
  warning to `log`."""
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  for path in checkpoints_newest_first(folder, listed):
    try:
      checkpoints.check_readable(path)
    except checkpoints.CorruptCheckpointError as e:
      log(f'warning: skipping checkpoint {path}: {e}')
      continue
    yield path
