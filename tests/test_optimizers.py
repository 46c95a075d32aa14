"""The attack's optimisers (`attacks.optimizers`): TF1 Adam against Keras',
TF1 RMSProp and the signed gradient by hand."""

import numpy as np
import tensorflow as tf

from attacks import optimizers


def test_adam_matches_keras_adam():
  # Keras' Adam uses TF1's epsilon-hat update; compare three steps.
  grads = [np.array([0.3, -2.0]), np.array([-0.1, 0.5]), np.array([1., 1.])]
  var = tf.Variable([0.5, -0.2])
  keras = tf.keras.optimizers.Adam(1.0, beta_1=.9, beta_2=.999,
                                   epsilon=1e-8)
  opt = optimizers.TF1Adam(1.0)
  p = tf.constant([0.5, -0.2])
  state = opt.init(p)
  for g in grads:
    keras.apply_gradients([(tf.constant(g, tf.float32), var)])
    p, state = opt.apply(p, tf.constant(g, tf.float32), state)
  np.testing.assert_allclose(p.numpy(), var.numpy(), rtol=1e-5)


def test_rmsprop_and_sign_by_hand():
  opt = optimizers.TF1RMSProp(0.1)
  p = tf.constant([1.0])
  state = opt.init(p)
  np.testing.assert_array_equal(state[0].numpy(), [1.])  # ms starts at 1
  p, state = opt.apply(p, tf.constant([2.0]), state)
  ms = 1 + (4 - 1) * 0.1
  mom = 0.1 * 2 / np.sqrt(ms + 1e-6)
  np.testing.assert_allclose(p.numpy(), [1 - mom], rtol=1e-6)
  p, state = opt.apply(p, tf.constant([-1.0]), state)
  ms2 = ms + (1 - ms) * 0.1
  mom2 = 0.9 * mom + 0.1 * -1 / np.sqrt(ms2 + 1e-6)
  np.testing.assert_allclose(p.numpy(), [1 - mom - mom2], rtol=1e-6)
  sign = optimizers.SignedGradient(0.5)
  q, _ = sign.apply(tf.constant([0., 1., 2.]), tf.constant([-3., 0., 1e-9]),
                    sign.init(None))
  np.testing.assert_allclose(q.numpy(), [0.5, 1., 1.5])
