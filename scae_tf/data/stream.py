"""The batch streams models train and evaluate on.

`BatchStream`, for training: its order is a pure function of (seed, global
step), so a run resumed at step s sees exactly the batches an uninterrupted
run would have seen. `eval_batches`, for evaluation: the files' order, no
shuffling.
"""

import numpy as np

from scae_tf.data import cache
from scae_tf.data import idx
from scae_tf.data import preprocessing
from scae_tf.data import registry


def _load_source(dataset, split, mode, data_dir, canvas_size, cache_dir):
  """uint8 arrays the batches are rendered from: the resized canvases for
  `resize`, the raw [N, 28, 28] images for the pad modes; and the labels."""
  preprocessing.check_mode(mode)
  registry.check_split(split)
  if mode == 'resize':
    return cache.load_resized(dataset, split, data_dir, canvas_size, cache_dir)
  images, labels = idx.load_dataset(dataset, split, data_dir)
  preprocessing.check_images(images, canvas_size)
  return images, labels


def _render(source, mode, offsets, canvas_size):
  """uint8 source rows (and pad_shift offsets) -> float32 [B, c, c, 1]."""
  if mode == 'resize':
    return preprocessing.to_float(source)
  if mode == 'pad_center':
    return preprocessing.pad_center(source, canvas_size)
  return preprocessing.to_float(
      preprocessing.place(source, offsets, canvas_size))


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
    preprocessing.check_mode(preprocess)
    preprocessing.check_images(images, canvas_size)
    if preprocess == 'resize':
      images = preprocessing.resize_uint8(images, canvas_size)
    stream = cls.__new__(cls)
    stream._setup(images, np.asarray(labels, np.int64), batch_size,
                  preprocess, seed, canvas_size)
    stream.dataset, stream.split = None, None
    return stream

  def _setup(self, source, labels, batch_size, mode, seed, canvas_size):
    preprocessing.check_mode(mode)
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
      offsets = preprocessing.draw_offsets(
          np.random.RandomState([self.seed, epoch, 1]), self.num_examples,
          self._source.shape[1:], self.canvas_size)
    return order, offsets

  def _batch_from_plan(self, plan, index):
    order, offsets = plan
    sl = slice(index * self.batch_size, (index + 1) * self.batch_size)
    picked = order[sl]
    images = _render(self._source[picked], self.preprocess,
                     None if offsets is None else offsets[sl],
                     self.canvas_size)
    return images, self._labels[picked]

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
    offsets = preprocessing.draw_offsets(
        np.random.RandomState(seed), len(source), source.shape[1:],
        canvas_size)
  n = len(source) if limit is None else min(int(limit), len(source))
  for start in range(0, n, batch_size):
    sl = slice(start, min(start + batch_size, n))
    yield (_render(source[sl], preprocess,
                   None if offsets is None else offsets[sl], canvas_size),
           labels[sl])
