"""Data: the standard IDX files of MNIST and Fashion-MNIST, and the
preprocessing onto the SCAE canvas.

Preprocessing modes (all give float32 in [0, 1], [N, canvas, canvas, 1]):

* `pad_center`: zero-pad the 28x28 digit to the canvas, centred (the
  reference fixtures use this);
* `pad_shift`: upstream's random placement, redrawn per sample (see
  `pad_shift`);
* `resize`: the fork's (and the paper's) PIL resize 28 -> 40.
"""

import gzip
import os
import struct

import numpy as np

IDX_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


class DataFileError(ValueError):
  """A data file is missing, truncated or not what its name says."""


def read_idx(path):
  """Reads an IDX (optionally gzip) file into a uint8 numpy array.

  Validates the magic number, the declared dimensions and the payload size,
  and names the file in every error.
  """
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
  """Returns (images [N, 28, 28] uint8, labels [N] int64) of one split."""
  if split not in IDX_FILES:
    raise ValueError(f'Unknown split {split!r}; expected one of '
                     f'{sorted(IDX_FILES)}.')
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


def pad_center(images, canvas_size=40):
  """uint8 [N, h, w] -> float32 [N, canvas, canvas, 1], centred, / 255."""
  n, h, w = images.shape
  top, left = (canvas_size - h) // 2, (canvas_size - w) // 2
  out = np.zeros([n, canvas_size, canvas_size, 1], np.float32)
  out[:, top:top + h, left:left + w, 0] = images.astype(np.float32) / 255.
  return out
