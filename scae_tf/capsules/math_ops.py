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


def _to_planes(params):
  """[..., n] -> n tensors [...]: one contiguous plane per parameter.

  Slicing a size-6 last axis (tf.split) and concatenating it back are strided
  copies, and with their gradients they cost more on CPU than the arithmetic
  between them; one transpose to parameter-major order and back is cheap.
  """
  rank = params.shape.rank
  return tf.unstack(tf.transpose(params, [rank - 1] + list(range(rank - 1))))


def _from_planes(planes):
  """Inverse of `_to_planes`."""
  stacked = tf.stack(planes)
  rank = stacked.shape.rank
  return tf.transpose(stacked, list(range(1, rank)) + [0])


def _affine_planes(scale_x, scale_y, theta, shear, trans_x, trans_y):
  """Upstream's nonlinear map from 6 numbers to the top rows of an affine
  matrix, (a, b, tx, c, d, ty), one tensor per entry."""
  scale_x, scale_y = (tf.nn.sigmoid(i) + 1e-2 for i in (scale_x, scale_y))
  trans_x, trans_y, shear = (
      tf.nn.tanh(i * 5.) for i in (trans_x, trans_y, shear))
  theta *= 2. * math.pi
  c, s = tf.cos(theta), tf.sin(theta)
  return [scale_x * c + shear * scale_y * s, -scale_x * s + shear * scale_y * c,
          trans_x, scale_y * s, scale_y * c, trans_y]


def _compose_planes(a, b):
  """Top rows of A @ B for homogeneous affine A, B given as 6 planes each.

  Entry (i, j) of the 3x3 product is a[i,0] b[0,j] + a[i,1] b[1,j] +
  a[i,2] b[2,j] with b's last row (0, 0, 1): the products with it are exact
  zeros and ones, so this is the 3x3 matmul upstream does.
  """
  out = []
  for row in (a[0:3], a[3:6]):
    for j in range(3):
      entry = row[0] * b[j] + row[1] * b[3 + j]
      out.append(entry + row[2] if j == 2 else entry)
  return out


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
  pose = _from_planes(_affine_planes(*_to_planes(pose_tensor)))
  if as_matrix:
    rows = tf.reshape(pose, tf.concat([tf.shape(pose)[:-1], [2, 3]], 0))
    zeros = tf.zeros_like(rows[..., :1, 0])
    last = tf.stack([zeros, zeros, zeros + 1], -1)
    pose = tf.concat([rows, last], -2)
  return pose


def transformed_votes(object_params, part_params):
  """Votes OV o OP as [..., 6]: both transforms built from their 6 raw
  parameters and composed without leaving the parameter-major layout."""
  return _from_planes(_compose_planes(
      _affine_planes(*_to_planes(object_params)),
      _affine_planes(*_to_planes(part_params))))
