"""Building blocks with the original's parametrisation (Sonnet 1 / upstream).

Variables are created eagerly in `__init__` with the exact shapes that the
original TF1 graph had, so that TF1 checkpoints map onto them one to one
(see `checkpoints.py`). Initialisers match Sonnet 1's defaults.
"""

import math

import sonnet as snt
import tensorflow as tf


def truncated_normal(fan_in):
  """Sonnet 1's default weight initialiser: truncated normal, 1/sqrt(fan_in)."""
  return snt.initializers.TruncatedNormal(stddev=1. / math.sqrt(fan_in))


def glorot_uniform(shape, name):
  """A variable with TF1 `tf.get_variable`'s default init (Glorot uniform).

  Fans as TF1 computes them: for rank > 2 the leading dims multiply both.
  Drawn with `tf.random` so that `tf.random.set_seed` makes it reproducible.
  """
  if len(shape) == 1:
    fan_in = fan_out = shape[0]
  else:
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  limit = math.sqrt(6. / (fan_in + fan_out))
  return tf.Variable(tf.random.uniform(shape, -limit, limit), name=name)


class Linear(snt.Module):
  """y = x W + b over the last axis (Sonnet 1 `snt.Linear`)."""

  def __init__(self, input_size, output_size, name='linear'):
    super().__init__(name=name)
    self.w = tf.Variable(truncated_normal(input_size)(
        [input_size, output_size], tf.float32), name='w')
    self.b = tf.Variable(tf.zeros([output_size]), name='b')

  def __call__(self, x):
    return tf.tensordot(x, self.w, [[x.shape.rank - 1], [0]]) + self.b


class MLP(snt.Module):
  """ReLU MLP without a final activation (Sonnet 1 `snt.nets.MLP`)."""

  def __init__(self, input_size, output_sizes, name='mlp'):
    super().__init__(name=name)
    sizes = [input_size] + list(output_sizes)
    self.layers = [Linear(i, o, name=f'linear_{n}')
                   for n, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = tf.nn.relu(layer(x))
    return self.layers[-1](x)


class BatchLinear(snt.Module):
  """k independent linear maps of k vectors: [B, k, d] -> [B, k, n].

  Stored as upstream `BatchLinear`: weights [1, k, d, n] and bias [k, n].
  """

  def __init__(self, n_inputs, input_size, output_size, use_bias=True,
               name='batch_linear'):
    super().__init__(name=name)
    self.weights = tf.Variable(truncated_normal(input_size)(
        [1, n_inputs, input_size, output_size], tf.float32), name='weights')
    self.b = (tf.Variable(tf.zeros([n_inputs, output_size]), name='b')
              if use_bias else None)

  def __call__(self, x):
    return tf.transpose(self.apply_k_major(tf.transpose(x, [1, 0, 2])),
                        [1, 0, 2])

  def apply_k_major(self, x):
    """The same map on [k, B, d] -> [k, B, n]: one batched matmul, no
    transposes (an einsum over [B, k, d] transposes in and out each time)."""
    y = tf.matmul(x, tf.reshape(self.weights, self.weights.shape[1:]))
    if self.b is not None:
      y += self.b[:, None]
    return y


class BatchMLP(snt.Module):
  """k independent ReLU MLPs on k inputs (upstream `BatchMLP`).

  Hidden layers always have a bias; `use_bias` only affects the last layer.
  """

  def __init__(self, n_inputs, input_size, output_sizes, use_bias=True,
               name='batch_mlp'):
    super().__init__(name=name)
    sizes = [input_size] + list(output_sizes)
    n_layers = len(output_sizes)
    self.layers = [
        BatchLinear(n_inputs, i, o, use_bias=use_bias or n < n_layers - 1,
                    name='batch_linear' + (f'_{n}' if n else ''))
        for n, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]

  def __call__(self, x):
    # Work capsule-major throughout: two transposes per MLP, not per layer.
    x = tf.transpose(x, [1, 0, 2])
    for layer in self.layers[:-1]:
      x = tf.nn.relu(layer.apply_k_major(x))
    return tf.transpose(self.layers[-1].apply_k_major(x), [1, 0, 2])


class LayerNorm(snt.Module):
  """Layer norm over the last axis, as Sonnet 1: moments + batch_normalization,
  eps 1e-5; variables `gamma` (ones) and `beta` (zeros) created up front."""

  def __init__(self, size, eps=1e-5, name='layer_norm'):
    super().__init__(name=name)
    self.eps = eps
    self.gamma = tf.Variable(tf.ones([size]), name='gamma')
    self.beta = tf.Variable(tf.zeros([size]), name='beta')

  def __call__(self, x):
    mean, var = tf.nn.moments(x, [-1], keepdims=True)
    return tf.nn.batch_normalization(x, mean, var, self.beta, self.gamma,
                                     self.eps)
