"""Data: the standard IDX files of MNIST and Fashion-MNIST, where to find
them, the preprocessing onto the SCAE canvas and a resumable batch stream.

Preprocessing modes (all give float32 in [0, 1], [N, canvas, canvas, 1]):

* `pad_center`: zero-pad the 28x28 digit to the canvas, centred (the
  reference fixtures use this);
* `pad_shift`: upstream's random placement, redrawn per sample (see
  `pad_shift`);
* `resize`: the fork's (and the paper's) PIL resize 28 -> 40 (see `resize`).

Where the files come from (see `resolve_data_dir`): an explicit `data_dir`,
the `SCAE_DATA_DIR` environment variable, `../shared/data/<dataset>` beside
the repository, the Keras cache `~/.keras/datasets`, and finally a download
into that cache.

Training reads data through `BatchStream`: its order is a pure function of
(seed, global step), so a run resumed at step s sees exactly the batches an
uninterrupted run would have seen.
"""

import dataclasses
import gzip
import hashlib
import logging
import os
import pathlib
import struct
import tempfile

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IDX_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
SPLITS = tuple(IDX_FILES)
MODES = ('pad_center', 'pad_shift', 'resize')

# `<repo>/../shared/data`: the repository root is the parent of `scae_tf/`.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / 'shared' / 'data'
DATA_DIR_ENV = 'SCAE_DATA_DIR'
CACHE_DIR_ENV = 'SCAE_CACHE_DIR'
# Bump when the content of the on-disk preprocessing cache changes meaning.
_CACHE_VERSION = 1


class DataFileError(ValueError):
  """A data file is missing, truncated or not what its name says."""


