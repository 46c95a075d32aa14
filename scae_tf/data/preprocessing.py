"""Preprocessing uint8 digits onto the SCAE canvas.

Modes (all give float32 in [0, 1], [N, canvas, canvas, 1]):

* `pad_center`: zero-pad the 28x28 digit to the canvas, centred (the
  reference fixtures use this);
* `pad_shift`: upstream's random placement, redrawn per sample (see
  `pad_shift`);
* `resize`: the fork's (and the paper's) PIL resize 28 -> 40 (see `resize`).
"""

import numpy as np
from PIL import Image

MODES = ('pad_center', 'pad_shift', 'resize')


def check_mode(mode):
  """ValueError naming the known modes unless `mode` is one of them."""
  if mode not in MODES:
    raise ValueError(f'Unknown preprocessing mode {mode!r}; expected one of '
                     f'{list(MODES)}.')


def check_images(images, canvas_size):
  """ValueError unless `images` are uint8 [N, h, w] that fit the canvas."""
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
  check_images(images, canvas_size)
  offsets = draw_offsets(rng, len(images), images.shape[1:], canvas_size)
  return to_float(place(images, offsets, canvas_size))


def resize_uint8(images, canvas_size=40):
  """uint8 [N, h, w] -> uint8 [N, canvas, canvas], PIL bicubic.

  Reproduces the fork: `Image.fromarray(img).resize((40, 40))` whose default
  filter was BICUBIC in the Pillow of 2020; we name the filter since later
  Pillow versions may change defaults. PIL's fixed-point result is the
  reference, so we call PIL per image (~1 s for 60000 images).
  """
  check_images(images, canvas_size)
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
  check_mode(mode)
  check_images(images_uint8, canvas_size)
  if mode == 'pad_center':
    return pad_center(images_uint8, canvas_size)
  if mode == 'pad_shift':
    return pad_shift(images_uint8, rng, canvas_size)
  return resize(images_uint8, canvas_size)
