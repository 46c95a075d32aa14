"""Reading a split's IDX files: `read_idx` for one file, `load_split` for a
folder as it is, `load_dataset` for a named dataset, located and checked
against the registry so that a wrong file fails here, naming the file."""

import gzip
import os
import struct

import numpy as np

from scae_tf.data import locate
from scae_tf.data import registry


class DataFileError(ValueError):
  """A data file is missing, truncated or not what its name says."""


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
  registry.check_split(split)
  image_file, label_file = (os.path.join(data_dir, f)
                            for f in registry.IDX_FILES[split])
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
  images, labels, _ = load_dataset_and_folder(dataset, split, data_dir)
  return images, labels


def load_dataset_and_folder(dataset, split, data_dir=None):
  """`load_dataset` plus the folder the files came from."""
  spec = registry.get_dataset_spec(dataset)
  registry.check_split(split)
  folder = locate.resolve_data_dir(dataset, data_dir)
  images, labels = load_split(folder, split)
  _validate(spec, split, folder, images, labels)
  return images, labels, folder


def _validate(spec, split, folder, images, labels):
  image_file, label_file = (os.path.join(folder, f)
                            for f in registry.IDX_FILES[split])
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
