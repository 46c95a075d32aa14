"""On-disk cache of resized splits: PIL's resize of 60000 digits takes about
a second per run, so `load_resized` computes it once per source file and
canvas size and reads it back afterwards."""

import hashlib
import logging
import os
import pathlib

import numpy as np

from scae_tf import files
from scae_tf.data import idx
from scae_tf.data import preprocessing
from scae_tf.data import registry

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = 'SCAE_CACHE_DIR'
# Bump when the content of the on-disk preprocessing cache changes meaning.
_CACHE_VERSION = 1


def default_cache_dir():
  """`$SCAE_CACHE_DIR`, else `$XDG_CACHE_HOME/scae_tf` or `~/.cache/scae_tf`."""
  if os.environ.get(CACHE_DIR_ENV):
    return pathlib.Path(os.environ[CACHE_DIR_ENV]).expanduser()
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'scae_tf'


def _file_digest(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _cache_path(cache_dir, dataset, split, mode, canvas_size, source_file):
  """Cache file name: dataset, split, mode, canvas and the source's sha256,
  so a changed source file (or other settings) never hits a stale entry."""
  digest = _file_digest(source_file)[:20]
  name = (f'{dataset}_{split}_{mode}{canvas_size}_bicubic_v{_CACHE_VERSION}'
          f'_{digest}.npy')
  return pathlib.Path(cache_dir) / name


def _load_cached(path, shape):
  try:
    arr = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError):
    return None
  if arr.dtype != np.uint8 or arr.shape != shape:
    logger.warning('Ignoring cache %s: got %s %s, expected uint8 %s.', path,
                   arr.dtype, arr.shape, shape)
    return None
  return arr


def load_resized(dataset, split, data_dir=None, canvas_size=40,
                 cache_dir=None):
  """(uint8 [N, canvas, canvas] resized images, int64 [N] labels), cached.

  The resize is computed once per (dataset, split, canvas, source file) and
  stored as uint8 (the exact intermediate; 4x smaller than float32) under
  `cache_dir` (default `default_cache_dir()`). An unwritable cache only
  costs recomputation.
  """
  images, labels, folder = idx.load_dataset_and_folder(dataset, split,
                                                       data_dir)
  source = os.path.join(folder, registry.IDX_FILES[split][0])
  path = _cache_path(cache_dir or default_cache_dir(), dataset, split,
                     'resize', canvas_size, source)
  shape = (len(images), canvas_size, canvas_size)
  cached = _load_cached(path, shape) if path.is_file() else None
  if cached is not None:
    return cached, labels
  logger.info('Resizing %s %s to %dx%d (cache: %s).', dataset, split,
              canvas_size, canvas_size, path)
  resized = preprocessing.resize_uint8(images, canvas_size)
  try:
    files.save_npy(path, resized)
  except OSError as e:
    logger.warning('Cannot write the resize cache %s (%s); continuing '
                   'without it.', path, e)
  return resized, labels
