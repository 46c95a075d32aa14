"""The benchmarks' digits: --num_samples MNIST test digits drawn and
preprocessed as `run/attack.py` draws them (seed 0, resized to 40 x 40)."""


def mnist_test_digits(num_samples, data_dir=None, seed=0):
  """(images [N, 40, 40, 1], labels [N]) as tf constants."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import data  # pylint: disable=g-import-not-at-top
  images_u8, labels = data.load_dataset('mnist', 'test', data_dir)
  indices = np.random.default_rng(seed).choice(len(images_u8), num_samples,
                                               replace=False)
  images = data.preprocess(images_u8[indices], 'resize',
                           rng=np.random.default_rng([seed, 1]),
                           canvas_size=40)
  return tf.constant(images), tf.constant(labels[indices].astype(np.int64))
