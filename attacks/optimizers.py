"""Functional optimisers for the attack's inner loop.

The variable p' lives in the compiled loop as a tensor, not a tf.Variable,
so the optimisers are pure functions of (variable, gradient, state): `init`
gives a fresh state (the attack calls it at every outer iteration, as the
fork re-initialises the optimiser's variables) and `apply` one update.
Semantics are those of the TF1 optimisers the fork used.
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TF1Adam:
  """`tf.train.AdamOptimizer`: m, v start at 0; step t from 1;
  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t);
  var -= lr_t * m / (sqrt(v) + epsilon)   (epsilon outside the bias
  correction, TF1's "epsilon hat")."""
  learning_rate: float
  beta1: float = 0.9
  beta2: float = 0.999
  epsilon: float = 1e-8

  def init(self, var):
    return (tf.zeros_like(var), tf.zeros_like(var), tf.zeros([], var.dtype))

  def apply(self, var, grad, state):
    m, v, t = state
    t = t + 1.
    m = self.beta1 * m + (1. - self.beta1) * grad
    v = self.beta2 * v + (1. - self.beta2) * tf.square(grad)
    lr_t = (self.learning_rate * tf.sqrt(1. - tf.pow(self.beta2, t))
            / (1. - tf.pow(self.beta1, t)))
    return var - lr_t * m / (tf.sqrt(v) + self.epsilon), (m, v, t)


@dataclasses.dataclass(frozen=True)
class TF1RMSProp:
  """`tf.train.RMSPropOptimizer(lr, momentum=.9, epsilon=1e-6)` (decay .9,
  not centred): the mean square starts at ONES;
  ms += (g^2 - ms) * (1 - decay);
  mom = momentum * mom + lr * g / sqrt(ms + eps); var -= mom."""
  learning_rate: float
  decay: float = 0.9
  momentum: float = 0.9
  epsilon: float = 1e-6

  def init(self, var):
    return (tf.ones_like(var), tf.zeros_like(var))

  def apply(self, var, grad, state):
    ms, mom = state
    ms = ms + (tf.square(grad) - ms) * (1. - self.decay)
    mom = self.momentum * mom + self.learning_rate * grad / tf.sqrt(
        ms + self.epsilon)
    return var - mom, (ms, mom)


@dataclasses.dataclass(frozen=True)
class SignedGradient:
  """Paper formula (9), Appendix A: p' <- p' - beta * sign(grad) (the fork's
  'FGSM' optimiser). Stateless."""
  learning_rate: float

  def init(self, var):
    del var
    return ()

  def apply(self, var, grad, state):
    return var - self.learning_rate * tf.sign(grad), state


OPTIMIZERS = {'adam': TF1Adam, 'rmsprop': TF1RMSProp, 'sign': SignedGradient}


def make_optimizer(name: str, learning_rate: float):
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}; expected one of '
                     f'{", ".join(OPTIMIZERS)}.')
  return OPTIMIZERS[name](learning_rate)
