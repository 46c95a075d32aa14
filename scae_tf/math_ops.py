"""Small numerical helpers shared by the SCAE modules.

The arithmetic order follows upstream `capsules/math_ops.py`: the fidelity
tests compare against the original at float32 ulp-level tolerances.
"""

import math

import tensorflow as tf


def relu1(x):
  return tf.nn.relu6(x * 6.) / 6.


def nonlinearity(name):
  """Returns the named elementwise nonlinearity ('relu1', 'sigmoid', ...)."""
  table = {
      'relu1': relu1,
      'sigmoid': tf.nn.sigmoid,
      'relu': tf.nn.relu,
      'softplus': tf.nn.softplus,
      'tanh': tf.nn.tanh,
      'identity': tf.identity,
  }
  try:
    return table[name]
  except KeyError:
    raise ValueError(f'Invalid nonlinearity {name!r}; expected one of '
                     f'{sorted(table)}.') from None


def safe_log(tensor, eps=1e-16):
  """log(x), with -1e8 (and zero gradient) where x < eps."""
  is_zero = tensor < eps
  tensor = tf.where(is_zero, tf.ones_like(tensor), tensor)
  return tf.where(is_zero, tf.zeros_like(tensor) - 1e8, tf.math.log(tensor))


def safe_ce(labels, probs, axis=-1):
  return tf.reduce_mean(-tf.reduce_sum(labels * safe_log(probs), axis=axis))


def flat_reduce(tensor):
  """Sums every example's entries, then averages over the batch."""
  flat = tf.reshape(tensor, [tf.shape(tensor)[0], -1])
  return tf.reduce_mean(tf.reduce_sum(flat, -1))


def normalize(tensor, axis):
  return tensor / (tf.reduce_sum(tensor, axis, keepdims=True) + 1e-8)


def l2_loss(tensor):
  """TF1's `tf.nn.l2_loss`: sum(x ** 2) / 2."""
  return tf.nn.l2_loss(tensor)


def compose_affine(outer, inner):
  """Top two rows of `outer @ inner` for affine transforms as [..., 6].

  Both are the row-major top rows of homogeneous 3x3 matrices whose last row
  is (0, 0, 1), and they broadcast against each other. Equal to the 3x3
  matmul upstream does (the products with that last row are exact zeros and
  ones) without a batched matmul of millions of 3x3 matrices, which costs
  more than all the rest of the object-capsule layer on CPU.
  """
  shape = lambda t: tf.concat([tf.shape(t)[:-1], [2, 3]], 0)
  a = tf.reshape(outer, shape(outer))
  b = tf.reshape(inner, shape(inner))
  # Row i of the result: a[i, 0] * b[0] + a[i, 1] * b[1] + a[i, 2] * (0, 0, 1).
  linear = a[..., 0:1] * b[..., None, 0, :] + a[..., 1:2] * b[..., None, 1, :]
  composed = tf.concat([linear[..., :2], linear[..., 2:] + a[..., 2:]], -1)
  return tf.reshape(composed, tf.concat([tf.shape(composed)[:-2], [6]], 0))


def geometric_transform(pose_tensor, as_matrix=False):
  """Maps 6 unconstrained numbers to an affine transform (upstream, nonlinear).

  The parameters are (scale_x, scale_y, theta, shear, trans_x, trans_y):
  scales go through sigmoid + 0.01, translations and shear through tanh(5 x),
  and theta is in units of full turns.

  Args:
    pose_tensor: [..., 6] tensor.
    as_matrix: return [..., 3, 3] homogeneous matrices instead of the
      [..., 6] row-major top two rows (snt.AffineGridWarper order).
  """
  scale_x, scale_y, theta, shear, trans_x, trans_y = tf.split(
      pose_tensor, 6, -1)
  scale_x, scale_y = (tf.nn.sigmoid(i) + 1e-2 for i in (scale_x, scale_y))
  trans_x, trans_y, shear = (
      tf.nn.tanh(i * 5.) for i in (trans_x, trans_y, shear))
  theta *= 2. * math.pi
  c, s = tf.cos(theta), tf.sin(theta)

  pose = tf.concat([
      scale_x * c + shear * scale_y * s, -scale_x * s + shear * scale_y * c,
      trans_x, scale_y * s, scale_y * c, trans_y
  ], -1)

  if as_matrix:
    rows = tf.reshape(pose, tf.concat([tf.shape(pose)[:-1], [2, 3]], 0))
    zeros = tf.zeros_like(rows[..., :1, 0])
    last = tf.stack([zeros, zeros, zeros + 1], -1)
    pose = tf.concat([rows, last], -2)
  return pose