# ---------------------------------------------------------------------------
# Dataset registry.


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What we know about one dataset: shapes, sizes and where to get it.

  `dir_names` are the folder names the files may live under (ours first,
  then e.g. Keras' own `fashion-mnist`). `mirrors` are base URLs holding the
  four IDX files; `md5` the published checksums of the .gz files, used to
  verify a download. `implemented=False` marks a dataset the fork supports
  but this port does not read yet.
  """

  name: str
  image_shape: tuple = (28, 28)
  num_examples: tuple = (('train', 60000), ('test', 10000))
  num_classes: int = 10
  dir_names: tuple = ()
  mirrors: tuple = ()
  md5: tuple = ()
  implemented: bool = True

  @property
  def folder_names(self):
    return (self.name,) + tuple(d for d in self.dir_names if d != self.name)

  def split_size(self, split):
    return dict(self.num_examples)[split]


DATASETS = {
    'mnist': DatasetSpec(
        name='mnist',
        mirrors=('https://storage.googleapis.com/cvdf-datasets/mnist/',
                 'https://ossci-datasets.s3.amazonaws.com/mnist/',
                 'http://yann.lecun.com/exdb/mnist/'),
        md5=(('train-images-idx3-ubyte.gz',
              'f68b3c2dcbeaaa9fbdd348bbdeb94873'),
             ('train-labels-idx1-ubyte.gz',
              'd53e105ee54ea40749a09fcbcd1e9432'),
             ('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
             ('t10k-labels-idx1-ubyte.gz',
              'ec29112dd5afa0611ce80d1b7f02629c'))),
    'fashion_mnist': DatasetSpec(
        name='fashion_mnist',
        dir_names=('fashion-mnist',),  # Keras' `fashion_mnist.load_data()`.
        mirrors=('https://storage.googleapis.com/tensorflow/tf-keras-datasets/',
                 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'),
        md5=(('train-images-idx3-ubyte.gz',
              '8d4fb7e6c68d591d4c3dfef9ec88bf0d'),
             ('train-labels-idx1-ubyte.gz',
              '25c81989df183df01b3e8a0aad5dffbe'),
             ('t10k-images-idx3-ubyte.gz', 'bef4ecab320f06d8554ea6380940ec79'),
             ('t10k-labels-idx1-ubyte.gz',
              'bb300cfdad3c16e7a12a480ee83cd310'))),
    # The fork's other datasets (configs.SVHN, CIFAR10, GTSRB): not yet read.
    'svhn_cropped': DatasetSpec(name='svhn_cropped', image_shape=(32, 32, 3),
                                implemented=False),
    'cifar10': DatasetSpec(name='cifar10', image_shape=(32, 32, 3),
                           implemented=False),
    'gtsrb': DatasetSpec(name='gtsrb', implemented=False),
}


def get_dataset_spec(dataset):
  """The `DatasetSpec` of an implemented dataset, else a ValueError."""
  spec = DATASETS.get(dataset)
  implemented = sorted(k for k, v in DATASETS.items() if v.implemented)
  if spec is None:
    raise ValueError(f'Unknown dataset {dataset!r}; known datasets: '
                     f'{sorted(DATASETS)} (implemented: {implemented}).')
  if not spec.implemented:
    raise ValueError(f'Dataset {dataset!r} (one of the fork\'s datasets) is '
                     'not implemented yet in scae_tf.data; implemented: '
                     f'{implemented}.')
  return spec


def _check_split(split):
  if split not in IDX_FILES:
    raise ValueError(f'Unknown split {split!r}; expected one of '
                     f'{list(SPLITS)}.')


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f'Unknown preprocessing mode {mode!r}; expected one of '
                     f'{list(MODES)}.')


def _all_files():
  return [f for split in SPLITS for f in IDX_FILES[split]]


# ---------------------------------------------------------------------------
# Reading IDX files.


def read_idx(path):
  """Reads an IDX (optionally gzip) file into a uint8 numpy array.

  Validates the magic number, the declared dimensions and the payload size,
  and names the file in every error.
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataFileError(f'{path}: file not found.') from None
  except (OSError, EOFError) as e:
    raise DataFileError(f'{path}: cannot be read ({e}); the file is corrupt '
                        'or truncated.') from None
  if len(raw) < 4:
    raise DataFileError(f'{path}: too short to be an IDX file '
                        f'({len(raw)} bytes).')
  zero, dtype_code, ndim = struct.unpack('>HBB', raw[:4])
  if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
    raise DataFileError(
        f'{path}: bad IDX magic number {raw[:4].hex()} (expected 00000801 '
        'for labels or 00000803 for uint8 images).')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataFileError(f'{path}: truncated IDX header.')
  dims = struct.unpack('>' + 'I' * ndim, raw[4:header])
  expected = int(np.prod(dims))
  if len(raw) - header != expected:
    raise DataFileError(
        f'{path}: header declares {dims} = {expected} bytes of data but the '
        f'file holds {len(raw) - header}; the file is truncated or corrupt.')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_split(data_dir, split='train'):
  """Returns (images [N, 28, 28] uint8, labels [N] int64) of one split.

  Reads `data_dir` as is (no search, no size expectations); see
  `load_dataset` for the validated, located version.
  """
  _check_split(split)
  image_file, label_file = (os.path.join(data_dir, f)
                            for f in IDX_FILES[split])
  images, labels = read_idx(image_file), read_idx(label_file)
  if images.ndim != 3 or labels.ndim != 1:
    raise DataFileError(f'{image_file} / {label_file}: expected an image '
                        'file and a label file.')
  if images.shape[0] != labels.shape[0]:
    raise DataFileError(
        f'{image_file} holds {images.shape[0]} images but {label_file} holds '
        f'{labels.shape[0]} labels.')
  return images, labels.astype(np.int64)


def load_dataset(dataset, split, data_dir=None):
  """(images uint8 [N, 28, 28], labels int64 [N]) of a named dataset.

  Locates the files with `resolve_data_dir` and checks them against the
  registry (number of examples, image size, label range), so a wrong or
  partial file fails here, naming the file, rather than mid-training.
  """
  images, labels, _ = _load_validated(dataset, split, data_dir)
  return images, labels


def _load_validated(dataset, split, data_dir):
  """(images, labels, folder they came from), checked against the spec."""
  spec = get_dataset_spec(dataset)
  _check_split(split)
  folder = resolve_data_dir(dataset, data_dir)
  images, labels = load_split(folder, split)
  _validate(spec, split, folder, images, labels)
  return images, labels, folder


def _validate(spec, split, folder, images, labels):
  image_file, label_file = (os.path.join(folder, f) for f in IDX_FILES[split])
  if images.shape[1:] != tuple(spec.image_shape):
    raise DataFileError(
        f'{image_file}: images are {images.shape[1]}x{images.shape[2]}, but '
        f'{spec.name} images are {spec.image_shape[0]}x{spec.image_shape[1]}.')
  expected = spec.split_size(split)
  if images.shape[0] != expected:
    raise DataFileError(
        f'{image_file}: holds {images.shape[0]} images, but the {spec.name} '
        f'{split} split has {expected}; the file is incomplete or not '
        f'{spec.name}.')
  if labels.size and labels.max() >= spec.num_classes:
    raise DataFileError(
        f'{label_file}: label {labels.max()} out of range for '
        f'{spec.num_classes} classes.')


# ---------------------------------------------------------------------------
# Locating the files.


def _keras_datasets_dir():
  """Keras' download cache: `$KERAS_HOME` or `~/.keras`, then `datasets/`."""
  home = os.environ.get('KERAS_HOME') or os.path.join(
      os.path.expanduser('~'), '.keras')
  return pathlib.Path(home) / 'datasets'


def _holds_all_files(folder):
  return all(os.path.isfile(os.path.join(folder, f)) for f in _all_files())


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
  spec = get_dataset_spec(dataset)
  candidates = _candidates(spec, data_dir)
  for folder, origin in candidates:
    if _holds_all_files(folder):
      _warn_skipped(dataset, data_dir, origin)
      return str(folder)
  download_error = 'download disabled'
  if download:
    try:
      folder = _download(spec, _keras_datasets_dir() / spec.name)
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
                     ', '.join(_all_files()), used)


