"""Atomic file writes: a reader sees the old file or the new one, never half.

Each writer goes to a uniquely named temporary file beside the target (the
same file system, so the final `os.replace` is atomic) and renames it over
the target only once it is complete and synced; concurrent writers of the
same path each publish a whole file, the last one wins. A failed write
leaves the target as it was and removes its temporary file.
"""

import contextlib
import json
import os
import re
import uuid

import numpy as np

# `<target>.<12 hex digits>.tmp`: what `atomic_open` writes before the rename.
_TEMPORARY = re.compile(r'\.[0-9a-f]{12}\.tmp$')


@contextlib.contextmanager
def atomic_open(path, mode='w'):
  """Opens a temporary file that replaces `path` when the block succeeds.

  Creates the missing parent folders. `mode` is 'w' (text) or 'wb'.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # Exclusive creation rather than mkstemp: the file gets the usual
  # permissions (umask), where mkstemp's would be owner-only.
  tmp = f'{path}.{uuid.uuid4().hex[:12]}.tmp'
  try:
    with open(tmp, mode.replace('w', 'x')) as f:
      yield f
      f.flush()
      # Without it a crash soon after the rename may leave an empty file.
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


class NotWritableError(PermissionError):
  """A folder the work will write to cannot be written."""


def check_writable(folder) -> str:
  """Checks that files can be created in `folder`, or in the nearest folder
  above it that exists (which then must take `folder`), so that a run fails
  before its work rather than when saving it. Writes nothing that stays.
  Raises NotWritableError naming the folder; returns it."""
  folder = os.fspath(folder)
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  probe = os.path.join(existing, f'.write_check.{uuid.uuid4().hex[:12]}.tmp')
  try:
    with open(probe, 'x'):
      pass
    os.remove(probe)
  except OSError as e:
    reason = ('not a folder' if not os.path.isdir(existing)
              else e.strerror or str(e))
    raise NotWritableError(f'cannot write to {folder}: {reason}') from None
  return folder


def write_text(path, text: str) -> str:
  """Writes `text` to `path`; returns the path."""
  with atomic_open(path) as f:
    f.write(text)
  return path


def write_json(path, obj, sort_keys: bool = False) -> str:
  """Writes `obj` as JSON (indent 1); returns the path."""
  with atomic_open(path) as f:
    json.dump(obj, f, indent=1, sort_keys=sort_keys)
  return path


def save_npy(path, array) -> str:
  """`np.save` of one array to exactly `path` (no suffix added)."""
  with atomic_open(path, 'wb') as f:
    np.save(f, array)
  return path


def save_npz(path, arrays: dict, compressed: bool = False) -> str:
  """`np.savez` (or `np.savez_compressed`) of named arrays to `path`."""
  save = np.savez_compressed if compressed else np.savez
  with atomic_open(path, 'wb') as f:
    save(f, **arrays)
  return path


def leftover_temporaries(folder, targets=None) -> list:
  """Paths of the temporary files in `folder` that writes killed before their
  rename left behind (of the file names `targets` only, if given)."""
  if not os.path.isdir(folder):
    return []
  found = []
  for name in sorted(os.listdir(folder)):
    match = _TEMPORARY.search(name)
    if match and (targets is None or name[:match.start()] in targets):
      found.append(os.path.join(folder, name))
  return found
