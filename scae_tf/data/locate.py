"""Where a dataset's four IDX files are: the search order of
`resolve_data_dir`, the error that says where to put them, and the download
into the Keras cache."""

import logging
import os
import pathlib

from scae_tf.data import registry

logger = logging.getLogger(__name__)

# `<repo>/../shared/data`: the repository root is the parent of `scae_tf/`.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_DATA_DIR = REPO_ROOT.parent / 'shared' / 'data'
DATA_DIR_ENV = 'SCAE_DATA_DIR'


def _keras_datasets_dir():
  """Keras' download cache: `$KERAS_HOME` or `~/.keras`, then `datasets/`."""
  home = os.environ.get('KERAS_HOME') or os.path.join(
      os.path.expanduser('~'), '.keras')
  return pathlib.Path(home) / 'datasets'


def _holds_all_files(folder):
  return all(os.path.isfile(os.path.join(folder, f))
             for f in registry.ALL_FILES)


def _candidates(spec, data_dir):
  """[(folder, where it came from)] in the order `resolve_data_dir` tries."""
  out = []

  def folder_or_parent(base, origin):
    base = pathlib.Path(base).expanduser()
    out.append((base, origin))
    out.extend((base / n, origin) for n in spec.folder_names)

  if data_dir is not None:
    folder_or_parent(data_dir, 'data_dir argument')
  if os.environ.get(DATA_DIR_ENV):
    folder_or_parent(os.environ[DATA_DIR_ENV], f'${DATA_DIR_ENV}')
  out.append((SHARED_DATA_DIR / spec.name, 'shared data dir'))
  out.extend((_keras_datasets_dir() / n, 'Keras cache')
             for n in spec.folder_names)
  return out


def resolve_data_dir(dataset, data_dir=None, download=True):
  """The directory holding the 4 IDX .gz files of `dataset`.

  Tries, in order, and returns the first folder holding all four files:
  1. `data_dir` (the folder itself or a parent holding `<dataset>/`);
  2. `$SCAE_DATA_DIR` (same two forms);
  3. `<repo>/../shared/data/<dataset>`;
  4. the Keras cache `~/.keras/datasets/<dataset>` (also Keras' own
     `fashion-mnist/`; `$KERAS_HOME` replaces `~/.keras`);
  5. if `download`, a download into `~/.keras/datasets/<dataset>`.
  A location that is set but incomplete is logged and skipped. If all fail,
  a FileNotFoundError says which files to put where.
  """
  spec = registry.get_dataset_spec(dataset)
  candidates = _candidates(spec, data_dir)
  for folder, origin in candidates:
    if _holds_all_files(folder):
      _warn_skipped(dataset, data_dir, origin)
      return str(folder)
  download_error = 'download disabled'
  if download:
    try:
      folder = download_files(spec, _keras_datasets_dir() / spec.name)
      if _holds_all_files(folder):
        _warn_skipped(dataset, data_dir, 'download')
        return str(folder)
      download_error = f'download finished but {folder} is incomplete'
    except Exception as e:  # pylint: disable=broad-except
      download_error = f'{type(e).__name__}: {e}'
  raise FileNotFoundError(_not_found_message(spec, candidates,
                                             download_error))


def _warn_skipped(dataset, data_dir, used):
  """Says so when a location the user set explicitly was not the one used."""
  for base, origin in ((data_dir, 'data_dir argument'),
                       (os.environ.get(DATA_DIR_ENV), f'${DATA_DIR_ENV}')):
    if origin == used:
      return
    if base:
      logger.warning('%s=%s holds no complete %s file set (%s); using the '
                     '%s instead.', origin, base, dataset,
                     ', '.join(registry.ALL_FILES), used)


def _not_found_message(spec, candidates, download_error):
  tried = []
  for folder, origin in candidates:
    if folder.is_dir():
      missing = [f for f in registry.ALL_FILES if not (folder / f).is_file()]
      state = 'missing ' + ', '.join(missing)
    else:
      state = 'no such directory'
    tried.append(f'  {folder} ({origin}): {state}')
  files = '\n'.join(f'  {f}' for f in registry.ALL_FILES)
  return (
      f'Cannot find the {spec.name} data. Put these 4 files (the standard '
      f'IDX .gz downloads)\n{files}\ninto {SHARED_DATA_DIR / spec.name} or '
      f'{_keras_datasets_dir() / spec.name}, or into any folder and point to '
      f'it (or to its parent holding {spec.name}/) with the {DATA_DIR_ENV} '
      'environment variable or the data_dir argument (--data_dir flag).\n'
      'Looked in:\n' + '\n'.join(tried) +
      f'\nDownload from {list(spec.mirrors)} failed: {download_error}')


def download_files(spec, target):
  """Downloads the 4 files into `target` (the Keras cache), md5-checked.

  Files already in `target` are kept. Tries each mirror in turn per file;
  raises the last error if none works, after removing the folders the
  download created that are still empty (the files that did arrive stay,
  for the next attempt). Returns the folder the files landed in (Keras may
  fall back to /tmp/.keras when `target` is not writable).
  """
  md5 = dict(spec.md5)
  folder = pathlib.Path(target)
  created = [p for p in (folder, *folder.parents) if not p.exists()]
  try:
    for name in registry.ALL_FILES:
      if (folder / name).is_file():
        continue
      last_error = RuntimeError(f'no download mirror known for {spec.name}')
      for mirror in spec.mirrors:
        try:
          folder = pathlib.Path(_fetch_file(mirror + name, md5.get(name),
                                            target)).parent
          break
        except Exception as e:  # pylint: disable=broad-except
          last_error = e
      else:
        raise last_error
  except BaseException:
    _remove_empty(created)
    raise
  return folder


def _remove_empty(folders):
  """Removes `folders`, deepest first, up to the first that is not empty."""
  for path in folders:
    try:
      path.rmdir()
    except FileNotFoundError:
      continue
    except OSError:
      return


def _fetch_file(url, md5, target):
  """One file from `url` into folder `target` via Keras; returns its path.

  Keras keeps a file that fails the md5 check; we delete it, so that a bad
  download is never mistaken for the dataset later.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  target = pathlib.Path(target)
  name = url.rsplit('/', 1)[1]
  # Keras silently falls back to /tmp/.keras when cache_dir does not exist
  # yet (it tests writability of the missing folder): create it first.
  target.parent.parent.mkdir(parents=True, exist_ok=True)
  try:
    return tf.keras.utils.get_file(
        name, origin=url, file_hash=md5, cache_dir=str(target.parent.parent),
        cache_subdir=f'{target.parent.name}/{target.name}')
  except Exception:
    (target / name).unlink(missing_ok=True)
    raise