def _not_found_message(spec, candidates, download_error):
  tried = []
  for folder, origin in candidates:
    if folder.is_dir():
      missing = [f for f in _all_files() if not (folder / f).is_file()]
      state = 'missing ' + ', '.join(missing)
    else:
      state = 'no such directory'
    tried.append(f'  {folder} ({origin}): {state}')
  files = '\n'.join(f'  {f}' for f in _all_files())
  return (
      f'Cannot find the {spec.name} data. Put these 4 files (the standard '
      f'IDX .gz downloads)\n{files}\ninto {SHARED_DATA_DIR / spec.name} or '
      f'{_keras_datasets_dir() / spec.name}, or into any folder and point to '
      f'it (or to its parent holding {spec.name}/) with the {DATA_DIR_ENV} '
      'environment variable or the data_dir argument (--data_dir flag).\n'
      'Looked in:\n' + '\n'.join(tried) +
      f'\nDownload from {list(spec.mirrors)} failed: {download_error}')


def _download(spec, target):
  """Downloads the 4 files into `target` (the Keras cache), md5-checked.

  Tries each mirror in turn per file; raises the last error if none works.
  Returns the folder the files landed in (Keras may fall back to
  /tmp/.keras when `target` is not writable).
  """
  md5 = dict(spec.md5)
  folder = pathlib.Path(target)
  for name in _all_files():
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
  return folder


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


# ---------------------------------------------------------------------------
# Preprocessing onto the canvas.


def _check_images(images, canvas_size):
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or (
      images.ndim != 3):
    raise ValueError('Expected uint8 images [N, h, w], got '
                     f'{getattr(images, "dtype", type(images))} '
                     f'{getattr(images, "shape", "")}.')
  if canvas_size < max(images.shape[1:]):
    raise ValueError(f'canvas_size={canvas_size} is smaller than the '
                     f'{images.shape[1]}x{images.shape[2]} images.')


def to_float(canvases):
  """uint8 [N, c, c] -> float32 [N, c, c, 1] in [0, 1] (x / 255)."""
  return (canvases.astype(np.float32) / np.float32(255.))[..., None]


def pad_center(images, canvas_size=40):
  """uint8 [N, h, w] -> float32 [N, canvas, canvas, 1], centred, / 255."""
  n, h, w = images.shape
  top, left = (canvas_size - h) // 2, (canvas_size - w) // 2
  out = np.zeros([n, canvas_size, canvas_size, 1], np.float32)
  out[:, top:top + h, left:left + w, 0] = images.astype(np.float32) / 255.
  return out


def draw_offsets(rng, n, image_shape, canvas_size=40):
  """int64 [n, 2] (top, left), uniform over all valid placements.

  Each axis is uniform on 0..canvas - size (0..12 for 28 -> 40), drawn
  independently per image. `rng`: np.random.RandomState, Generator or int.
  """
  if rng is None:
    raise ValueError('pad_shift needs an rng (np.random.RandomState, '
                     'np.random.Generator or an int seed).')
  if isinstance(rng, (int, np.integer)):
    rng = np.random.RandomState(rng)
  highs = np.array([canvas_size - image_shape[0],
                    canvas_size - image_shape[1]]) + 1
  if isinstance(rng, np.random.Generator):
    return rng.integers(0, highs, size=(n, 2), dtype=np.int64)
  return rng.randint(0, highs, size=(n, 2)).astype(np.int64)


def place(images, offsets, canvas_size=40):
  """uint8 [N, h, w] pasted at `offsets` [N, 2] (top, left) on a zero
  canvas -> uint8 [N, canvas, canvas]. Vectorised (one fancy-index write)."""
  n, h, w = images.shape
  out = np.zeros([n, canvas_size, canvas_size], np.uint8)
  rows = offsets[:, 0, None, None] + np.arange(h)[None, :, None]
  cols = offsets[:, 1, None, None] + np.arange(w)[None, None, :]
  out[np.arange(n)[:, None, None], rows, cols] = images
  return out


def pad_shift(images, rng, canvas_size=40):
  """uint8 [N, h, w] -> float32 [N, canvas, canvas, 1] at random offsets.

  Upstream SCAE's augmentation: each digit lands at its own uniformly
  random position on the zero canvas; every call draws new offsets from
  `rng`, so the placement changes per sample and per epoch.
  """
  _check_images(images, canvas_size)
  offsets = draw_offsets(rng, len(images), images.shape[1:], canvas_size)
  return to_float(place(images, offsets, canvas_size))


def resize_uint8(images, canvas_size=40):
  """uint8 [N, h, w] -> uint8 [N, canvas, canvas], PIL bicubic.

  Reproduces the fork: `Image.fromarray(img).resize((40, 40))` whose default
  filter was BICUBIC in the Pillow of 2020; we name the filter since later
  Pillow versions may change defaults. PIL's fixed-point result is the
  reference, so we call PIL per image (~1 s for 60000 images).
  """
  _check_images(images, canvas_size)
  out = np.empty([len(images), canvas_size, canvas_size], np.uint8)
  size = (canvas_size, canvas_size)
  for i, image in enumerate(images):
    out[i] = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
  return out


def resize(images, canvas_size=40):
  """uint8 [N, h, w] -> float32 [N, canvas, canvas, 1]: PIL bicubic / 255."""
  return to_float(resize_uint8(images, canvas_size))


def preprocess(images_uint8, mode, rng=None, canvas_size=40):
  """uint8 [N, h, w] -> float32 [N, canvas, canvas, 1] in [0, 1].

  `mode` is one of MODES; `rng` is needed (only) by `pad_shift`.
  """
  _check_mode(mode)
  _check_images(images_uint8, canvas_size)
  if mode == 'pad_center':
    return pad_center(images_uint8, canvas_size)
  if mode == 'pad_shift':
    return pad_shift(images_uint8, rng, canvas_size)
  return resize(images_uint8, canvas_size)


# ---------------------------------------------------------------------------
# On-disk cache of the resized split.


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


def _save_atomic(path, arr):
  """np.save to a temp file in the same folder, then os.replace: readers
  never see a half-written cache, even with concurrent writers."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.save(f, arr)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_resized(dataset, split, data_dir=None, canvas_size=40,
                 cache_dir=None):
  """(uint8 [N, canvas, canvas] resized images, int64 [N] labels), cached.

  The resize is computed once per (dataset, split, canvas, source file) and
  stored as uint8 (the exact intermediate; 4x smaller than float32) under
  `cache_dir` (default `default_cache_dir()`). An unwritable cache only
  costs recomputation.
  """
  images, labels, folder = _load_validated(dataset, split, data_dir)
  source = os.path.join(folder, IDX_FILES[split][0])
  path = _cache_path(cache_dir or default_cache_dir(), dataset, split,
                     'resize', canvas_size, source)
  shape = (len(images), canvas_size, canvas_size)
  cached = _load_cached(path, shape) if path.is_file() else None
  if cached is not None:
    return cached, labels
  logger.info('Resizing %s %s to %dx%d (cache: %s).', dataset, split,
              canvas_size, canvas_size, path)
  resized = resize_uint8(images, canvas_size)
  try:
    _save_atomic(path, resized)
  except OSError as e:
    logger.warning('Cannot write the resize cache %s (%s); continuing '
                   'without it.', path, e)
  return resized, labels


def _load_source(dataset, split, mode, data_dir, canvas_size, cache_dir):
  """uint8 arrays the batches are rendered from: the resized canvases for
  `resize`, the raw [N, 28, 28] images for the pad modes; and the labels."""
  _check_mode(mode)
  _check_split(split)
  if mode == 'resize':
    return load_resized(dataset, split, data_dir, canvas_size, cache_dir)
  images, labels = load_dataset(dataset, split, data_dir)
  _check_images(images, canvas_size)
  return images, labels


def _render(source, mode, offsets, canvas_size):
  """uint8 source rows (and pad_shift offsets) -> float32 [B, c, c, 1]."""
  if mode == 'resize':
    return to_float(source)
  if mode == 'pad_center':
    return pad_center(source, canvas_size)
  return to_float(place(source, offsets, canvas_size))


# ---------------------------------------------------------------------------
# Batches.


class BatchStream:
  """Deterministic, resumable, endless stream of training batches.

  Global step s lies in epoch e = s // steps_per_epoch. Epoch e visits the
  examples in the order `np.random.RandomState([seed, e]).permutation(N)`,
  in batches of exactly `batch_size` (the remainder is dropped). For
  `pad_shift`, the offset of the example at position i of epoch e is row i
  of `draw_offsets(np.random.RandomState([seed, e, 1]), N, ...)`. Both
  depend only on (seed, e), so `batches(start_step=s)` equals an
  uninterrupted stream from step s on, and a resumed run sees the same data.

  Yields (images float32 [B, canvas, canvas, 1] in [0, 1], labels int64 [B]).
  """

  def __init__(self, dataset, split, batch_size, preprocess, seed=0,
               data_dir=None, canvas_size=40, cache_dir=None):
    source, labels = _load_source(dataset, split, preprocess, data_dir,
                                  canvas_size, cache_dir)
    self._setup(source, labels, batch_size, preprocess, seed, canvas_size)
    self.dataset, self.split = dataset, split

  @classmethod
  def from_arrays(cls, images, labels, batch_size, preprocess, seed=0,
                  canvas_size=40):
    """A stream over in-memory uint8 images [N, h, w] and labels [N]."""
    _check_mode(preprocess)
    _check_images(images, canvas_size)
    if preprocess == 'resize':
      images = resize_uint8(images, canvas_size)
    stream = cls.__new__(cls)
    stream._setup(images, np.asarray(labels, np.int64), batch_size,
                  preprocess, seed, canvas_size)
    stream.dataset, stream.split = None, None
    return stream

  def _setup(self, source, labels, batch_size, mode, seed, canvas_size):
    _check_mode(mode)
    if not 0 <= int(seed) < 2**32:
      raise ValueError(f'seed must be in [0, 2**32), got {seed}.')
    if batch_size < 1 or batch_size > len(source):
      raise ValueError(f'batch_size={batch_size} must be in 1..{len(source)} '
                       '(the number of examples).')
    self._source, self._labels = source, labels
    self.batch_size, self.preprocess = int(batch_size), mode
    self.seed, self.canvas_size = int(seed), int(canvas_size)
    self.num_examples = len(source)
    self.steps_per_epoch = self.num_examples // self.batch_size

  def epoch_plan(self, epoch):
    """(order int [N], pad_shift offsets [N, 2] or None) of one epoch."""
    order = np.random.RandomState([self.seed, epoch]).permutation(
        self.num_examples)
    offsets = None
    if self.preprocess == 'pad_shift':
      offsets = draw_offsets(np.random.RandomState([self.seed, epoch, 1]),
                             self.num_examples, self._source.shape[1:],
                             self.canvas_size)
    return order, offsets

  def _batch_from_plan(self, plan, index):
    order, offsets = plan
    sl = slice(index * self.batch_size, (index + 1) * self.batch_size)
    idx = order[sl]
    images = _render(self._source[idx], self.preprocess,
                     None if offsets is None else offsets[sl],
                     self.canvas_size)
    return images, self._labels[idx]

  def batch(self, step):
    """The batch at global step `step` (same as the stream yields there)."""
    epoch, index = divmod(int(step), self.steps_per_epoch)
    return self._batch_from_plan(self.epoch_plan(epoch), index)

  def batches(self, start_step=0, num_steps=None):
    """Yields the batches of global steps start_step, start_step + 1, ...

    Endless unless `num_steps` is given.
    """
    if start_step < 0:
      raise ValueError(f'start_step must be >= 0, got {start_step}.')
    step, end = int(start_step), None
    if num_steps is not None:
      end = step + int(num_steps)
    epoch, plan = None, None
    while end is None or step < end:
      e, index = divmod(step, self.steps_per_epoch)
      if e != epoch:
        epoch, plan = e, self.epoch_plan(e)
      yield self._batch_from_plan(plan, index)
      step += 1

  def element_spec(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    c, b = self.canvas_size, self.batch_size
    return (tf.TensorSpec([b, c, c, 1], tf.float32),
            tf.TensorSpec([b], tf.int64))

  def as_tf_dataset(self, start_step=0, num_steps=None):
    """`batches(start_step)` as a prefetching tf.data.Dataset.

    Static batch shape, so the train step traces once; `prefetch` prepares
    the next batches on a background thread while the model trains.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    dataset = tf.data.Dataset.from_generator(
        lambda: self.batches(start_step, num_steps),
        output_signature=self.element_spec())
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_batches(dataset, split, batch_size, preprocess, data_dir=None,
                 limit=None, seed=0, canvas_size=40, cache_dir=None):
  """Yields (float32 [b, c, c, 1], int64 [b]) in the files' order.

  For evaluation: no shuffling, the last partial batch included, at most
  `limit` examples. `pad_shift` offsets come from `RandomState(seed)` drawn
  for the whole split, so example i always gets the same placement,
  whatever `batch_size` or `limit`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  source, labels = _load_source(dataset, split, preprocess, data_dir,
                                canvas_size, cache_dir)
  offsets = None
  if preprocess == 'pad_shift':
    offsets = draw_offsets(np.random.RandomState(seed), len(source),
                           source.shape[1:], canvas_size)
  n = len(source) if limit is None else min(int(limit), len(source))
  for start in range(0, n, batch_size):
    sl = slice(start, min(start + batch_size, n))
    yield (_render(source[sl], preprocess,
                   None if offsets is None else offsets[sl], canvas_size),
           labels[sl])
